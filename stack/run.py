"""`make run`: start every part of the system under supervisord, wait until
each is healthy, print where to go, and stop them all on Ctrl-C / SIGTERM.

supervisord restarts a part that exits, without a limit on attempts; this
launcher shows every part's log lines with a prefix, reports a part that dies
with its last lines (once, until it works again), says once when a part stops
doing its work and once when it works again, and refuses to start beside
another `make run` in the same run folder or when a port is taken (after
stopping what an earlier run in the folder left running). Every part dies
with supervisord, and supervisord with this launcher (stack.tether).

A clean stop loses nothing: intake stops first (the gateway, then the parts
only it calls), the events in flight are delivered (stack.drain), then the
rest stops, the broker last. The services' background loops run in their
services' process trees (stack.parts): supervisord runs the service, and the
service's master restarts a loop that dies.
"""

import http.client
import json
import os
import select
import shlex
import signal
import socket

# The launcher starts its own parts.
import subprocess  # nosec B404
import sys
import threading
import time

# Only our own supervisord, on a private socket.
import xmlrpc.client  # nosec B411
from collections import deque

from gateway.render import render
from pms_common.config import (
    BACKGROUND_BESIDE,
    DEV,
    DEV_USER_EMAIL,
    DEV_USER_PASSWORD,
    LOOPBACK,
    ConfigError,
    process_environment,
)
from pms_common.entry import run_main
from pms_common.lifeline import die_with_parent
from pms_common.status import STATUS_FOLDER, status_path
from pms_common.worker import StopEvent, wait_readable

from .config import StackConfig, free_port
from .parts import (
    BACKGROUND_STOP,
    BROKER_STOP,
    GATEWAY_STOP,
    GRPC_EXPERIMENTS,
    INTAKE_STOP,
    ROOT,
    WEB_CONCURRENCY,
    build_parts,
    gateway_healthy_ports,
)
from .tether import PIDS_FOLDER, SUPERVISORD, leftovers, record, stop_leftovers

LAST_LINES = 15
DEAD_STATES = {"EXITED", "BACKOFF", "FATAL"}
LIVE_STATES = {"STARTING", "RUNNING"}
STOPPING_STATES = LIVE_STATES | {"BACKOFF", "STOPPING"}
# supervisord gives a part up (FATAL) after this many failed starts in a row:
# never, in effect. Its wait between tries grows by a second each time; the
# launcher starts a part that has waited RESTART_DELAY_CAP_SECONDS at once.
START_RETRIES = 1_000_000
RESTART_DELAY_CAP_SECONDS = 5.0
# A part that exits sooner after its start failed to start (a crash while it
# starts up): supervisord waits before the next try instead of looping.
START_SECONDS = 5
STOP_WAIT_SECONDS = 20  # then supervisord kills the part's process group
READY_POLL_SECONDS = 0.1  # how often it asks the parts still starting whether they are ready
STATUS_INTERVAL_SECONDS = 5.0  # how often the launcher looks at whether each part works
# How often it asks supervisord which parts run while one of them is not
# running (starting, waiting to be restarted, stopped by an operator), and
# starts one that waits too long. While every part runs it waits for one of
# their processes to exit instead (PartExits), and asks every
# STATUS_INTERVAL_SECONDS in any case.
WATCH_INTERVAL_SECONDS = 0.5
TAIL_INTERVAL_SECONDS = 0.5  # how often it looks for new log lines
LAUNCHER = "make-run"  # this process's record in the run folder, beside its parts'
# supervisord's fault codes (supervisor.xmlrpc.Faults) the launcher expects.
NOT_RUNNING, ALREADY_STARTED = 70, 60
RPC_TIMEOUT_SECONDS = 30.0


def show(line):
    """Prints a line of the launcher's output. When its reader is gone (a test
    run or a benchmark killed outright) the rest goes nowhere: stopping the
    parts must not fail on a broken pipe."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def say(message):
    show(f"{'make run':<18} | {message}")


def busy_ports(ports):
    taken = []
    for name, port in ports.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                taken.append((name, port))
    return taken


def supervisord_conf(run_dir, parts, start_retries=START_RETRIES):
    def quote(text):  # supervisord expands %(...)s in values
        return text.replace("%", "%%")

    sections = [
        f"""[unix_http_server]
file={run_dir}/supervisor.sock

[supervisord]
nodaemon=true
logfile={run_dir}/supervisord.log
pidfile={run_dir}/supervisord.pid
childlogdir={run_dir}/logs
loglevel=warn

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{run_dir}/supervisor.sock
"""
    ]
    for part in (part for part in parts if part.runs_in is None):
        # Each part dies with supervisord and is recorded in the run folder (stack.tether).
        command = [sys.executable, "-m", "stack.tether", str(run_dir), part.name, *part.command]
        # A copy's own settings (its port, which copy it is) on top of supervisord's environment.
        environment = ",".join(f'{name}="{quote(value)}"' for name, value in part.env.items())
        sections.append(f"""[program:{part.name}]
command={quote(shlex.join(command))}
{f"environment={environment}" if environment else ""}
directory={ROOT}
priority={part.priority}
autostart=true
autorestart=true
startsecs={START_SECONDS}
startretries={start_retries}
stopsignal=TERM
stopwaitsecs={STOP_WAIT_SECONDS}
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={run_dir}/logs/{part.name}.log
stdout_logfile_maxbytes=20MB
stdout_logfile_backups=1
""")
    return "\n".join(sections)


class UnixSocketConnection(http.client.HTTPConnection):
    def __init__(self, path):
        # supervisord answers at once (no call waits for a part); a hung one is an error.
        super().__init__(LOOPBACK, timeout=RPC_TIMEOUT_SECONDS)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


class UnixSocketTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's Unix socket, with the standard library:
    supervisor's own client module brings most of supervisor with it (MiBs
    the launcher would hold for as long as it runs)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def make_connection(self, host):
        if not self._connection or self._connection[0] != host:
            self._connection = host, UnixSocketConnection(self.path)
        return self._connection[1]


class LogTail(threading.Thread):
    """Prints each part's new log lines with its name, and keeps the last few."""

    def __init__(self, log_dir, names):
        super().__init__(daemon=True)
        self.files = {name: log_dir / f"{name}.log" for name in names}
        self.last = {name: deque(maxlen=LAST_LINES) for name in names}
        self.stop = threading.Event()
        self.offsets = dict.fromkeys(self.files, 0)
        self.partial = dict.fromkeys(self.files, "")
        self.width = max(18, max(map(len, self.files)) + 1)

    def run(self):
        while not self.stop.is_set():
            self.show_new_lines()
            self.stop.wait(TAIL_INTERVAL_SECONDS)
        self.show_new_lines()  # what the parts wrote while they stopped

    def show_new_lines(self):
        for name, path in self.files.items():
            try:
                if path.stat().st_size == self.offsets[name]:
                    continue  # nothing new: not worth an open and a read
                with path.open("r", errors="replace") as handle:
                    handle.seek(0, os.SEEK_END)
                    if handle.tell() < self.offsets[name]:  # rotated
                        self.offsets[name] = 0
                    handle.seek(self.offsets[name])
                    chunk = handle.read()
                    self.offsets[name] = handle.tell()
            except FileNotFoundError:
                continue
            lines = (self.partial[name] + chunk).split("\n")
            self.partial[name] = lines.pop()
            for line in lines:
                self.last[name].append(line)
                show(f"{name:<{self.width}} | {line}")


class PartExits:
    """Waits until one of a set of processes exits, without polling: a pidfd
    per process (Linux), readable once it has exited. Where there are none
    (macOS) `available` is False and the watch polls instead."""

    available = hasattr(os, "pidfd_open") and hasattr(select, "poll")

    def __init__(self, stopping):
        self.stopping = stopping
        self.fds: dict[int, int] = {}  # pid → its pidfd
        # Exited, but perhaps not yet seen so by supervisord: not waited on again.
        self.exited: set[int] = set()

    def wait(self, pids, seconds):
        """Returns when one of `pids` has exited (or is gone already), at a
        stop, or after `seconds`."""
        self.exited &= set(pids)
        for pid in set(self.fds) - set(pids):
            os.close(self.fds.pop(pid))
        for pid in pids:
            if pid not in self.fds:
                try:
                    self.fds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:  # gone already
                    self.exited.add(pid)
                    return
        ready = wait_readable([self.stopping.fd, *(self.fds[pid] for pid in pids)], seconds)
        for pid, fd in list(self.fds.items()):
            if fd in ready:
                self.exited.add(pid)
                os.close(self.fds.pop(pid))

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class Stack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.ports = config.ports
        self.run_dir = config.RUN_DIR
        self.data_dir = config.DATA_DIR
        self.supervisord = None
        self.stopping = StopEvent()
        self.up = False
        # Part → what it was last said not to do (None: it works).
        self.problems: dict[str, str | None] = {}
        # Part → when it started waiting in BACKOFF or FATAL.
        self.failing_since: dict[str, float] = {}
        # Parts that died (or failed to start) and have not worked since: said once.
        self.failing: set[str] = set()

    def prepare(self):
        running = leftovers(self.run_dir)
        if LAUNCHER in running:
            pid = running[LAUNCHER]
            say(f"make run already runs in {self.run_dir} (pid {pid}): stop it, or set PMS_RUN_DIR")
            raise SystemExit(1)
        stop_leftovers(self.run_dir, say)
        taken = busy_ports(self.ports)
        if taken:
            for name, port in taken:
                say(f"port {port} is already in use (set {name} to another port, or stop what uses it)")
            raise SystemExit(1)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        for old in [*(self.run_dir / "logs").glob("*.log*"), *(self.run_dir / PIDS_FOLDER).glob("*.pid")]:
            old.unlink()
        record(self.run_dir, LAUNCHER, os.getpid())
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A status an earlier run left would make a part look ready before it says so.
        for old_status in (self.data_dir / STATUS_FOLDER).glob("*.json"):
            old_status.unlink()
        self.env = self.parts_environment()
        copy_ports = self.copy_ports()
        envoy_config = render(
            self.run_dir / "envoy" / "envoy.yaml", {**self.env, **self.gateway_addresses(copy_ports)}
        )
        self.parts = build_parts(
            self.ports, envoy_config, self.data_dir, copy_ports, audit_trail=self.config.AUDIT_TRAIL
        )
        conf = self.run_dir / "supervisord.conf"
        conf.write_text(supervisord_conf(self.run_dir, self.parts))
        return conf

    def copy_ports(self):
        """Part → for each copy after the first (PMS_COPIES), the port settings
        it listens on (its own port, its metrics port and its loops', all
        named after it: PATIENT_WORKER_METRICS_PORT), each a free port."""
        taken = set(self.ports.values())
        chosen = {}
        for name, count in self.config.COPIES.items():
            prefix = name.upper().replace("-", "_")
            settings = [setting for setting in self.ports if setting.startswith(f"{prefix}_")]
            chosen[name] = []
            for _ in range(count - 1):
                own = {}
                for setting in settings:
                    own[setting] = free_port(taken)
                    taken.add(own[setting])
                chosen[name].append(own)
        return chosen

    def gateway_addresses(self, copy_ports):
        """<PART>_ADDRESSES for each part that listens and runs as several
        copies: the gateway balances over every copy."""
        addresses = {}
        for name, copies in copy_ports.items():
            setting = f"{name.upper()}_PORT"
            if copies and setting in self.ports:
                ports = [self.ports[setting], *(own[setting] for own in copies)]
                addresses[f"{name.upper()}_ADDRESSES"] = ",".join(f"{LOOPBACK}:{port}" for port in ports)
        return addresses

    def parts_environment(self):
        """This process's environment with the ports and data folder chosen
        here, for supervisord and every part it starts."""
        env = process_environment()
        env.update({name: str(port) for name, port in self.ports.items()})
        env["PMS_DATA_DIR"] = str(self.data_dir)
        # Kept when set, even empty (GRPC_EXPERIMENTS= runs grpc's defaults).
        env.setdefault("KAFKA_BOOTSTRAP_SERVERS", f"{LOOPBACK}:{self.ports['BROKER_PORT']}")
        env.setdefault("PMS_ENV", self.config.ENV)
        env.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
        env.setdefault("WEB_CONCURRENCY", WEB_CONCURRENCY)
        # Each service forks its own loops: one process tree per service (stack.parts).
        env["BACKGROUND_LOOPS"] = BACKGROUND_BESIDE
        return env

    def rpc(self):
        transport = UnixSocketTransport(self.run_dir / "supervisor.sock")
        return xmlrpc.client.ServerProxy(f"http://{LOOPBACK}", transport=transport)

    def start(self, conf):
        # A fixed command, no shell. A session of its own: a Ctrl-C in the
        # terminal reaches this launcher only, which then stops the parts in order.
        self.supervisord = subprocess.Popen(  # nosec B603
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            env=self.env,
            # Its log is supervisord.log; a copy on our stdout could only break it.
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        record(self.run_dir, SUPERVISORD, self.supervisord.pid)

    def problem_of(self, part):
        """None while the part does its work, else one line on why not."""
        try:
            return part.problem()
        except Exception as error:  # not answering (yet)
            return f"not answering ({error.__class__.__name__})"

    def wait_until_ready(self, tail):
        started = time.monotonic()
        pending = {part.name: part for part in self.parts}
        last_progress = 0.0
        while True:
            self.check_supervisord()
            states = self.process_states()
            for name, part in list(pending.items()):
                if states.get(part.supervised) in LIVE_STATES and self.problem_of(part) is None:
                    del pending[name]
                    self.problems[name] = None
                    say(f"{name} is ready ({time.monotonic() - started:.1f}s)")
            if not pending:
                break
            elapsed = time.monotonic() - started
            if elapsed - last_progress >= 5:
                last_progress = elapsed
                say(
                    "waiting for "
                    + ", ".join(
                        f"{n} ({states.get(p.supervised, 'STARTING').lower()})" for n, p in pending.items()
                    )
                )
            if elapsed > self.config.READY_TIMEOUT_SECONDS:
                for name, part in pending.items():
                    self.report_dead(name, tail, f"did not become healthy in time ({self.problem_of(part)})")
                raise SystemExit(1)
            time.sleep(READY_POLL_SECONDS)
        self.up = True

    def process_infos(self):
        try:
            return self.rpc().supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Fault):
            return []

    def process_states(self):
        return {info["name"]: info["statename"] for info in self.process_infos()}

    def check_supervisord(self):
        if self.supervisord.poll() is not None and not self.stopping.is_set():
            say(
                f"supervisord exited with code {self.supervisord.returncode}; "
                f"see {self.run_dir}/supervisord.log"
            )
            raise SystemExit(1)

    def report_dead(self, name, tail, why):
        say(f"{name} {why}; its last log lines:")
        for line in tail.last.get(name, []):
            show(f"    {line}")

    def watch(self, tail):
        """After start-up: report every part that dies (supervisord restarts
        it), start again one that waits too long to be restarted, and say when
        a part stops doing its work and when it works again."""
        running_pid = {}
        next_status = 0.0
        exits = PartExits(self.stopping)
        try:
            while not self.stopping.is_set():
                self.check_supervisord()
                infos = self.process_infos()
                for info in infos:
                    self.follow_process(info, running_pid, tail)
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + STATUS_INTERVAL_SECONDS
                    self.report_problems(infos)
                pids = [self.supervisord.pid, *running_pid.values()]
                # Every part runs: nothing to follow until a process exits. A part
                # stopped on purpose may be started again at any time: polled.
                settled = (
                    bool(infos)
                    and all(info["statename"] == "RUNNING" for info in infos)
                    and not exits.exited.intersection(pids)  # supervisord has yet to see an exit
                )
                if settled and exits.available:
                    exits.wait(pids, next_status - time.monotonic())
                else:
                    self.stopping.wait(WATCH_INTERVAL_SECONDS)
        finally:
            exits.close()

    def follow_process(self, info, running_pid, tail):
        name, state, pid = info["name"], info["statename"], info["pid"]
        was = running_pid.get(name)
        restarted = state in DEAD_STATES or state == "STARTING" or (state == "RUNNING" and pid != was)
        if was and restarted and not self.stopping.is_set():
            if name not in self.failing:
                self.report_dead(name, tail, f"died (exit status {info['exitstatus']}); restarting")
                self.failing.add(name)
                self.problems[name] = "died"
            running_pid.pop(name)
        if state == "RUNNING":
            running_pid[name] = pid
        elif state in ("STOPPING", "STOPPED"):  # stopped on purpose (supervisorctl): no death to report
            running_pid.pop(name, None)
        self.restart_if_stuck(name, state, tail)

    def restart_if_stuck(self, name, state, tail):
        """A part that failed to start waits longer at each try (supervisord's
        backoff): started at once after RESTART_DELAY_CAP_SECONDS, as is one
        supervisord gave up on (FATAL)."""
        if state not in ("BACKOFF", "FATAL") or self.stopping.is_set():
            self.failing_since.pop(name, None)
            return
        since = self.failing_since.setdefault(name, time.monotonic())
        if name not in self.failing:
            self.report_dead(name, tail, f"failed to start ({state.lower()}); trying again")
            self.failing.add(name)
            self.problems[name] = "failed to start"
        if time.monotonic() - since < RESTART_DELAY_CAP_SECONDS:
            return
        del self.failing_since[name]
        try:
            if state == "BACKOFF":
                self.rpc().supervisor.stopProcess(name, False)  # no process to signal: it only stops waiting
            self.rpc().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as fault:  # it moved on meanwhile
            if fault.faultCode not in (NOT_RUNNING, ALREADY_STARTED):
                raise

    def gateway_finds_healthy(self):
        """The ports of the parts the gateway's health checks find healthy;
        none when the gateway does not say (it is down or restarting)."""
        try:
            return gateway_healthy_ports(self.ports["ENVOY_ADMIN_PORT"])
        except Exception:  # then every part is asked itself
            return set()

    def report_problems(self, infos):
        """One line when a running part stops doing its work, one when it
        works again. A part the gateway checks and finds healthy is not asked
        again: the gateway asks it the same question every few seconds, and
        each answer costs the part a request. One it does not find healthy is
        asked, for the line that says why."""
        states = {info["name"]: info["statename"] for info in infos}
        healthy_to_gateway = self.gateway_finds_healthy()
        for part in self.parts:
            name, state = part.name, states.get(part.supervised)
            # A dead part: the line about its death said so. A starting one: not yet said.
            if state not in LIVE_STATES:
                continue
            if part.gateway_checks_port in healthy_to_gateway:
                problem = None
            else:
                problem = self.problem_of(part)
            before = self.problems.get(name)
            if problem is None and before is not None and state == "RUNNING":
                say(f"{name}: working again")
                self.failing.discard(name)
                self.problems[name] = None
            elif problem is not None and before is None and state == "RUNNING":
                say(f"{name}: not doing its work: {problem}")
                self.problems[name] = problem

    def stop(self):
        """Intake first, then the events in flight delivered, then the rest,
        the broker last; whatever is left supervisord stops as it exits."""
        self.stopping.set()
        if self.supervisord and self.supervisord.poll() is None:
            say("stopping: intake first, then the events in flight are delivered, then the rest ...")
            try:
                self.stop_in_order()
            except (OSError, xmlrpc.client.Fault) as error:
                say(f"stopping every part at once ({error.__class__.__name__} from supervisord)")
            self.supervisord.terminate()
            try:
                self.supervisord.wait(45)
            except subprocess.TimeoutExpired:
                self.supervisord.kill()
                self.supervisord.wait()

    def stop_in_order(self):
        self.stop_phase(GATEWAY_STOP)
        self.stop_phase(INTAKE_STOP)
        # Before the system was up no client was answered; a part still starting may not drain.
        if self.up:
            self.drain_events(time.time())
        self.stop_phase(BACKGROUND_STOP)
        self.stop_phase(BROKER_STOP)

    def stop_phase(self, phase):
        names = [part.name for part in self.parts if part.stop_phase == phase and part.runs_in is None]
        rpc = self.rpc()
        for name in names:
            try:
                rpc.supervisor.stopProcess(name, False)
            except xmlrpc.client.Fault as fault:
                if fault.faultCode != NOT_RUNNING:
                    raise
        deadline = time.monotonic() + STOP_WAIT_SECONDS + 5
        while time.monotonic() < deadline:
            states = self.process_states()
            if not any(states.get(name) in STOPPING_STATES for name in names):
                return
            time.sleep(0.1)

    def drain_events(self, intake_stopped_at):
        # Imported at the stop: the consumers' configs bring their packages
        # (Flask, SQLAlchemy, librdkafka), tens of MiB the launcher need not hold while it runs.
        from .drain import drain, event_readers

        try:
            readers = event_readers()
        except ConfigError:  # the consumers refused it too: none of them runs
            readers = []
        left = drain(
            status_path(self.data_dir, "patient-worker"),
            self.process_states().get("patient") == "RUNNING",
            self.env["KAFKA_BOOTSTRAP_SERVERS"],
            readers,
            intake_stopped_at,
        )
        if left:
            say(left)

    def banner(self):
        gateway = f"http://{LOOPBACK}:{self.ports['GATEWAY_PORT']}"
        lines = [
            "",
            "The Patient Management System is up.",
            f"  Gateway      {gateway}   (health: {gateway}/health)",
            f"  API docs     {gateway}/docs",
        ]
        if self.config.ENV == DEV:
            login = json.dumps(
                {"email": DEV_USER_EMAIL, "password": DEV_USER_PASSWORD}, separators=(",", ":")
            )
            lines.append(
                f"  Dev login    {DEV_USER_EMAIL} / {DEV_USER_PASSWORD}  →  "
                f"curl -s -X POST {gateway}/auth/login -H 'Content-Type: application/json' "
                f"-d '{login}'"
            )
        lines += [
            f"  Logs         {self.run_dir}/logs/    Data  {self.data_dir}",
            "  Stop         Ctrl-C",
            "",
        ]
        for line in lines:
            say(line)


def main():
    run_main("make run", StackConfig, run)
    return 0


def run(config: StackConfig):
    stack = Stack(config)
    conf = stack.prepare()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    tail = LogTail(stack.run_dir / "logs", [part.name for part in stack.parts if part.runs_in is None])
    try:
        stack.start(conf)
        tail.start()
        stack.wait_until_ready(tail)
        stack.banner()
        stack.watch(tail)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        tail.stop.set()
        if tail.is_alive():
            tail.join(5)
        say("stopped")


if __name__ == "__main__":
    sys.exit(main())
