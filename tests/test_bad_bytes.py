"""Bad bytes are the caller's error, never a 5xx, in every Flask service (the
shared wiring, pms_common.web): on patient's API, on SQLite and PostgreSQL,
and on auth's login, which anyone may call without a token."""

import json
import time

import pytest

import auth
import patient
from auth.config import Config as AuthConfig
from auth.extensions import db as auth_db
from auth.seed import DEV_USER_EMAIL, DEV_USER_PASSWORD, seed_users
from patient.config import Config as PatientConfig
from patient.extensions import db as patient_db
from pms_common.identity import ADMIN
from pms_common.web import MAX_JSON_DEPTH
from tests.auth.helpers import FAST_ARGON2, JWT_SECRET
from tests.patient.conftest import VALID
from tests.support import free_port, migrated_apps

LOGIN = {"email": DEV_USER_EMAIL, "password": DEV_USER_PASSWORD}
TEXT_FIELDS = {"patient": ["name", "email", "address"], "auth": ["email", "password"]}


@pytest.fixture
def make_patient_app(tmp_path):
    with migrated_apps(patient.create_app, patient.MIGRATIONS_DIR, patient_db, role=ADMIN) as build:

        def make(database_url):
            # No billing listens there: creates that get through wait for the retry.
            return build(
                PatientConfig(
                    DATABASE_URL=database_url,
                    DATA_DIR=str(tmp_path / "data"),
                    BILLING_ADDRESS=f"127.0.0.1:{free_port()}",
                    BILLING_TIMEOUT_SECONDS=0.2,
                )
            )

        yield make


@pytest.fixture
def patient_app(make_patient_app, database_url):
    """On SQLite and on PostgreSQL (which refuses NUL in text)."""
    return make_patient_app(database_url)


@pytest.fixture
def auth_app(tmp_path, monkeypatch):
    monkeypatch.delenv("PMS_ENV", raising=False)
    with migrated_apps(auth.create_app, auth.MIGRATIONS_DIR, auth_db) as build:
        yield build(
            AuthConfig(
                DATABASE_URL=f"sqlite:///{tmp_path / 'auth.db'}",
                DATA_DIR=str(tmp_path / "data"),
                ENV="dev",
                JWT_SECRET=JWT_SECRET,
                **FAST_ARGON2,
            ),
            seed_users,
        )


@pytest.fixture(params=["patient", "auth"])
def endpoint(request, tmp_path):
    """(client, path, a valid body, its text fields) of patient's create (the
    checks come before any database) and auth's login."""
    if request.param == "patient":
        app = request.getfixturevalue("make_patient_app")(f"sqlite:///{tmp_path / 'patient.db'}")
        return app.test_client(), "/patients", VALID, TEXT_FIELDS["patient"]
    app = request.getfixturevalue("auth_app")
    return app.test_client(), "/login", LOGIN, TEXT_FIELDS["auth"]


def post_raw(client, path, raw):
    return client.post(path, data=raw, content_type="application/json")


def error_of(response, status):
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert body["code"] == status
    return body


@pytest.mark.parametrize("opening, closing", [(b"[", b"]"), (b'{"a":', b"}")])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 2_000])  # the parser recursed into a 500
def test_deeply_nested_json_is_400(endpoint, opening, closing, depth):
    client, path, _, _ = endpoint
    raw = opening * depth + b"1" + closing * depth
    error_of(post_raw(client, path, raw), 400)


def test_nesting_up_to_the_limit_is_parsed(patient_app):
    """An unknown field nested to the limit is still a schema error, not a depth error."""
    nested = json.loads("[" * (MAX_JSON_DEPTH - 1) + "1" + "]" * (MAX_JSON_DEPTH - 1))
    response = patient_app.test_client().post("/patients", json={**VALID, "extra": nested})
    assert error_of(response, 422)["errors"]["json"] == {"extra": ["Unknown field."]}


def test_brackets_inside_strings_are_not_nesting(patient_app):
    address = '[{"\\' * 60  # quotes and backslashes too, escaped in the JSON
    client = patient_app.test_client()
    response = client.post("/patients", json={**VALID, "address": address})
    assert response.status_code == 201
    assert client.get(f"/patients/{response.get_json()['id']}").get_json()["address"] == address


def test_an_unterminated_string_full_of_escaped_quotes_is_refused_at_once(endpoint):
    client, path, _, _ = endpoint
    repeats = client.application.config["MAX_CONTENT_LENGTH"] // 3 - 1  # as big as the service takes
    started = time.monotonic()
    error_of(post_raw(client, path, b'["' + b'[\\"' * repeats), 400)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "bad, problem",
    [("\ud800", "surrogate"), ("a\udfffb", "surrogate"), ("Ada\u0000", "NUL"), ("\x00", "NUL")],
)
def test_a_lone_surrogate_or_a_nul_in_text_is_422_naming_the_field(endpoint, bad, problem):
    client, path, valid, fields = endpoint
    for field in fields:
        raw = json.dumps({**valid, field: bad}).encode()  # json.dumps escapes them as \\uXXXX
        body = error_of(post_raw(client, path, raw), 422)
        assert set(body["errors"]["json"]) == {field}, body
        assert problem in body["errors"]["json"][field][0]


def test_a_nul_is_422_on_create_and_update_and_nothing_changes(patient_app):
    client = patient_app.test_client()
    for field in TEXT_FIELDS["patient"]:
        response = client.post("/patients", json={**VALID, field: VALID[field] + "\u0000"})
        assert error_of(response, 422)["errors"]["json"] == {field: ["Must not contain NUL characters."]}
    created = client.post("/patients", json=VALID).get_json()
    update = {k: VALID[k] for k in ("email", "address", "dateOfBirth")}
    response = client.put(f"/patients/{created['id']}", json={**update, "name": "Ada\u0000King"})
    assert error_of(response, 422)["errors"]["json"] == {"name": ["Must not contain NUL characters."]}
    assert client.get(f"/patients/{created['id']}").get_json()["name"] == VALID["name"]


def test_nested_and_key_problems_are_named_by_their_path(patient_app):
    raw = json.dumps({**VALID, "extra": {"list": ["fine", "\u0000"]}, "\ud800": 1}).encode()
    errors = error_of(post_raw(patient_app.test_client(), "/patients", raw), 422)["errors"]["json"]
    assert errors == {
        "extra": {"list": {"1": ["Must not contain NUL characters."]}},
        "\\ud800": ["Must be valid Unicode text (no unpaired surrogates)."],
    }


def test_a_surrogate_pair_is_one_character_and_is_kept(patient_app):
    client = patient_app.test_client()
    response = client.post("/patients", json={**VALID, "name": "Ada \U0001f600 Lovelace"})
    assert response.status_code == 201
    assert (
        client.get(f"/patients/{response.get_json()['id']}").get_json()["name"] == "Ada \U0001f600 Lovelace"
    )


@pytest.mark.parametrize("bad_bytes", [b"\xff", b"\xed\xa0\x80", b"\xc3", b"\xc0\xaf"])
def test_a_body_that_is_not_utf8_is_400(endpoint, bad_bytes):
    client, path, valid, fields = endpoint
    raw = json.dumps({**valid, fields[0]: "AXa"}).encode().replace(b"AXa", b"A" + bad_bytes + b"a")
    error_of(post_raw(client, path, raw), 400)


@pytest.mark.parametrize(
    "query, parameter",
    [
        ("name=%FF", "name"),
        ("name=%ED%A0%80", "name"),
        ("email=%C3", "email"),
        ("name=%00", "name"),
        ("sort=name&email=a%00b", "email"),
        ("%FF=1", "%FF"),
    ],
)  # on PostgreSQL a NUL in a search was a 500
def test_a_query_string_that_is_not_utf8_or_holds_a_nul_is_400_naming_the_parameter(
    patient_app, query, parameter
):
    body = error_of(patient_app.test_client().get(f"/patients?{query}"), 400)
    assert list(body["errors"]["query"]) == [parameter]


def test_a_valid_escaped_query_string_still_works(patient_app):
    client = patient_app.test_client()
    client.post("/patients", json={**VALID, "name": "Zoë Smith"})
    assert [p["name"] for p in client.get("/patients?name=zo%C3%AB+s").get_json()] == ["Zoë Smith"]


def test_the_login_refuses_a_bad_query_string_too(auth_app):
    body = error_of(auth_app.test_client().post("/login?next=%FF", json=LOGIN), 400)
    assert list(body["errors"]["query"]) == ["next"]


@pytest.mark.parametrize("raw_path", ["/patients/\xff", "/patients/\xed\xa0\x80", "/patients/\x00"])
def test_a_path_that_is_not_utf8_or_holds_a_nul_is_400(patient_app, raw_path):
    # WSGI hands the path over as bytes decoded as latin-1.
    response = patient_app.test_client().get("/patients", environ_overrides={"PATH_INFO": raw_path})
    error_of(response, 400)


def test_good_requests_still_pass_through_the_checks(endpoint):
    client, path, valid, _ = endpoint
    assert client.post(path, json=valid).status_code in (200, 201)
