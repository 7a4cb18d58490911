"""Start-up of an HTTP service: data folder, migrations, seed (dev), then gunicorn.

A new HTTP part's `__main__` is
`run_main(SERVICE, Config, partial(run_web_service, create_app=..., migrations_dir=...))`.

gunicorn runs in the process that built the app and migrated its database,
and its workers fork from it: the app is imported once per service, not once
more in each worker, which keeps the start of a whole system on a small
machine short (see bench/README.md, "Service kit figures"). The same command
runs under `make run` and in a container, so what a test starts is what
production starts.

A database that is away at start is waited for (like one lost later) before
the port is opened. Workers die with their master, and a master started in
place of a killed one takes the port over without refusing a connection
(pms_common.listener).

With BACKGROUND_LOOPS=beside the master also forks the service's background
loops (`Background`: its outbox relay, its consumers) after its workers: they
share the master's pages as the workers do, instead of importing the whole
service again in a process of their own. Each loop gets a process, or
several loops named together share one, a thread each (a forked process
costs its own 10 MiB however little it does). The master starts a loop's
process again when it dies (after a pause that grows while it keeps dying
young) and stops it with the workers."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import Application
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from .child import run_in_child
from .config import BACKGROUND_BESIDE, WebConfig, prepare_data_dir
from .entry import run_main
from .freeze import freeze_start_up_objects
from .lifeline import die_with_parent
from .listener import bind_shared, hand_over, keep_sockets
from .logs import configure_logging, gunicorn_logconfig, part_var
from .metrics import metrics_dir, start_part_metrics, use_multiprocess
from .telemetry import start_tracing, stop_tracing
from .web_app import Migrations
from .worker import Backoff, Outage, PeerUnavailable, StopEvent, stop_on_signals

log = logging.getLogger(__name__)
GUNICORN_CONF = Path(__file__).with_name("gunicorn_conf.py")
Seed = Callable[[Flask], object]


def migrate_and_seed(app: Flask, migrations_dir: str | Path, seed: Seed | None = None) -> None:
    """Makes the data folder and a SQLite file private before the database
    is written, applies the migrations, then seeds (when given)."""
    prepare_data_dir(app.config["DATA_DIR"], app.config["SQLALCHEMY_DATABASE_URI"])
    Migrations.apply(app, migrations_dir)
    if seed is not None:
        with app.app_context():
            seed(app)


def migrate_when_database_answers(
    app: Flask, migrations_dir: str | Path, seed: Seed | None, stop: threading.Event
) -> bool:
    """migrate_and_seed in a child process (pms_common.child: alembic stays out
    of the master, and so out of every worker), tried again with backoff
    while the database is away (any other error is raised); False if stopped first."""
    outage = Outage(f"{app.name} migrations")
    while not stop.is_set():
        try:
            run_in_child(lambda: migrate_and_seed(app, migrations_dir, seed))
        except PeerUnavailable as error:
            stop.wait(outage.failed(error))
            continue
        outage.recovered()
        return True
    return False


def gunicorn_settings(config: WebConfig) -> dict[str, Any]:
    """What gunicorn takes from the service's config, on top of gunicorn_conf.py."""

    def post_fork(server: Arbiter, worker: Worker) -> None:
        die_with_parent()
        keep_sockets(worker.sockets)
        configure_logging(config.SERVICE, config.LOG_LEVEL)
        start_tracing(config.SERVICE)  # per worker: the exporter's thread and channel do not survive a fork

    def worker_exit(server: Arbiter, worker: Worker) -> None:
        hand_over(master_alive=os.getppid() == worker.ppid)

    return {
        "bind": [f"{config.BIND_HOST}:{config.PORT}"],
        "workers": config.WEB_CONCURRENCY,
        "threads": config.WEB_THREADS,
        "loglevel": config.LOG_LEVEL.lower(),
        "logconfig_dict": gunicorn_logconfig(config.SERVICE, config.LOG_LEVEL),
        "post_fork": post_fork,
        "worker_exit": worker_exit,
    }


LoopWork = Callable[[Any, Flask, threading.Event], object]


@dataclass(frozen=True)
class Background:
    """A background loop of a service, declared in its own module:
    `work(config, app, stop)` runs it on the service's config and built app
    until `stop` is set, in a process of its own: its own command's
    (loop_main), or one the service's master forks (run_web_service names it
    as "module:attribute", imported only then, so a web-only process never
    loads the broker's client). It traces as `part` and, when the service's
    config names its metrics port (`metrics_port_setting`), keeps and serves
    its metrics apart from the web workers'."""

    part: str
    work: LoopWork
    metrics_port_setting: str | None = None


def load_background(name: str) -> Background:
    """The Background a "module:attribute" name points at."""
    module, _, attribute = name.partition(":")
    background: Background = getattr(importlib.import_module(module), attribute)
    return background


# One forked process's loops: a Background's "module:attribute" name, or a
# tuple of them for loops that share the process.
LoopNames = str | tuple[str, ...]


def load_loops(names: LoopNames) -> tuple[Background, ...]:
    """The Backgrounds of one process. Loops that share a process share its
    metrics folder too, so at most one of them serves metrics of its own."""
    backgrounds = tuple(load_background(name) for name in ((names,) if isinstance(names, str) else names))
    if sum(background.metrics_port_setting is not None for background in backgrounds) > 1:
        raise ValueError(f"loops sharing a process serve one metrics port at most: {names}")
    return backgrounds


# A loop that dies sooner than this after its start is started again only
# after a pause, doubled each time (up to MAX_DELAY_SECONDS).
SHORT_LIFE_SECONDS = 10.0
# How long the master waits when no signal comes and no loop is due to start
# (gunicorn's own wait is 1 s): it then looks at its workers' heartbeats,
# which a worker misses for gunicorn's `timeout` (30 s) before it is replaced.
MASTER_WAIT_SECONDS = 5.0


@dataclass
class LoopProcess:
    """The master's record of one process of background loops."""

    backgrounds: tuple[Background, ...]
    pid: int = 0
    started_at: float = 0.0
    next_start_at: float = 0.0
    # The pauses after young deaths: FIRST_DELAY_SECONDS, doubled up to MAX_DELAY_SECONDS.
    backoff: Backoff = field(default_factory=Backoff)

    def ended(self, now: float) -> float:
        """Records the loop's end; how long it lived. One that lived long is
        started again at once; one that died young after the next backoff pause."""
        lived = now - self.started_at
        self.pid = 0
        if lived >= SHORT_LIFE_SECONDS:
            self.backoff.reset()
            self.next_start_at = now
        else:
            self.next_start_at = now + self.backoff.next_delay()
        return lived

    @property
    def parts(self) -> str:
        """The parts its loops work as, for the logs."""
        return "+".join(background.part for background in self.backgrounds)


class ServiceArbiter(Arbiter):
    """gunicorn's master, which also keeps the service's background loops
    running, each process of them a forked child (as its workers are), and
    stops them with its workers. A child is found by its own pid: gunicorn's
    reaping of every child (waitpid(-1)) may claim it first, which counts as
    its end."""

    def __init__(self, app: Application, loops: Sequence[tuple[Background, ...]]) -> None:
        super().__init__(app)
        self.loops = [LoopProcess(backgrounds) for backgrounds in loops]
        self.stopping_loops = False

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        """gunicorn's wait (which asks for 1 s), for MASTER_WAIT_SECONDS or until
        a loop is due to start again: a signal (a child's end, a stop) ends it at once."""
        wait = MASTER_WAIT_SECONDS
        due = [loop.next_start_at for loop in self.loops if not loop.pid]
        if due and not self.stopping_loops:
            wait = max(0.0, min(wait, min(due) - time.monotonic()))
        return super().wait_for_signals(wait)

    def manage_workers(self) -> None:
        super().manage_workers()
        self.reap_loops()
        if self.stopping_loops:
            return
        now = time.monotonic()
        for loop in self.loops:
            if not loop.pid and now >= loop.next_start_at:
                self.spawn_loop(loop)

    def handle_chld(self) -> None:
        self.reap_loops()
        super().handle_chld()

    handle_cld = handle_chld  # SIGCLD's name for the same signal, as in gunicorn

    def reap_loops(self) -> None:
        for loop in self.loops:
            if not loop.pid:
                continue
            try:
                pid, status = os.waitpid(loop.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = loop.pid, None  # reaped by gunicorn's waitpid(-1)
            if pid:
                self.loop_ended(loop, status)

    def loop_ended(self, loop: LoopProcess, status: int | None) -> None:
        lived = loop.ended(time.monotonic())
        if self.stopping_loops:
            return
        log.error(
            "background loop died; restarting",
            extra={
                "part": loop.parts,
                "exit_status": exit_status(status),
                "lived_seconds": round(lived, 1),
                "restart_in_s": round(max(0.0, loop.next_start_at - time.monotonic()), 1),
            },
        )

    def spawn_loop(self, loop: LoopProcess) -> None:
        loop.started_at = time.monotonic()
        pid = os.fork()
        if pid:
            loop.pid = pid
            return
        # The child: gunicorn's signal handling, listeners and worker files are the master's.
        for signum in (*self.SIGNALS, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for listener in self.LISTENERS:
            listener.close()
        for worker in self.WORKERS.values():
            worker.tmp.close()
        code = run_loops(loop.backgrounds, self.app.service_config, self.app.application)
        sys.exit(code)

    def stop(self, graceful: bool = True) -> None:
        """The loops are told to stop first, then the workers (gunicorn's own
        stop), then the loops are waited for within the same grace."""
        self.stopping_loops = True
        limit = time.monotonic() + self.cfg.graceful_timeout
        self.signal_loops(signal.SIGTERM if graceful else signal.SIGQUIT)
        super().stop(graceful)
        while any(loop.pid for loop in self.loops) and time.monotonic() < limit:
            self.reap_loops()
            time.sleep(0.1)
        self.signal_loops(signal.SIGKILL)
        self.reap_loops()

    def signal_loops(self, signum: int) -> None:
        for loop in self.loops:
            if loop.pid:
                try:
                    os.kill(loop.pid, signum)
                except OSError as error:
                    if error.errno != errno.ESRCH:
                        raise


def exit_status(status: int | None) -> int | str | None:
    """A child's exit code, or the name of the signal that ended it (None: unknown)."""
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return os.waitstatus_to_exitcode(status)


def start_loop_figures(backgrounds: Sequence[Background], config: WebConfig) -> None:
    """A process of loops: the metrics of the loop that has a metrics port
    (in its own folder, served there), and traces as its first loop's part:
    forked or apart alike."""
    for background in backgrounds:
        if background.metrics_port_setting is not None:
            port = getattr(config, background.metrics_port_setting)
            start_part_metrics(config.DATA_DIR, background.part, config.BIND_HOST, port, config.COPY)
    start_tracing(backgrounds[0].part)


def run_loops(backgrounds: Sequence[Background], config: WebConfig, app: Flask) -> int:
    """A forked process of loops: it dies with the master, logs as its loops'
    parts and traces as the first's, and runs until SIGTERM; its exit code
    (1 if a loop failed)."""
    die_with_parent()
    configure_logging(backgrounds[0].part, config.LOG_LEVEL)
    stop = stop_on_signals()
    start_loop_figures(backgrounds, config)
    freeze_start_up_objects()
    try:
        if len(backgrounds) == 1:
            return run_work(backgrounds[0], config, app, stop)
        return run_works_together(backgrounds, config, app, stop)
    finally:
        stop_tracing()


def run_work(background: Background, config: WebConfig, app: Flask, stop: StopEvent) -> int:
    """One loop's work until `stop` is set: 0, or 1 when it failed."""
    try:
        background.work(config, app, stop)
    except Exception:
        log.exception("background loop failed", extra={"part": background.part})
        return 1
    return 0


# How long the other loops of a process have to stop once one has ended; a
# loop still running then is left behind (the process exits without it), so
# that one stuck loop cannot keep its failed sibling from starting again.
SIBLINGS_STOP_SECONDS = 20.0


def run_works_together(
    backgrounds: Sequence[Background],
    config: WebConfig,
    app: Flask,
    stop: StopEvent,
    stop_seconds: float = SIBLINGS_STOP_SECONDS,
) -> int:
    """Each loop's work in a thread of its own, its log lines naming its part.
    The first to end, failed or not, stops the others: the process ends and
    the master starts it again whole, so no loop runs on alone after another
    died. 1 if any failed or did not stop within `stop_seconds`."""
    codes: list[int] = []

    def run(background: Background) -> None:
        part_var.set(background.part)
        try:
            codes.append(run_work(background, config, app, stop))
        finally:
            stop.set()

    # Daemon threads: the process's exit does not wait for a loop left behind.
    threads = [
        threading.Thread(target=run, args=(background,), name=background.part, daemon=True)
        for background in backgrounds
    ]
    for thread in threads:
        thread.start()
    stop.wait()  # set by SIGTERM (this thread's handler) or by a loop that ended
    deadline = time.monotonic() + stop_seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    if stuck:
        log.error("background loop did not stop; its process ends without it", extra={"parts": stuck})
        return 1
    return max(codes)


def run_loop_apart(
    config: WebConfig,
    background: Background,
    create_app: Callable[[WebConfig], Flask],
    migrations_dir: str | Path | None = None,
) -> None:
    """A background loop in a process of its own (`python -m <loop>`, a
    container of its own with BACKGROUND_LOOPS=apart): its metrics and traces
    as its part, the service's app built (its migrations applied first when
    `migrations_dir` is given, waiting for the database), then its work
    until SIGTERM."""
    config.ensure_data_dir()
    stop = stop_on_signals()
    start_loop_figures([background], config)
    app = create_app(config)
    try:
        if migrations_dir is not None and not migrate_when_database_answers(app, migrations_dir, None, stop):
            return
        freeze_start_up_objects()
        background.work(config, app, stop)
    finally:
        stop_tracing()


def loop_main(
    background: Background,
    make_config: Callable[[], WebConfig],
    create_app: Callable[[WebConfig], Flask],
    migrations_dir: str | Path | None = None,
) -> None:
    """The `main()` of a loop's own command (`python -m <loop>`): its settings
    checked (pms_common.entry), then run_loop_apart."""
    run_main(
        background.part,
        make_config,
        partial(
            run_loop_apart,
            background=background,
            create_app=create_app,
            migrations_dir=migrations_dir,
        ),
    )


class BuiltApp(Application):
    """gunicorn with our settings, serving an app that is already built, and
    running the service's background loops beside it (when given)."""

    def __init__(
        self,
        app: Flask,
        config: WebConfig,
        settings: dict[str, Any],
        loops: Sequence[tuple[Background, ...]] = (),
    ) -> None:
        self.application, self.service_config, self.settings, self.loops = app, config, settings, loops
        super().__init__()

    def run(self) -> None:
        try:
            ServiceArbiter(self, self.loops).run()
        except RuntimeError as error:  # as gunicorn's own run(): a bad setting, one line
            print(f"Error: {error}", file=sys.stderr, flush=True)
            sys.exit(1)

    def load_config(self) -> None:
        self.load_config_from_file(str(GUNICORN_CONF))
        for name, value in self.settings.items():
            self.cfg.set(name, value)

    def load(self) -> Flask:
        return self.application


def run_web_service(
    config: WebConfig,
    create_app: Callable[[WebConfig], Flask],
    migrations_dir: str | Path,
    seed: Seed | None = None,
    background: Sequence[LoopNames] = (),
) -> None:
    """Builds the app, migrates and seeds its database (waiting for it while
    it is away), and serves it with gunicorn until stopped, with the
    `background` loops beside it when BACKGROUND_LOOPS=beside: a process for
    each item, a Background's "module:attribute" or a tuple of them that
    share one (imported here, before the fork). Its workers'
    metrics go to the service's folder, emptied first (pms_common.metrics)."""
    use_multiprocess(metrics_dir(config.DATA_DIR, config.SERVICE, config.COPY))
    app = create_app(config)
    if not migrate_when_database_answers(app, migrations_dir, seed, stop_on_signals()):
        return
    # The workers fork from this process: no pooled connection may be shared
    # with them, so each opens its own.
    with app.app_context():
        for engine in app.extensions["sqlalchemy"].engines.values():
            engine.dispose()
    beside = config.BACKGROUND_LOOPS == BACKGROUND_BESIDE
    loops = [load_loops(names) for names in background] if beside else []
    server = BuiltApp(app, config, gunicorn_settings(config), loops)
    listener = bind_shared(config.BIND_HOST, config.PORT, server.cfg.backlog)
    # Served from the socket bound here; gunicorn owns its descriptor from now on.
    server.cfg.set("bind", [f"fd://{listener.detach()}"])
    log.info("starting gunicorn", extra={"bind": f"{config.BIND_HOST}:{config.PORT}"})
    # Frozen before the fork as well: a worker's collections then leave the
    # app's objects alone, so their pages stay shared with the master.
    freeze_start_up_objects()
    server.run()
