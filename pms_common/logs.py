"""Structured JSON logs on stdout, configured once at each entry point.

Every line carries time, level, service, logger and, inside a request or an
RPC, the request id that the gateway set (x-request-id).
"""
import contextvars
import json
import os
import logging
import sys
import time

request_id_var = contextvars.ContextVar("request_id", default=None)
_service_name = os.environ.get("PMS_SERVICE", "pms")


class JsonFormatter(logging.Formatter):
    # Attributes every LogRecord has; anything else was passed in `extra=`.
    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record):
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": _service_name,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service, level="INFO"):
    global _service_name
    _service_name = service
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries' chatter stays out unless asked for.
    for noisy in ("werkzeug", "alembic", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
