"""The Flask pieces every HTTP service shares: request ids, access logs,
JSON errors, the checks that turn bad bytes into a 4xx, and the
liveness/readiness endpoints. `pms_common.web_app.create_web_app` installs
them; a part's resources use `ApiBlueprint` and `abort(code, message=...)`;
an error raised without a message (by routing, the ETag check, validation)
gets one from `explain_http_errors`."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import flask_smorest
import flask_smorest.error_handler
import marshmallow as ma
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask_smorest import abort
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.exc import DataError, OperationalError, SQLAlchemyError
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from .db_errors import db_error_fields, describe_error
from .logs import request_id_var

REQUEST_ID_HEADER = "X-Request-Id"
log = logging.getLogger(__name__)
# One line per request, apart from the service's other lines so it can be filtered.
access_log = logging.getLogger(f"{__name__}.access")

# Deeper JSON is refused before it is parsed: the parser recurses, and none of
# our bodies nests more than a couple of levels.
MAX_JSON_DEPTH = 32
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Where the request check leaves the parsed body for the arguments parser.
PARSED_JSON_KEY = "pms.parsed_json"
INVALID_JSON = "Invalid JSON body."
NUL_TEXT = "Must not contain NUL characters."
SURROGATE_TEXT = "Must be valid Unicode text (no unpaired surrogates)."
NOT_UTF8 = "Must be valid UTF-8."
JSON_MEDIA_TYPE = "application/json"
NOT_JSON_TYPE = f"The body must be sent as JSON, with Content-Type: {JSON_MEDIA_TYPE}."
# Shown in the message for an id that is not a UUID, as the form to follow.
EXAMPLE_UUID = "123e4567-e89b-12d3-a456-426614174000"

_STRUCTURE = re.compile(r'[\[\]{}"]')
# The rest of a JSON string after its opening quote; possessive, so a string
# that never ends costs one pass, not a backtrack per character.
_STRING_REST = re.compile(r'(?:[^"\\]|\\.)*+"')
# Only these escapes can put a NUL or an unpaired surrogate into a parsed
# string: the body itself was strictly decoded and JSON forbids raw control characters.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def init_request_context(app: Flask) -> None:
    """Take the gateway's request id (or make one), put it on every log line
    and echo it back; log one line per request."""

    @app.before_request
    def _start() -> None:
        g.request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        g.request_id_token = request_id_var.set(g.request_id)
        g.started = time.perf_counter()

    app.before_request(refuse_bad_bytes)

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        # Patient data must not stay in a browser's or a proxy's cache.
        if "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        if request.path.startswith(("/health", "/metrics")):  # probes and scrapes: no access line
            return response
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        access_log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
        return response

    @app.teardown_request
    def _reset(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)


def database_outage_is_503(app: Flask, db: SQLAlchemy) -> None:
    """A database that cannot be reached is a 503 the client may retry, a
    value the database refuses a 422, in the one error shape, not a 500; every
    database error is logged by class and SQLSTATE, never by its text (which
    quotes row values)."""

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError) -> tuple[Response, int]:
        db.session.rollback()
        log.error(
            "database unavailable", extra={**(db_error_fields(exc) or {}), "endpoint": request.endpoint}
        )
        return jsonify(error_body(503, "The database is unavailable; try again shortly.")), 503

    @app.errorhandler(DataError)
    def _value_refused(exc: DataError) -> tuple[Response, int]:
        db.session.rollback()
        log.warning(
            "the database refused a value",
            extra={**(db_error_fields(exc) or {}), "endpoint": request.endpoint},
        )
        return jsonify(error_body(422, "A value is not acceptable to the database.")), 422

    @app.errorhandler(SQLAlchemyError)
    def _database_error(exc: SQLAlchemyError) -> tuple[Response, int]:
        db.session.rollback()
        log.error("database error", extra={**(db_error_fields(exc) or {}), "endpoint": request.endpoint})
        return jsonify(error_body(500, "Internal error.")), 500


def refuse_bad_bytes() -> None:
    """Before any view: a path or query string that is not UTF-8 (or holds a
    NUL) is a 400 naming the parameter; a JSON body that is not UTF-8, not
    JSON or nested too deeply a 400; one with a NUL or an unpaired surrogate
    in a string a 422 naming the field. The body is parsed here, once, and
    handed to the arguments parser (CheckedArgumentsParser)."""
    _check_path(request.environ.get("PATH_INFO", ""))
    _check_query(request.query_string)
    if (
        request.method in BODY_METHODS
        and request.is_json
        and request.routing_exception is None
        and request.content_length != 0
    ):
        parsed = _checked_json(_body_within_limit())
        if parsed is not _EMPTY:
            request.environ[PARSED_JSON_KEY] = parsed


_EMPTY = object()


def _body_within_limit() -> bytes:
    """The request body; 413 if it is larger than MAX_CONTENT_LENGTH. A body
    with a Content-Length over the limit is refused before it is read; one
    sent without (chunked) reaches the app cut at the limit, silently, so
    whether more follows the cut is read off the raw input."""
    body = request.get_data(cache=True)
    limit = request.max_content_length
    if (
        request.content_length is None
        and limit is not None
        and len(body) >= limit
        and request.input_stream.read(1)
    ):
        raise RequestEntityTooLarge()
    return body


def _check_path(path: str) -> None:
    # WSGI hands the path over as bytes decoded as latin-1.
    if path.isascii() and "\x00" not in path:
        return
    try:
        text = path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        abort(400, message="The path is not valid UTF-8.")
    if "\x00" in text:
        abort(400, message="The path must not contain NUL characters.")


def _check_query(query_string: bytes) -> None:
    if not query_string or (
        query_string.isascii() and b"%" not in query_string and b"\x00" not in query_string
    ):
        return
    for part in query_string.split(b"&"):
        raw_name, _, raw_value = part.partition(b"=")
        try:
            name = unquote_to_bytes(raw_name.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            shown = raw_name.decode("latin-1").encode("ascii", "backslashreplace").decode()
            abort(
                400,
                message="A query parameter's name is not valid UTF-8.",
                errors={"query": {shown: [NOT_UTF8]}},
            )
        if "\x00" in name:
            abort(
                400,
                message="A query parameter's name contains a NUL character.",
                errors={"query": {name.replace("\x00", "\\x00"): [NUL_TEXT]}},
            )
        try:
            value = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            abort(
                400,
                message=f"Query parameter {name!r} is not valid UTF-8.",
                errors={"query": {name: [NOT_UTF8]}},
            )
        if "\x00" in value:
            abort(
                400,
                message=f"Query parameter {name!r} contains a NUL character.",
                errors={"query": {name: [NUL_TEXT]}},
            )


def _checked_json(body: bytes) -> Any:
    """The parsed body, or a 400/422 in the one error shape; _EMPTY for no body."""
    if not body:
        return _EMPTY
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        abort(400, message="The body is not valid UTF-8.", errors={"json": [INVALID_JSON]})
    if _nested_deeper_than(text, MAX_JSON_DEPTH):
        abort(
            400,
            message=f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.",
            errors={"json": [INVALID_JSON]},
        )
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        abort(400, message="The body is not valid JSON.", errors={"json": [INVALID_JSON]})
    if _SUSPECT_ESCAPE.search(text):
        errors = _bad_text_errors(parsed)
        if errors is not None:
            abort(422, message="A text value is not acceptable.", errors={"json": errors})
    return parsed


def _nested_deeper_than(text: str, limit: int) -> bool:
    """True if brackets outside strings nest deeper than `limit`; one pass
    over the structure, strings skipped whole."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, position = 0, 0
    while (found := _STRUCTURE.search(text, position)) is not None:
        char = found.group()
        if char == '"':
            rest = _STRING_REST.match(text, found.end())
            if rest is None:  # an unterminated string: the parser refuses the body
                return False
            position = rest.end()
            continue
        position = found.end()
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _bad_text_errors(value: Any) -> list[str] | dict[Any, Any] | None:
    """Errors keyed like marshmallow's (field, then nested field or index) for
    every string or key holding a NUL or an unpaired surrogate; None if none."""
    found: list[tuple[tuple[Any, ...], str]] = []
    _collect_bad_text(value, (), found)
    if not found:
        return None
    if any(not path for path, _ in found):
        return [message for path, message in found if not path]
    errors: dict[Any, Any] = {}
    for path, message in found:
        node = errors
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node.setdefault(path[-1], []).append(message)
    return errors


def _collect_bad_text(value: Any, path: tuple[Any, ...], found: list[tuple[tuple[Any, ...], str]]) -> None:
    if isinstance(value, str):
        problem = _text_problem(value)
        if problem:
            found.append((path, problem))
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = _text_problem(key)
            if problem:
                # Named by its escaped form, so the error is printable; its value goes unread.
                found.append(((*path, key.encode("unicode_escape").decode("ascii")), problem))
            else:
                _collect_bad_text(item, (*path, key), found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _collect_bad_text(item, (*path, index), found)


def _text_problem(text: str) -> str | None:
    bad = _BAD_TEXT.search(text)
    if bad is None:
        return None
    return NUL_TEXT if bad.group() == "\x00" else SURROGATE_TEXT


class ErrorSchema(flask_smorest.error_handler.ErrorSchema):
    """The one error shape as the documents show it (named Error there, in
    place of flask-smorest's, whose fields say less)."""

    code = ma.fields.Integer(metadata={"description": "The HTTP status code", "example": 422})
    status = ma.fields.String(
        metadata={"description": "The HTTP status's reason phrase", "example": "Unprocessable Entity"}
    )
    message = ma.fields.String(
        metadata={
            "description": "What went wrong and what to do about it, in one sentence",
            "example": "Fix the field email: errors says what it needs.",
        }
    )
    errors = ma.fields.Dict(
        metadata={
            "description": "Only for errors about parts of the request: by location (json, query, "
            "headers), each field's messages",
            "example": {"json": {"email": ["Not a valid email address."]}},
        }
    )


class CheckedArgumentsParser(FlaskParser):
    """Takes the JSON body refuse_bad_bytes already checked and parsed, so a
    request's body is parsed once; a body sent as another media type (or as
    none) is a 415 naming the one wanted, not a 422 for every field."""

    def _raw_load_json(self, req: Any) -> Any:
        parsed = req.environ.get(PARSED_JSON_KEY, _EMPTY)
        if parsed is not _EMPTY:
            return parsed
        # A request without a body is left to the schema: its required fields are missing.
        if not req.is_json and req.content_length != 0 and _body_within_limit():
            abort(
                415,
                message=NOT_JSON_TYPE,
                errors={"headers": {"Content-Type": [f"Must be {JSON_MEDIA_TYPE}."]}},
            )
        return super()._raw_load_json(req)


class ApiBlueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, reading JSON bodies through
    CheckedArgumentsParser; an operation with a JSON body documents its 415."""

    ARGUMENTS_PARSER = CheckedArgumentsParser()

    def arguments(self, schema: Any, *, location: str = "json", **kwargs: Any) -> Callable[..., Any]:
        parse = super().arguments(schema, location=location, **kwargs)
        if location != "json":
            return parse

        def parse_and_document(view: Callable[..., Any]) -> Callable[..., Any]:
            return self.alt_response(
                415, description=f"The body was not sent as {JSON_MEDIA_TYPE}", schema=ErrorSchema
            )(parse(view))

        return parse_and_document


def health_blueprint(checks: Mapping[str, Callable[[], object]]) -> Blueprint:
    """/health/live answers while the process serves; /health/ready (and
    /health) runs each named check and answers 503 naming the ones that fail."""
    blueprint = Blueprint("health", __name__)

    @blueprint.get("/health/live")
    def live() -> Response:
        return jsonify(status="UP")

    @blueprint.get("/health")
    @blueprint.get("/health/ready")
    def ready() -> tuple[Response, int]:
        results: dict[str, str] = {}
        healthy = True
        for name, check in checks.items():
            try:
                check()
                results[name] = "UP"
            except Exception as exc:  # a readiness probe reports, it never raises
                healthy = False
                detail = describe_error(exc) if db_error_fields(exc) else f"{exc.__class__.__name__}: {exc}"
                results[name] = f"DOWN: {detail[:200]}"
        return jsonify(status="UP" if healthy else "DOWN", checks=results), 200 if healthy else 503

    return blueprint


def api_spec_options(gateway_prefix: str, secured: bool = True) -> dict[str, Any]:
    """OpenAPI extras every service shares: the gateway prefix its paths are
    served under, and the bearer-token scheme Swagger UI's Authorize fills in."""
    options: dict[str, Any] = {
        "servers": [{"url": gateway_prefix, "description": "through the gateway"}],
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        },
    }
    if secured:
        options["security"] = [{"bearerAuth": []}]
    return options


def explain_http_errors(app: Flask, api: flask_smorest.Api) -> None:
    """Every HTTP error in the one shape through flask-smorest's handler, and
    with a message a person can act on where the code that raised it gave
    none (routing's 404 and 405, the ETag check's 412, a body over the limit,
    the schemas' 422); a 405 keeps its Allow header."""
    smorest_handler = api.handle_http_exception

    def explained(error: HTTPException) -> tuple[dict[str, Any], int, dict[str, str]]:
        payload, code, headers = smorest_handler(error)
        headers = dict(headers or {})
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers.setdefault("Allow", ", ".join(error.valid_methods))
        if code >= 400 and not payload.get("message"):
            # Keeps the documented key order: code, status, message, errors.
            errors = payload.pop("errors", None)
            payload["message"] = default_message(error, errors)
            if errors:
                payload["errors"] = errors
        return payload, code, headers

    app.register_error_handler(HTTPException, explained)


def default_message(error: HTTPException, errors: object = None) -> str:
    """The message of an error raised without one."""
    code = error.code or 500
    if code == 404:
        return _malformed_id_message() or "Nothing is at this path; the API's paths are listed at /docs."
    if code == 405:
        allowed = sorted(set(getattr(error, "valid_methods", None) or ()) - {"HEAD", "OPTIONS"})
        return f"{request.method} is not allowed here; this path allows {', '.join(allowed)}."
    if code == 412:
        return (
            "The record has changed since the ETag in If-Match was read; "
            "read it again for its current ETag and retry."
        )
    if code == 413:
        limit = request.max_content_length
        size = f"the {_size_text(limit)}" if limit else "what"
        return f"The body is larger than {size} this service accepts; send a smaller one."
    if code == 415:
        return NOT_JSON_TYPE
    if code == 422:
        return _invalid_fields_message(errors)
    if code == 428:
        return "This needs an If-Match header with the ETag a read of the record answered."
    if code == 400 and isinstance(errors, dict) and errors.get("json") == [INVALID_JSON]:
        return "The body is not valid JSON."
    if code == 400 and errors:
        return "The request is malformed; errors says where."
    if code >= 500:
        return "Something went wrong on our side; retry, and if it persists, report the x-request-id."
    return str(error.description or HTTPStatus(code).phrase)


def _malformed_id_message() -> str | None:
    """For a path that would name a route if one segment were a UUID: which
    id is malformed; None for a path that names no route."""
    adapter = current_app.create_url_adapter(request)
    if adapter is None:
        return None
    segments = request.path.split("/")
    for index, segment in enumerate(segments):
        if not segment or _is_uuid(segment):
            continue
        candidate = "/".join([*segments[:index], EXAMPLE_UUID, *segments[index + 1 :]])
        try:
            values = adapter.match(candidate, method=request.method)[1]
        except HTTPException:
            continue
        name = next((key for key, value in values.items() if str(value) == EXAMPLE_UUID), "id")
        shown = segment if len(segment) <= 40 else segment[:40] + "…"
        return (
            f"{shown!r} is not a valid {name.replace('_', ' ')}: it must be a UUID, such as {EXAMPLE_UUID}."
        )
    return None


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# What a location's errors are called in a message, one and many.
_LOCATION_NOUNS = {
    "json": ("field", "fields"),
    "query": ("query parameter", "query parameters"),
    "headers": ("header", "headers"),
    "path": ("path parameter", "path parameters"),
}


def _invalid_fields_message(errors: object) -> str:
    """Names the fields at fault in webargs' errors ({location: {field:
    [messages]}}), as in: Fix the fields name and email: errors says what each needs."""
    phrases, count = [], 0
    for location, fields in errors.items() if isinstance(errors, dict) else ():
        if not isinstance(fields, dict):
            continue
        names = [str(name) for name in fields if name != "_schema"]
        if not names:
            continue
        count += len(names)
        one, many = _LOCATION_NOUNS.get(location, ("field", "fields"))
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        phrases.append(f"the {one if len(names) == 1 else many} {listed}")
    if not phrases:
        return "The request is not valid; errors says what to fix."
    return f"Fix {' and '.join(phrases)}: errors says what {'it needs' if count == 1 else 'each needs'}."


def _size_text(size: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def error_body(code: int, message: str, errors: object = None) -> dict[str, Any]:
    """The one error shape (flask-smorest's): code, status, message, errors."""
    body: dict[str, Any] = {"code": code, "status": HTTPStatus(code).phrase, "message": message}
    if errors:
        body["errors"] = errors
    return body
