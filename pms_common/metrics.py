"""Prometheus metrics of every part, in prometheus_client's multiprocess mode.

Every process of a part writes its samples to files in the part's own folder
(`metrics_dir`: <PMS_DATA_DIR>/metrics/<part>, emptied when the part starts),
and whatever serves them reads the whole folder: gunicorn's workers add up
(`init_http_metrics` adds GET /metrics to every web part; `pms_common.serve`
chooses the folder before the app is built), and a part without HTTP serves
the same on a metrics port of its own (`start_part_metrics`). A part's own
figures are made on first use, after the folder was chosen:

    start_part_metrics(config.DATA_DIR, "billing", config.BIND_HOST, config.METRICS_PORT)
    counter("pms_billing_accounts_opened_total", "Billing accounts opened").inc()

PMS_METRICS=off turns every figure into a no-op and serves none (what
`bench.experiments.observability_cost` compares against).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from .config import env_bool, env_str, set_for_libraries

log = logging.getLogger(__name__)
METRICS_FOLDER = "metrics"
# prometheus_client reads this variable to find the folder.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
PRIVATE_DIR_MODE = 0o700
_switch_lock = threading.Lock()
# How often a metrics port's server looks whether it was told to shut down
# (socketserver's poll interval, 0.5 s by default): it ends with its process,
# or at MetricsServer.stop, which wakes it, so it wakes for a scrape and seldom otherwise.
METRICS_SERVER_POLL_SECONDS = 3600.0
# The folder this process's metrics write to (PROMETHEUS_MULTIPROC_DIR as
# inherited or as use_multiprocess set it): part of each metric's key, read
# on every use, so kept here rather than looked up in the environment.
_folder_in_use = env_str(MULTIPROC_VARIABLE)


def metrics_dir(data_dir: str | Path, part: str, copy: int = 1) -> Path:
    """The folder the processes of `part` write their samples to (of its
    `copy`-th copy when several run, `<part>-<copy>` as the launcher names it:
    each copy empties its own at start)."""
    return Path(data_dir).resolve() / METRICS_FOLDER / (part if copy == 1 else f"{part}-{copy}")


def use_multiprocess(directory: str | Path, *, empty: bool = True) -> Path:
    """From now on every metric this process makes writes to `directory`
    (emptied first unless told otherwise: a restarted part counts from zero).
    Call it before any metric is made: one made earlier stays in memory."""
    global _folder_in_use
    folder = Path(directory)
    with _switch_lock:
        if empty:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        set_for_libraries(MULTIPROC_VARIABLE, str(folder))
        _folder_in_use = str(folder)
        # The value class is chosen when prometheus_client is imported; every
        # metric made after this swap writes to the folder.
        values.ValueClass = values.MultiProcessValue()
    return folder


def multiprocess_dir() -> Path | None:
    """The folder this process writes its samples to; None while in memory."""
    folder = env_str(MULTIPROC_VARIABLE)
    return Path(folder) if folder else None


class FolderCollector(Collector):
    """The samples of a folder written by other processes (another part's,
    say); nothing while the folder does not exist yet."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)

    def collect(self) -> Iterable[Metric]:
        if not os.path.isdir(self.folder):
            return []
        return MultiProcessCollector(None, path=self.folder).collect()


def scrape(folders: Sequence[str | Path], collectors: Iterable[Collector] = ()) -> bytes:
    """The text exposition of every sample in `folders` plus `collectors`."""
    registry = CollectorRegistry(auto_describe=False)
    for folder in folders:
        registry.register(FolderCollector(folder))
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def serve_metrics(host: str, port: int, folders: Sequence[str | Path]) -> MetricsServer | None:
    """GET /metrics on host:port (a thread): the samples of `folders`; none while metrics are off."""
    if not metrics_enabled():
        return None
    registry = CollectorRegistry(auto_describe=False)
    for folder in folders:
        registry.register(FolderCollector(folder))
    try:
        server = make_server(host, port, make_wsgi_app(registry), MetricsServer, _QuietHandler)
    except OSError as error:
        # The part's work matters more than its figures: it goes on, unscraped, and says why.
        log.error(
            "metrics not served: the metrics port cannot be bound",
            extra={"host": host, "port": port, "error": error.strerror or str(error)},
        )
        return None
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": METRICS_SERVER_POLL_SECONDS},
        name="metrics-server",
        daemon=True,
    ).start()
    return server


class MetricsServer(ThreadingWSGIServer):
    """prometheus_client's threading server, of the address family its host
    needs, that stops at once although it seldom looks whether to."""

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler]) -> None:
        [(family, *_details), *_others] = socket.getaddrinfo(
            *address, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        self.address_family = family
        super().__init__(address, handler)

    def stop(self) -> None:
        """Ends serve_forever and closes the port: shutdown() waits for the
        server's next look, which shutting the listening socket brings at once."""
        stopping = threading.Thread(target=self.shutdown)
        stopping.start()
        self.socket.shutdown(socket.SHUT_RDWR)
        stopping.join()
        self.server_close()


class _QuietHandler(WSGIRequestHandler):
    """A scrape leaves no line on stderr (wsgiref writes one per request)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def worker_exited(pid: int) -> None:
    """A gunicorn worker is gone: its live gauges stop counting."""
    if multiprocess_dir() is not None:
        mark_process_dead(pid)


_made: dict[tuple[Any, ...], Any] = {}


class _Uncounted:
    """What a metric is while metrics are off: every call does nothing."""

    def labels(self, *_values: str, **_labels: str) -> _Uncounted:
        return self

    def inc(self, _amount: float = 1) -> None: ...

    def set(self, _value: float) -> None: ...

    def observe(self, _value: float) -> None: ...


UNCOUNTED = _Uncounted()


@functools.cache
def metrics_enabled() -> bool:
    """PMS_METRICS (on by default); off, the parts count nothing and serve no
    metrics, which is how `make bench` measures what they cost."""
    return env_bool("PMS_METRICS", True)


def _made_once(kind: type, name: str, documentation: str, labels: tuple[str, ...], **options: Any) -> Any:
    """The process's metric of this name, made on first use for the folder in
    use (not registered: the folder is what is served)."""
    if not metrics_enabled():
        return UNCOUNTED
    key = (kind, name, _folder_in_use)
    made = _made.get(key)
    if made is None:
        with _switch_lock:
            made = _made.get(key)
            if made is None:
                made = _made[key] = kind(name, documentation, labels, registry=None, **options)
    return made


def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
    return _made_once(Counter, name, documentation, labels)


def gauge(name: str, documentation: str, labels: tuple[str, ...] = (), mode: str = "mostrecent") -> Gauge:
    """`mode` says how the values of several processes combine."""
    return _made_once(Gauge, name, documentation, labels, multiprocess_mode=mode)


def histogram(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Histogram:
    return _made_once(Histogram, name, documentation, labels)


def start_part_metrics(data_dir: str | Path, part: str, host: str, port: int | None, copy: int = 1) -> Path:
    """A part without HTTP: its samples in its own folder, served on `port` (if given)."""
    folder = use_multiprocess(metrics_dir(data_dir, part, copy))
    if port is not None:
        serve_metrics(host, port, [folder])
    return folder


# Paths whose requests are not counted: the probes and the scrape itself.
UNCOUNTED_PATHS = ("/health", "/metrics")
UNMATCHED = "<unmatched>"
# A request's `method` label: one of these, else OTHER (a client picks the
# method, and each new label value is a new series).
COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
REQUEST_LABELS = ("method", "path", "status")
# In a request's WSGI environ: when it arrived (time.perf_counter).
STARTED_AT = "pms.metrics.started_at"


def path(request: Any) -> str:
    """A request's `path` label: its route's template, never the path itself
    (which holds ids); one value for every path no route matched."""
    return str(request.url_rule) if request.url_rule is not None else UNMATCHED


def init_http_metrics(
    app: Any, collectors: Iterable[Collector] = (), folders: Iterable[str | Path] = ()
) -> None:
    """Request counts and latency per method, route template and status
    (flask_http_request_total, flask_http_request_duration_seconds; unhandled
    exceptions in flask_http_request_exceptions_total, the names
    prometheus-flask-exporter gives them), and GET /metrics serving them with
    the part's `collectors` (figures computed at scrape time) and the samples
    of other processes' `folders`. /metrics is on the part's own port only:
    the gateway has no route to it. Each request costs a clock read and two
    updates of series looked up once per (method, route, status)."""
    if not metrics_enabled():
        return
    from flask import Response, request

    app_registry = CollectorRegistry(auto_describe=False)
    request_durations = Histogram(
        "flask_http_request_duration_seconds",
        "Flask HTTP request duration in seconds",
        REQUEST_LABELS,
        registry=app_registry,
    )
    request_counts = Counter(
        "flask_http_request", "Total number of HTTP requests", REQUEST_LABELS, registry=app_registry
    )
    request_exceptions = Counter(
        "flask_http_request_exceptions",
        "Total number of HTTP requests which resulted in an exception",
        REQUEST_LABELS,
        registry=app_registry,
    )
    series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
    # The request itself, not its proxy: each attribute read through the proxy looks it up again.
    current_request = cast(Any, request)._get_current_object
    counted_app = app.wsgi_app

    def timed_app(environ: dict[str, Any], start_response: Any) -> Any:
        environ[STARTED_AT] = time.perf_counter()
        return counted_app(environ, start_response)

    def labels_of(current: Any, status: int) -> tuple[str, str, int] | None:
        if current.path.startswith(UNCOUNTED_PATHS):
            return None
        method = current.method if current.method in COUNTED_METHODS else OTHER_METHOD
        return method, path(current), status

    def count_request(response: Any) -> Any:
        current = current_request()
        key = labels_of(current, response.status_code)
        if key is not None:
            counted = series.get(key)
            if counted is None:
                labels = (*key[:2], str(key[2]))
                counted = series[key] = (request_durations.labels(*labels), request_counts.labels(*labels))
            started_at = current.environ.get(STARTED_AT)
            if started_at is not None:
                counted[0].observe(time.perf_counter() - started_at)
            counted[1].inc()
        return response

    def count_exception(error: BaseException | None) -> None:
        if error is not None:
            key = labels_of(current_request(), 500)
            if key is not None:
                request_exceptions.labels(*key[:2], "500").inc()

    app.wsgi_app = timed_app
    app.after_request(count_request)
    app.teardown_request(count_exception)
    extra_collectors, extra_folders = list(collectors), list(folders)

    def metrics() -> Response:
        own = multiprocess_dir()
        if own is None:  # in memory (a test's app): this app's registry
            body = generate_latest(app_registry) + scrape(extra_folders, extra_collectors)
        else:
            body = scrape([own, *extra_folders], extra_collectors)
        return Response(body, content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
