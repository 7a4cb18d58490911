"""Accounts through the gateway: a disabled, demoted or removed-from-role
user loses access within the same bound as a logout, and a password change
retires the user's other tokens."""

import time
import uuid

import pytest
import requests

from tests.support import wait_for

pytestmark = pytest.mark.e2e
# ext_authz and the gateway's memo each reuse a yes this long at most (AUTHZ_CACHE_SECONDS=1
# in the e2e settings; 2 by default), so access ends within their sum.
BOUND_SECONDS = 2.0


def new_user(system, role):
    credentials = {
        "email": f"account-{uuid.uuid4().hex[:8]}@example.com",
        "password": "amber quarry whistle " + uuid.uuid4().hex[:6],
    }
    created = system.session().post(
        f"{system.url}/auth/users", json={**credentials, "role": role}, timeout=10
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], credentials


def reads(system, token):
    return requests.get(
        f"{system.url}/api/patients", timeout=10, headers={"Authorization": f"Bearer {token}"}
    ).status_code


def refused_within_bound(system, token):
    changed_at = time.monotonic()
    wait_for(lambda: reads(system, token) == 401, timeout=5, interval=0.05, message="the token to be refused")
    return time.monotonic() - changed_at


@pytest.mark.parametrize("role, change", [("USER", {"disabled": True}), ("ADMIN", {"role": "USER"})])
def test_a_disabled_or_demoted_user_loses_access_within_the_bound(system, role, change):
    user_id, credentials = new_user(system, role)
    token = system.token(credentials)
    assert reads(system, token) == 200
    patched = system.session().patch(f"{system.url}/auth/users/{user_id}", json=change, timeout=10)
    assert patched.status_code == 200, patched.text
    assert refused_within_bound(system, token) <= BOUND_SECONDS
    login = requests.post(f"{system.url}/auth/login", json=credentials, timeout=10)
    if change.get("disabled"):
        assert login.status_code == 401
    else:
        assert login.status_code == 200
        assert reads(system, login.json()["token"]) == 200
        created = requests.post(
            f"{system.url}/api/patients",
            json={},
            timeout=10,
            headers={"Authorization": f"Bearer {login.json()['token']}"},
        )
        assert created.status_code == 403


def test_a_user_cannot_manage_users_or_patch_themselves_to_admin(system):
    user_id, credentials = new_user(system, "USER")
    api = system.session(system.token(credentials))
    assert (
        api.patch(f"{system.url}/auth/users/{user_id}", json={"role": "ADMIN"}, timeout=10).status_code == 403
    )
    assert api.get(f"{system.url}/auth/users", timeout=10).status_code == 403


def test_a_password_change_retires_the_user_s_other_tokens(system):
    _, credentials = new_user(system, "USER")
    changing, other = system.token(credentials), system.token(credentials)
    changed = requests.post(
        f"{system.url}/auth/password",
        timeout=10,
        headers={"Authorization": f"Bearer {changing}"},
        json={
            "currentPassword": credentials["password"],
            "newPassword": "velvet orchard compass " + uuid.uuid4().hex[:6],
        },
    )
    assert changed.status_code == 204, changed.text
    assert refused_within_bound(system, other) <= BOUND_SECONDS
    assert reads(system, changing) == 200
    assert requests.post(f"{system.url}/auth/login", json=credentials, timeout=10).status_code == 401


@pytest.mark.parametrize("password", ["aaaaaaaaaaa1", "password1234", "Password123!"])
def test_guessable_passwords_are_refused(system, password):
    response = system.session().post(
        f"{system.url}/auth/users",
        timeout=10,
        json={"email": f"weak-{uuid.uuid4().hex[:8]}@example.com", "password": password, "role": "USER"},
    )
    assert response.status_code == 422
    assert "password" in response.json()["errors"]["json"]


def test_a_look_alike_email_is_the_same_account(system):
    _, credentials = new_user(system, "USER")
    local, domain = credentials["email"].split("@")
    look_alike = "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in local).upper() + "@" + domain
    duplicate = system.session().post(
        f"{system.url}/auth/users",
        timeout=10,
        json={"email": look_alike, "password": "granite meadow lantern 77", "role": "ADMIN"},
    )
    assert duplicate.status_code == 409
