"""Every error of the patient API in the one shape, {code, status, message,
errors?}, with a message a person can act on: a body that is not JSON (415),
a method the path does not allow (405), a stale ETag (412), a body over the
limit (413), fields that fail validation (422) and an id that is not a UUID
(404)."""

import json
import uuid
from http import HTTPStatus

import pytest

from tests.patient.conftest import VALID
from tests.support import client_as


def error_of(response, code):
    """The body of an error answer, after checking its shape."""
    assert response.status_code == code, response.get_data(as_text=True)
    body = response.get_json()
    assert list(body)[:3] == ["code", "status", "message"], body
    assert body["code"] == code and body["status"] == HTTPStatus(code).phrase, body
    assert isinstance(body["message"], str) and body["message"].endswith("."), body
    return body


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        None,  # a body sent with no Content-Type at all
    ],
)
def test_a_create_whose_body_is_not_sent_as_json_is_415_naming_the_type(client, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post("/patients", data=json.dumps(VALID), headers=headers)
    body = error_of(response, 415)
    assert "application/json" in body["message"]
    assert body["errors"] == {"headers": {"Content-Type": ["Must be application/json."]}}
    assert client.get("/patients").get_json() == []


def test_an_update_whose_body_is_not_sent_as_json_is_415_and_changes_nothing(client, create):
    created = create().get_json()
    response = client.put(
        f"/patients/{created['id']}", data="name=Ada+King", content_type="application/x-www-form-urlencoded"
    )
    assert "application/json" in error_of(response, 415)["message"]
    assert client.get(f"/patients/{created['id']}").get_json()["name"] == created["name"]


def test_json_with_a_charset_parameter_is_json(client):
    response = client.post(
        "/patients", data=json.dumps(VALID), headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 201, response.get_json()


def test_no_body_at_all_is_422_naming_the_missing_fields_not_415(client):
    body = error_of(client.post("/patients"), 422)
    assert set(body["errors"]["json"]) == set(VALID)
    for field in VALID:
        assert field in body["message"]


def test_the_role_is_checked_before_the_media_type(app):
    """A caller without the role learns nothing about the body: 401 or 403 comes before 415."""
    response = client_as(app, None).post("/patients", data="x", content_type="text/plain")
    assert error_of(response, 401)
    response = client_as(app, "USER").post("/patients", data="x", content_type="text/plain")
    assert error_of(response, 403)


def test_a_422_names_the_fields_in_its_message_and_keeps_errors(client):
    response = client.post("/patients", json={**VALID, "email": "not-an-email", "dateOfBirth": "1700-01-01"})
    body = error_of(response, 422)
    assert set(body["errors"]["json"]) == {"email", "dateOfBirth"}
    assert "email" in body["message"] and "dateOfBirth" in body["message"]
    one = error_of(client.post("/patients", json={**VALID, "name": ""}), 422)
    assert "the field name" in one["message"] and "it needs" in one["message"]


def test_a_422_on_the_query_names_the_parameter(client):
    body = error_of(client.get("/patients", query_string={"sort": "email"}), 422)
    assert "query parameter sort" in body["message"] and set(body["errors"]["query"]) == {"sort"}


def test_a_malformed_id_is_404_saying_it_is_not_a_uuid(client):
    for method in ("get", "put", "delete"):
        body = error_of(getattr(client, method)("/patients/123", json=VALID), 404)
        assert "'123' is not a valid patient id" in body["message"] and "UUID" in body["message"]


def test_an_unknown_id_and_an_unknown_path_are_404_with_their_own_messages(client):
    missing = uuid.uuid4()
    assert error_of(client.get(f"/patients/{missing}"), 404)["message"] == f"Patient {missing} not found."
    assert "/docs" in error_of(client.get("/patients/123/notes"), 404)["message"]


def test_a_method_the_path_does_not_allow_is_405_naming_the_allowed_ones(client, create):
    response = client.put("/patients", json=VALID)
    body = error_of(response, 405)
    assert body["message"] == "PUT is not allowed here; this path allows GET, POST."
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    item = error_of(client.post(f"/patients/{create().get_json()['id']}", json=VALID), 405)
    assert item["message"] == "POST is not allowed here; this path allows DELETE, GET, PUT."


def test_a_stale_if_match_is_412_saying_the_patient_changed_since_the_etag(client, create):
    created = create().get_json()
    url = f"/patients/{created['id']}"
    etag = client.get(url).headers["ETag"]
    changes = {key: created[key] for key in ("email", "address", "dateOfBirth")}
    assert client.put(url, json={**changes, "name": "Ada King"}).status_code == 200
    for response in (
        client.put(url, json={**changes, "name": "Ada Byron"}, headers={"If-Match": etag}),
        client.delete(url, headers={"If-Match": etag}),
    ):
        message = error_of(response, 412)["message"]
        assert "changed since the ETag" in message and "If-Match" in message
    assert client.get(url).get_json()["name"] == "Ada King"


def test_a_body_over_the_limit_is_413_saying_the_limit(app, client):
    response = client.post("/patients", json={**VALID, "address": "z" * app.config["MAX_CONTENT_LENGTH"]})
    body = error_of(response, 413)
    assert f"{app.config['MAX_CONTENT_LENGTH'] // 1024} KiB" in body["message"]


def test_an_invalid_json_body_says_so(client):
    body = error_of(client.post("/patients", data="{not json", content_type="application/json"), 400)
    assert body["message"] == "The body is not valid JSON."
