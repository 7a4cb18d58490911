"""A web service's background loops beside its workers (BACKGROUND_LOOPS=beside,
pms_common.serve): forked by its gunicorn master, started again when one
dies, stopped with it; and a start-up migration run in a child, so that
alembic never enters the master its workers and loops share."""

import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import psutil
import pytest
import sqlalchemy as sa

from analytics.consumer import CONSUMER
from pms_common.child import ChildFailed, run_in_child
from pms_common.logs import JsonFormatter
from pms_common.serve import MASTER_WAIT_SECONDS, Background, LoopProcess, load_loops, run_works_together
from pms_common.status import read_status, status_path
from pms_common.worker import DATABASE, FIRST_DELAY_SECONDS, MAX_DELAY_SECONDS, PeerUnavailable, StopEvent
from stack.config import free_ports
from tests.support import free_port, voluntary_switches, wait_for
from tests.test_web_start import REPO, WebPart


def test_a_loop_that_dies_young_waits_longer_each_time_and_one_that_lived_starts_at_once():
    loop = LoopProcess((CONSUMER,))
    pauses = []
    now = 100.0
    for _ in range(6):
        loop.started_at, loop.pid = now, 1
        loop.ended(now + 1.0)  # a second after its start
        pauses.append(loop.next_start_at - (now + 1.0))
        now = loop.next_start_at
    assert pauses == [FIRST_DELAY_SECONDS * 2**n for n in range(4)] + [MAX_DELAY_SECONDS] * 2
    assert loop.pid == 0
    loop.started_at = now
    loop.ended(now + 60.0)
    assert loop.next_start_at == now + 60.0
    loop.started_at = now + 60.0
    loop.ended(now + 61.0)  # young again: the pauses start over
    assert loop.next_start_at == now + 61.0 + FIRST_DELAY_SECONDS


def consumer_pid(tmp_path):
    try:
        return read_status(status_path(tmp_path, "analytics-consumer"))["pid"]
    except (OSError, ValueError):
        return None


def analytics_with_its_consumer_beside(tmp_path):
    """Analytics with its consumer forked by its master. No broker answers: the
    consumer runs and says it waits for one."""
    return WebPart(
        tmp_path,
        f"sqlite:///{tmp_path / 'analytics.db'}",
        BACKGROUND_LOOPS="beside",
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        ANALYTICS_CONSUMER_METRICS_PORT=str(free_port()),
    )


def test_the_master_forks_its_loop_starts_it_again_when_killed_and_stops_it(tmp_path):
    part = analytics_with_its_consumer_beside(tmp_path)
    try:
        first = wait_for(lambda: consumer_pid(tmp_path), timeout=60, message="the consumer's status")
        master = psutil.Process(part.process.pid)
        assert first in [child.pid for child in master.children()]
        os.kill(first, signal.SIGKILL)

        def again():
            pid = consumer_pid(tmp_path)
            return pid if pid not in (None, first) else None

        second = wait_for(again, timeout=30, message="the consumer forked again")
        assert second in [child.pid for child in master.children()]
        died = part.said("background loop died; restarting")
        assert [(line["part"], line["exit_status"]) for line in died] == [("analytics-consumer", "SIGKILL")]
        assert part.stop() == 0
        assert not psutil.pid_exists(second) or psutil.Process(second).status() == psutil.STATUS_ZOMBIE
    finally:
        part.stop()


def test_an_idle_master_sleeps_yet_starts_a_loop_that_died_young_again_after_its_pause(tmp_path):
    part = analytics_with_its_consumer_beside(tmp_path)
    try:
        first = wait_for(lambda: consumer_pid(tmp_path), timeout=60, message="the consumer's status")
        master = psutil.Process(part.process.pid)
        time.sleep(1.0)
        before = voluntary_switches(master.pid)
        time.sleep(4.0)  # gunicorn's own master would wake at least four times
        assert voluntary_switches(master.pid) - before <= 2
        os.kill(first, signal.SIGKILL)  # young: started again after FIRST_DELAY_SECONDS
        killed_at = time.monotonic()
        workers = {child.pid for child in master.children()}

        def forked_again():
            return {child.pid for child in master.children()} - workers - {first} or None

        wait_for(forked_again, timeout=30, interval=0.05, message="the consumer forked again")
        assert time.monotonic() - killed_at < FIRST_DELAY_SECONDS + MASTER_WAIT_SECONDS / 2
    finally:
        part.stop()


def loop_pids(tmp_path, parts):
    try:
        return {part: read_status(status_path(tmp_path, part))["pid"] for part in parts}
    except (OSError, ValueError):
        return None


AUDIT_LOOPS = ("audit-consumer", "audit-collector")


def test_loops_named_together_share_one_forked_process_and_start_again_together(tmp_path):
    # audit's consumer and collector: one process, a thread each, each thread's
    # lines naming its own part. No broker answers: the consumer waits for one.
    part = WebPart(
        tmp_path,
        f"sqlite:///{tmp_path / 'audit.db'}",
        service="audit",
        BACKGROUND_LOOPS="beside",
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        AUDIT_LOG_PATH=str(tmp_path / "gateway-audit.jsonl"),
    )
    try:
        first = wait_for(lambda: loop_pids(tmp_path, AUDIT_LOOPS), timeout=60, message="both loops' status")
        master = psutil.Process(part.process.pid)
        assert len(set(first.values())) == 1, first
        shared = first["audit-consumer"]
        assert [child.pid for child in master.children()].count(shared) == 1
        assert len(master.children()) == 2  # the web worker and the loops' process
        wait_for(lambda: part.said("audit collector started"), timeout=30, message="the collector's line")
        assert {line["service"] for line in part.said("audit collector started")} == {"audit-collector"}
        assert {line["service"] for line in part.said("start-up objects frozen")} >= {"audit-consumer"}
        os.kill(shared, signal.SIGKILL)

        def again():
            pids = loop_pids(tmp_path, AUDIT_LOOPS)
            return pids if pids and shared not in pids.values() else None

        second = wait_for(again, timeout=30, message="the loops forked again")
        assert len(set(second.values())) == 1, second
        assert second["audit-consumer"] in [child.pid for child in master.children()]
        died = part.said("background loop died; restarting")
        assert [(line["part"], line["exit_status"]) for line in died] == [
            ("audit-consumer+audit-collector", "SIGKILL")
        ]
        assert part.stop() == 0
    finally:
        part.stop()


def test_a_loop_that_fails_ends_the_others_of_its_process_and_its_exit_code_says_so(caplog):
    # The master starts the process again whole: no loop runs on alone.
    stopped = []

    def fails(config, app, stop):
        raise RuntimeError("the store is gone")

    def waits(config, app, stop):
        stop.wait()
        stopped.append(True)

    stop = StopEvent()
    code = run_works_together([Background("fails", fails), Background("waits", waits)], None, None, stop)
    assert code == 1
    assert stopped == [True]
    assert stop.is_set()
    failed = [record for record in caplog.records if record.getMessage() == "background loop failed"]
    assert [record.part for record in failed] == ["fails"]


def test_a_loop_that_does_not_stop_is_left_behind_so_its_failed_sibling_starts_again(caplog):
    never = threading.Event()

    def fails(config, app, stop):
        raise RuntimeError("the store is gone")

    def ignores_the_stop(config, app, stop):
        never.wait()

    loops = [Background("fails", fails), Background("stuck", ignores_the_stop)]
    try:
        assert run_works_together(loops, None, None, StopEvent(), stop_seconds=0.5) == 1
        stuck = [
            record for record in caplog.records if record.getMessage().startswith("background loop did not")
        ]
        assert [record.parts for record in stuck] == [["stuck"]]
    finally:
        never.set()


def test_loops_that_end_cleanly_together_exit_zero_and_each_logs_as_its_part():
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter("the-process"))
    logger = logging.getLogger("tests.loops")
    logger.addHandler(handler)

    def logs_and_waits(config, app, stop):
        logger.warning("working")
        stop.wait()

    stop = StopEvent()
    threading.Timer(0.5, stop.set).start()  # as SIGTERM's handler would
    loops = [Background("one", logs_and_waits), Background("two", logs_and_waits)]
    try:
        assert run_works_together(loops, None, None, stop) == 0
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
    services = [(line["message"], line["service"]) for line in map(json.loads, lines.getvalue().splitlines())]
    assert sorted(services) == [("after", "the-process"), ("working", "one"), ("working", "two")]


def test_loops_that_share_a_process_serve_one_metrics_port_at_most():
    assert [background.part for background in load_loops("patient.worker:WORKER")] == ["patient-worker"]
    assert [
        background.part for background in load_loops(("audit.consumer:CONSUMER", "audit.collector:COLLECTOR"))
    ] == [
        "audit-consumer",
        "audit-collector",
    ]
    with pytest.raises(ValueError, match="one metrics port at most"):
        load_loops(("patient.worker:WORKER", "analytics.consumer:CONSUMER"))


MIGRATE_IN_A_CHILD = """
import sys
from threading import Event
from analytics import MIGRATIONS_DIR, create_app
from analytics.config import Config
from pms_common.serve import migrate_when_database_answers
app = create_app(Config(DATABASE_URL=sys.argv[1], DATA_DIR=sys.argv[2]))
assert migrate_when_database_answers(app, MIGRATIONS_DIR, None, Event())
print("alembic" in sys.modules, "mako" in sys.modules)
"""


def test_a_start_up_migration_runs_in_a_child_and_alembic_stays_out_of_the_server(tmp_path):
    database = tmp_path / "analytics.db"
    result = subprocess.run(
        [sys.executable, "-c", MIGRATE_IN_A_CHILD, f"sqlite:///{database}", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["False", "False"]
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"alembic_version_analytics", "analytics_summary"} <= tables


def test_work_in_a_child_that_finds_its_database_away_is_a_peer_to_wait_for():
    def connect():
        engine = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
        with engine.connect():
            pass

    with pytest.raises(PeerUnavailable) as away:
        run_in_child(connect)
    assert away.value.peer == DATABASE and "OperationalError" in str(away.value)


def test_work_in_a_child_that_fails_otherwise_is_an_error_naming_it():
    def fail():
        raise ValueError("no such revision")

    with pytest.raises(ChildFailed, match="no such revision"):
        run_in_child(fail)
    run_in_child(lambda: None)  # and success returns


@pytest.mark.parametrize(
    ("module", "part"),
    [
        ("patient.worker", "patient-worker"),
        ("analytics.consumer", "analytics-consumer"),
        ("audit.consumer", "audit-consumer"),
        ("audit.collector", "audit-collector"),
    ],
)
def test_each_loop_runs_apart_by_its_own_command_and_stops_on_sigterm(tmp_path, own_broker, module, part):
    # BACKGROUND_LOOPS=apart, as compose and ECS run them: one process each.
    env = {
        **os.environ,
        "PMS_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'loop.db'}",
        "KAFKA_BOOTSTRAP_SERVERS": own_broker.bootstrap,
        **{
            setting: str(port)
            for setting, port in free_ports(
                ["BILLING_PORT", "PATIENT_WORKER_METRICS_PORT", "ANALYTICS_CONSUMER_METRICS_PORT"]
            ).items()
        },
        "AUDIT_LOG_PATH": str(tmp_path / "gateway-audit.jsonl"),
    }
    loop = subprocess.Popen(
        [sys.executable, "-m", module], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:

        def reported():
            try:
                return read_status(status_path(tmp_path, part))["pid"] == loop.pid
            except (OSError, ValueError):
                return False

        wait_for(reported, timeout=60, message=f"{part} to report")
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(30) == 0
    finally:
        if loop.poll() is None:
            loop.kill()
