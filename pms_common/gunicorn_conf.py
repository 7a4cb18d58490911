"""gunicorn's fixed settings for every HTTP service, as a gunicorn config file.

`pms_common.serve` loads this file and adds what comes from the service's
config (bind, pool size, log level and logging). Logs go to stdout; the access
log is the app's own JSON line, so gunicorn's is off."""

from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger
from gunicorn.workers.base import Worker

worker_class = "gthread"
# gunicorn's own C parser (gunicorn-h1c): its Python one is a measurable share
# of a create's CPU (see bench/README.md, "Service kit figures"); "fast" fails
# at start rather than fall back.
http_parser = "fast"
limit_request_line = 8190  # the most gunicorn allows; the gateway caps headers at 8 KiB
keepalive = 75  # longer than Envoy's idle timeout, so Envoy closes idle connections first
graceful_timeout = 20
timeout = 60
accesslog = None


class AccessLogOff(Logger):
    # gunicorn builds an access line for every request whenever logconfig_dict
    # is set, even with no handler to write it: CPU spent for nothing.
    access_log_enabled = False


logger_class = AccessLogOff
# gunicorn 27's control socket is one fixed path per user: every service would fight over it.
control_socket_disable = True
errorlog = "-"


def post_worker_init(worker: Worker) -> None:
    from pms_common.freeze import freeze_start_up_objects

    freeze_start_up_objects()


def child_exit(server: Arbiter, worker: Worker) -> None:
    from pms_common.metrics import worker_exited

    worker_exited(worker.pid)
