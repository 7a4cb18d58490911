"""No password, hash or token in any log line; auth's lines carry fields, not %-interpolation."""

import logging

from pms_common.logs import JsonFormatter
from tests.auth.helpers import (
    DEV_USER_PASSWORD,
    GOOD_PASSWORD,
    bearer,
    create_user,
    login,
    patch_user,
    token_for,
)

NEW_PASSWORD = "correct horse battery staple"
WRONG_PASSWORD = "Wrong-horse-99-guess"


def test_a_session_of_account_work_logs_no_secret(client, caplog):
    caplog.set_level(logging.DEBUG)
    user_id = create_user(client, "plain@test.com").get_json()["id"]
    login(client, "plain@test.com", WRONG_PASSWORD)
    token = token_for(client, "plain@test.com", GOOD_PASSWORD)
    admin_token = token_for(client)
    client.post(
        "/password",
        json={"currentPassword": WRONG_PASSWORD, "newPassword": NEW_PASSWORD},
        headers=bearer(token),
    )
    client.post(
        "/password",
        json={"currentPassword": GOOD_PASSWORD, "newPassword": "password1234"},
        headers=bearer(token),
    )
    client.post(
        "/password",
        json={"currentPassword": GOOD_PASSWORD, "newPassword": NEW_PASSWORD},
        headers=bearer(token),
    )
    patch_user(client, user_id, role="ADMIN")
    client.get("/validate", headers=bearer(token))
    client.post("/logout", headers=bearer(admin_token))
    client.get("/validate", headers=bearer(admin_token))

    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert any('"user changed"' in line for line in lines)
    assert any('"password changed"' in line for line in lines)
    secrets = [
        GOOD_PASSWORD,
        NEW_PASSWORD,
        WRONG_PASSWORD,
        DEV_USER_PASSWORD,
        "password1234",
        "$argon2",
        token,
        admin_token,
        *token.split("."),
        *admin_token.split(".")[1:],
    ]
    for line in lines:
        for secret in secrets:
            assert secret not in line, (secret, line)
    for record in caplog.records:
        if record.name.startswith("auth"):
            assert not record.args, record.msg
