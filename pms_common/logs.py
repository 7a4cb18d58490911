"""Structured JSON logs on stdout, configured once at each entry point.

Every line carries time, level, service, logger and, inside a request or an
RPC, the request id that the gateway set (x-request-id) and, inside a
span, its trace id (trace_id); whatever a call
passes in `extra=` becomes fields of its own. `pms_common.entry.run_main`
configures it for a part; a new part only logs, with
`log = logging.getLogger(__name__)` and `log.info("what happened", extra={...})`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# The part a thread works for, when it is not its process's (background loops
# that share one process: pms_common.serve); its lines name that part.
part_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("part", default=None)


def _no_trace() -> str | None:
    return None


# The active span's trace id; pms_common.telemetry sets it once tracing starts.
trace_id_source: Callable[[], str | None] = _no_trace
# Libraries whose chatter stays out unless asked for.
NOISY_LOGGERS = ("werkzeug", "alembic", "kafka")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, naming the service that wrote it."""

    # Attributes every LogRecord has; anything else was passed in `extra=`.
    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def __init__(self, service: str = "pms") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": part_var.get() or self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        trace_id = trace_id_source()
        if trace_id:
            entry["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Every record of this process to stdout as JSON lines from `service`."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def gunicorn_logconfig(service: str, level: str) -> dict[str, Any]:
    """gunicorn's logging in the same JSON shape (its own lines: start,
    worker boot and exit); its access log stays off, the app writes its own."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "service": service}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            "gunicorn.error": {"handlers": ["stdout"], "level": level, "propagate": False},
            "gunicorn.access": {"handlers": [], "propagate": False},
        },
    }
