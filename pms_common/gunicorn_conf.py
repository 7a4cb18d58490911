"""gunicorn settings for every HTTP service (pms_common.serve adds the bind).

Logs go to stdout; the access log is the app's own JSON line, so gunicorn's is
off. WEB_CONCURRENCY and WEB_THREADS size the pool."""
import os

from gunicorn.glogging import Logger

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = "gthread"
# gunicorn's own C parser (gunicorn-h1c) instead of its Python one, which took
# a twentieth of the patient service's CPU per create; "fast" fails at start
# rather than fall back.
http_parser = "fast"
limit_request_line = 8190  # the most gunicorn allows; the gateway caps headers at 8 KiB
keepalive = 75  # longer than Envoy's idle timeout, so Envoy closes idle connections first
graceful_timeout = 20
timeout = 60
accesslog = None


class AccessLogOff(Logger):
    # gunicorn builds an access line for every request whenever logconfig_dict is
    # set, even with no handler to write it: 5 % of a request's CPU, for nothing.
    access_log_enabled = False


logger_class = AccessLogOff
# gunicorn 27's control socket is one fixed path per user: every service would fight over it.
control_socket_disable = True
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# A minimal JSON shape for gunicorn's own lines (start, worker boot/exit).
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "pms_common.logs.JsonFormatter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json",
                            "stream": "ext://sys.stdout"}},
    "root": {"handlers": ["stdout"], "level": loglevel.upper()},
    "loggers": {"gunicorn.error": {"handlers": ["stdout"], "level": loglevel.upper(), "propagate": False},
                "gunicorn.access": {"handlers": [], "propagate": False}},
}


def post_fork(server, worker):
    from pms_common.logs import configure_logging
    configure_logging(os.environ.get("PMS_SERVICE", "web"), os.environ.get("LOG_LEVEL", "INFO"))


def post_worker_init(worker):
    from pms_common.heap import freeze_start_up_objects
    freeze_start_up_objects()
