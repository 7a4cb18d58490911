"""The Flask pieces every HTTP service shares: request ids, access logs,
JSON errors and the liveness/readiness endpoints."""
import logging
import time
import uuid

from flask import Blueprint, Flask, g, jsonify, request

from .logs import request_id_var

REQUEST_ID_HEADER = "X-Request-Id"
access_log = logging.getLogger("access")


def init_request_context(app: Flask):
    """Take the gateway's request id (or make one), put it on every log line
    and echo it back; log one line per request."""

    @app.before_request
    def _start():
        g.request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        g.request_id_token = request_id_var.set(g.request_id)
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response):
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        if request.path.startswith("/health"):
            return response
        access_log.info(
            "%s %s %s", request.method, request.path, response.status_code,
            extra={"method": request.method, "path": request.path, "status": response.status_code,
                   "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2)},
        )
        return response

    @app.teardown_request
    def _reset(_exc):
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)


def database_outage_is_503(app: Flask, db):
    """A database that cannot be reached is a 503 the client may retry, in the
    one error shape, not a 500."""
    from sqlalchemy.exc import OperationalError

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc):
        app.logger.error("database unavailable: %s", str(exc).splitlines()[0])
        db.session.rollback()
        return jsonify(error_body(503, "The database is unavailable; try again shortly.")), 503


def health_blueprint(checks):
    """/health/live answers while the process serves; /health/ready (and
    /health) runs each named check and answers 503 naming the ones that fail."""
    blueprint = Blueprint("health", __name__)

    @blueprint.get("/health/live")
    def live():
        return jsonify(status="UP")

    @blueprint.get("/health")
    @blueprint.get("/health/ready")
    def ready():
        results, healthy = {}, True
        for name, check in checks.items():
            try:
                check()
                results[name] = "UP"
            except Exception as exc:  # a readiness probe reports, it never raises
                healthy = False
                results[name] = f"DOWN: {exc.__class__.__name__}: {str(exc)[:200]}"
        return jsonify(status="UP" if healthy else "DOWN", checks=results), 200 if healthy else 503

    return blueprint


def api_spec_options(gateway_prefix, secured=True):
    """OpenAPI extras every service shares: the gateway prefix its paths are
    served under, and the bearer-token scheme Swagger UI's Authorize fills in."""
    options = {
        "servers": [{"url": gateway_prefix, "description": "through the gateway"}],
        "components": {"securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }
    if secured:
        options["security"] = [{"bearerAuth": []}]
    return options


def error_body(code, message, errors=None):
    """The one error shape (flask-smorest's): code, status, message, errors."""
    from http import HTTPStatus
    body = {"code": code, "status": HTTPStatus(code).phrase, "message": message}
    if errors:
        body["errors"] = errors
    return body
