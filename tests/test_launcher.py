"""`make run`'s supervision, part by part: processes tied to the run
(stack.tether), restarts without end, one line per change of a part's work,
and the drain of a clean stop (stack.drain)."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from confluent_kafka import Consumer, Producer
from supervisor.xmlrpc import Faults

from pms_common.kafka import consumer_config, ensure_topics
from pms_common.status import StatusFile
from stack import run, tether
from stack.config import StackConfig
from stack.drain import Reader, drain, outbox_emptied, unread_events
from stack.parts import ROOT, Part
from tests.support import Broker, wait_for


def fake_supervisor(run_dir, command):
    """A process that plays supervisord: writes its pid file, starts the
    command through the tether in a process group of its own, then sleeps."""
    script = textwrap.dedent(f"""
        import os, subprocess, sys, time
        open({str(run_dir / "supervisord.pid")!r}, "w").write(str(os.getpid()))
        tether = [sys.executable, "-m", "stack.tether", {str(run_dir)!r}, "part"]
        child = subprocess.Popen([*tether, *{command!r}], process_group=0)
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def test_a_part_dies_with_its_supervisor_and_is_recorded(tmp_path):
    supervisor = fake_supervisor(tmp_path, ["sleep", "600"])
    try:
        part = psutil.Process(int(supervisor.stdout.readline()))
        wait_for(lambda: part.cmdline()[:1] == ["sleep"], timeout=10, message="the tether to become the part")
        assert tether.leftovers(tmp_path) == {"part": part.pid}
    finally:
        supervisor.kill()
        supervisor.wait()
    part.wait(10)  # SIGTERM from the kernel: psutil raises TimeoutExpired if it lives on


def test_a_part_whose_supervisor_is_gone_does_not_start(tmp_path):
    (tmp_path / "supervisord.pid").write_text("1")  # not this process's parent
    result = subprocess.run(
        [sys.executable, "-m", "stack.tether", str(tmp_path), "part", "touch", str(tmp_path / "ran")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "its supervisor is gone" in result.stderr
    assert not (tmp_path / "ran").exists()


def test_what_an_earlier_run_left_is_stopped_and_what_resists_is_killed(tmp_path):
    def start(command):
        return subprocess.Popen(command, process_group=0)

    polite = start(["sleep", "600"])
    stubborn = start(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
        ]
    )
    # A master that died, leaving a child in its process group (a gunicorn worker, say).
    orphaned = start(["sh", "-c", "sleep 600 & exit 0"])
    gone = start(["true"])
    for name, process in (("polite", polite), ("stubborn", stubborn), ("orphaned", orphaned)):
        tether.record(tmp_path, name, process.pid)
    orphaned.wait(10)
    gone.wait(10)
    # A pid in the record now used by another process (its start time differs), and one gone.
    (tmp_path / "pids" / "reused.pid").write_text(f"{os.getppid()} 1\n")
    tether.record(tmp_path, "gone", gone.pid)
    time.sleep(0.3)  # the stubborn one has set its handler
    said = []
    found = tether.stop_leftovers(tmp_path, said.append, wait_seconds=2)
    assert sorted(found) == ["orphaned", "polite", "stubborn"]
    assert polite.wait(5) == -signal.SIGTERM and stubborn.wait(5) == -signal.SIGKILL
    assert "stubborn (pid" in said[-1] and "killed" in said[-1]
    wait_for(lambda: not tether.leftovers(tmp_path), timeout=5, message="the orphan to be gone")


@pytest.fixture
def supervised(tmp_path, monkeypatch):
    """A launcher (stack.run.Stack) over a real supervisord running one part
    that fails at each start, recording each start in a file."""
    monkeypatch.setattr(run, "RESTART_DELAY_CAP_SECONDS", 1.0)
    starts = tmp_path / "starts"
    stack = run.Stack(
        StackConfig({"PMS_RUN_DIR": str(tmp_path / "run"), "PMS_DATA_DIR": str(tmp_path / "data")})
    )
    script = f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(1)"
    stack.parts = [Part("flaky", [sys.executable, "-c", script], problem=lambda: None)]
    stack.env = dict(os.environ)
    (stack.run_dir / "logs").mkdir(parents=True)

    def watch_for(seconds, start_retries):
        conf = stack.run_dir / "supervisord.conf"
        conf.write_text(run.supervisord_conf(stack.run_dir, stack.parts, start_retries=start_retries))
        stack.start(conf)
        watcher = threading.Thread(target=stack.watch, args=(run.LogTail(stack.run_dir / "logs", ["flaky"]),))
        watcher.start()
        time.sleep(seconds)
        stack.stopping.set()
        watcher.join()
        states = stack.process_states()
        stack.supervisord.terminate()
        stack.supervisord.wait(30)
        return len(starts.read_text()), states["flaky"]

    yield watch_for
    if stack.supervisord and stack.supervisord.poll() is None:
        stack.supervisord.kill()


def test_a_part_supervisord_gave_up_on_is_started_again(supervised, capsys):
    # supervisord alone: two starts, then FATAL for good.
    starts, _ = supervised(8, start_retries=1)
    assert starts >= 4, starts
    said = [line for line in capsys.readouterr().out.splitlines() if "flaky failed to start" in line]
    assert len(said) == 1, said  # once, not at every try


def test_a_part_failing_to_start_waits_at_most_the_cap_between_tries(supervised):
    # supervisord alone waits 1, 2, 3, 4, 5 s...: five starts in 12 s.
    starts, _ = supervised(12, start_retries=run.START_RETRIES)
    assert starts >= 7, starts


@pytest.mark.skipif(not run.PartExits.available, reason="no pidfds here: the watch polls supervisord")
def test_a_running_part_is_watched_without_asking_supervisord_and_its_death_is_said_at_once(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(run, "START_SECONDS", 1)
    stack = run.Stack(
        StackConfig({"PMS_RUN_DIR": str(tmp_path / "run"), "PMS_DATA_DIR": str(tmp_path / "data")})
    )
    stack.parts = [
        Part("steady", [sys.executable, "-c", "import time; time.sleep(600)"], problem=lambda: None)
    ]
    stack.env = dict(os.environ)
    (stack.run_dir / "logs").mkdir(parents=True)
    conf = stack.run_dir / "supervisord.conf"
    conf.write_text(run.supervisord_conf(stack.run_dir, stack.parts))
    stack.start(conf)
    asked = []
    ask = stack.process_infos
    monkeypatch.setattr(stack, "process_infos", lambda: asked.append(time.monotonic()) or ask())

    def steady():
        return stack.rpc().supervisor.getProcessInfo("steady")

    watcher = threading.Thread(target=stack.watch, args=(run.LogTail(stack.run_dir / "logs", ["steady"]),))
    try:
        wait_for(lambda: steady()["statename"] == "RUNNING", timeout=20, message="the part to run")
        watcher.start()
        wait_for(lambda: asked, timeout=5, message="the watch's first look")
        time.sleep(0.3)
        asked_before = len(asked)
        time.sleep(3)
        # Polling asked every WATCH_INTERVAL_SECONDS (six times in 3 s); now
        # only the status round, every STATUS_INTERVAL_SECONDS, may ask.
        assert len(asked) - asked_before <= 1, asked
        out = []

        def said(text):
            out.append(capsys.readouterr().out)
            return sum(line.count(text) for line in out)

        def killed_and_said_at_once(deaths_said):
            os.kill(steady()["pid"], signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: said("steady died") == deaths_said, timeout=10, message="the death to be said")
            # Said when the process exited, not at the next status round.
            assert time.monotonic() - killed < run.STATUS_INTERVAL_SECONDS / 2

        killed_and_said_at_once(1)
        wait_for(lambda: said("steady: working again"), timeout=15, message="the restarted part to work")
        # Stopped and started again by an operator: the new process is watched too.
        stack.rpc().supervisor.stopProcess("steady")
        stack.rpc().supervisor.startProcess("steady")  # returns once it runs
        killed_and_said_at_once(2)
    finally:
        stack.stopping.set()
        watcher.join(10)
        assert not watcher.is_alive()  # the stop ends a wait on the parts at once
        stack.supervisord.terminate()
        stack.supervisord.wait(30)


def test_a_part_that_stops_doing_its_work_is_said_once_and_again_when_it_works(capsys):
    problem = [None]
    stack = run.Stack(StackConfig({}))
    stack.parts = [Part("relay", [], problem=lambda: problem[0])]
    stack.problems = {"relay": None}
    running, starting = (
        [{"name": "relay", "statename": "RUNNING"}],
        [{"name": "relay", "statename": "STARTING"}],
    )
    for problem[0], infos in [
        (None, running),
        ("outbox relay waits for the database (ConnectionRefusedError)", running),
        ("outbox relay waits for the database (ConnectionRefusedError)", running),
        ("not answering (ConnectionRefusedError)", starting),
        (None, starting),
        (None, running),
        (None, running),
        ("still starting", starting),
    ]:
        stack.report_problems(infos)
    lines = [line.split(" | ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        "relay: not doing its work: outbox relay waits for the database (ConnectionRefusedError)",
        "relay: working again",
    ]


def test_a_part_that_does_not_answer_is_named_so():
    stack = run.Stack(StackConfig({}))

    def refused():
        raise ConnectionRefusedError

    assert stack.problem_of(Part("x", [], problem=refused)) == "not answering (ConnectionRefusedError)"


@pytest.fixture(scope="module")
def broker():
    running = Broker().start()
    yield running
    running.stop()


def publish(bootstrap, count):
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for index in range(count):
        producer.produce("patient", key=str(index), value=b"event")
    assert producer.flush(10) == 0


def consume(bootstrap, group, count):
    consumer = Consumer(consumer_config(bootstrap, group))
    consumer.subscribe(["patient"])
    read = 0
    deadline = time.monotonic() + 30
    while read < count and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            consumer.store_offsets(message)
            read += 1
    consumer.commit(asynchronous=False)
    consumer.close()
    assert read == count


def test_unread_events_are_counted_to_the_true_end_of_each_partition(broker):
    ensure_topics(broker.bootstrap, ["patient"], partitions=3, timeout=10)
    publish(broker.bootstrap, 90)  # batches: the broker's reported end lags the last message
    consume(broker.bootstrap, "half-way", 40)
    probe = Consumer(consumer_config(broker.bootstrap, "probe", **{"enable.partition.eof": True}))
    try:
        readers = [Reader("half-way", "patient"), Reader("never-read", "patient")]
        assert unread_events(broker.bootstrap, readers, probe) == {"half-way": 50, "never-read": 90}
    finally:
        probe.close()


def test_the_drain_waits_for_an_empty_outbox_and_every_reader(broker, tmp_path):
    ensure_topics(broker.bootstrap, ["patient"], partitions=3, timeout=10)
    relay_status = tmp_path / "patient-worker.json"
    since = time.time()
    StatusFile(relay_status).beat(idle=True, started_at=since - 1)  # a round from before intake stopped
    assert not outbox_emptied(relay_status, since)
    left = drain(relay_status, True, broker.bootstrap, [Reader("late", "patient")], since, seconds=1)
    assert left.startswith("stopping with events undelivered after 1s: the outbox still held events")

    StatusFile(relay_status).beat(idle=True, started_at=since + 1)
    left = drain(relay_status, True, broker.bootstrap, [Reader("late", "patient")], since, seconds=2)
    unread = int(left.rpartition(": ")[2].split()[0])
    assert left.endswith(" events unread by late") and unread > 0

    threading.Thread(target=consume, args=(broker.bootstrap, "late", unread)).start()
    assert drain(relay_status, True, broker.bootstrap, [Reader("late", "patient")], since, seconds=30) is None


def test_the_launcher_reads_supervisords_fault_codes_as_supervisor_defines_them():
    assert (run.NOT_RUNNING, run.ALREADY_STARTED) == (Faults.NOT_RUNNING, Faults.ALREADY_STARTED)


def test_the_launcher_holds_no_supervisor_module_while_it_runs():
    # Its XML-RPC client is the standard library's over the Unix socket.
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, stack.run; print(sorted(m for m in sys.modules if 'supervisor' in m))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "[]"
