"""`make run`: start every part of the system under supervisord, wait until
each is healthy, print where to go, and stop them all on Ctrl-C / SIGTERM.

supervisord restarts a part that crashes; this launcher shows every part's
log lines with a prefix, reports a part that dies with its last lines, and
refuses to start when a port is taken.
"""
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections import deque
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from gateway.render import render

from .parts import GRPC_EXPERIMENTS, ROOT, build_parts, port_settings

READY_TIMEOUT_SECONDS = float(os.environ.get("PMS_READY_TIMEOUT", "180"))
LAST_LINES = 15
DEAD_STATES = {"EXITED", "BACKOFF", "FATAL"}


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
                sock.bind(("127.0.0.1", port))
            except OSError:
                taken.append((name, port))
    return taken


def supervisord_conf(run_dir, parts):
    def quote(text):  # supervisord expands %(...)s in values
        return text.replace("%", "%%")

    sections = [f"""[unix_http_server]
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
"""]
    for part in parts:
        sections.append(f"""[program:{part.name}]
command={quote(shlex.join(part.command))}
directory={ROOT}
priority={part.priority}
autostart=true
autorestart=true
startsecs=2
startretries=20
stopsignal=TERM
stopwaitsecs=20
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={run_dir}/logs/{part.name}.log
stdout_logfile_maxbytes=20MB
stdout_logfile_backups=1
""")
    return "\n".join(sections)


def die_with_parent():
    """Runs in the child before exec: if this launcher dies, even by SIGKILL,
    the kernel sends supervisord SIGTERM, so no part outlives `make run`."""
    if sys.platform.startswith("linux"):  # elsewhere Ctrl-C and SIGTERM still stop everything
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LogTail(threading.Thread):
    """Prints each part's new log lines with its name, and keeps the last few."""

    def __init__(self, log_dir, names):
        super().__init__(daemon=True)
        self.files = {name: log_dir / f"{name}.log" for name in names}
        self.last = {name: deque(maxlen=LAST_LINES) for name in names}
        self.stop = threading.Event()

    def run(self):
        offsets = dict.fromkeys(self.files, 0)
        partial = dict.fromkeys(self.files, "")
        width = max(map(len, self.files)) + 1
        while not self.stop.is_set():
            for name, path in self.files.items():
                try:
                    with path.open("r", errors="replace") as handle:
                        handle.seek(0, os.SEEK_END)
                        if handle.tell() < offsets[name]:  # rotated
                            offsets[name] = 0
                        handle.seek(offsets[name])
                        chunk = handle.read()
                        offsets[name] = handle.tell()
                except FileNotFoundError:
                    continue
                lines = (partial[name] + chunk).split("\n")
                partial[name] = lines.pop()
                for line in lines:
                    self.last[name].append(line)
                    show(f"{name:<{max(width, 18)}} | {line}")
            self.stop.wait(0.1)


class Stack:
    def __init__(self, environ=os.environ):
        self.ports = port_settings(environ)
        self.run_dir = Path(environ.get("PMS_RUN_DIR") or ROOT / ".run").resolve()
        self.data_dir = Path(environ.get("PMS_DATA_DIR") or ROOT / "data").resolve()
        self.supervisord = None
        self.stopping = threading.Event()

    def prepare(self):
        taken = busy_ports(self.ports)
        if taken:
            for name, port in taken:
                say(f"port {port} is already in use (set {name} to another port, or stop what uses it)")
            raise SystemExit(1)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        for old_log in (self.run_dir / "logs").glob("*.log*"):
            old_log.unlink()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ
        env.update({name: str(port) for name, port in self.ports.items()})
        env["PMS_DATA_DIR"] = str(self.data_dir)
        env.setdefault("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{self.ports['BROKER_PORT']}")
        env.setdefault("PMS_ENV", "dev")
        env.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
        envoy_config = render(self.run_dir / "envoy" / "envoy.yaml", env)
        self.parts = build_parts(self.ports, envoy_config)
        conf = self.run_dir / "supervisord.conf"
        conf.write_text(supervisord_conf(self.run_dir, self.parts))
        return conf

    def rpc(self):
        transport = SupervisorTransport(None, None, f"unix://{self.run_dir}/supervisor.sock")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def start(self, conf):
        self.supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            # Its log is supervisord.log; a copy on our stdout could only break it.
            stdout=subprocess.DEVNULL, cwd=ROOT, preexec_fn=die_with_parent)

    def wait_until_ready(self, tail):
        started = time.monotonic()
        pending = {part.name: part for part in self.parts}
        last_progress = 0.0
        while pending:
            self.check_supervisord()
            states = self.process_states()
            for name, part in list(pending.items()):
                if states.get(name) != "RUNNING":
                    continue
                try:
                    ready = part.ready is None or part.ready()
                except Exception:  # not answering yet
                    ready = False
                if ready:
                    del pending[name]
                    say(f"{name} is ready ({time.monotonic() - started:.1f}s)")
            elapsed = time.monotonic() - started
            if pending and elapsed - last_progress >= 5:
                last_progress = elapsed
                say("waiting for " + ", ".join(f"{n} ({states.get(n, 'STARTING').lower()})" for n in pending))
            if elapsed > READY_TIMEOUT_SECONDS:
                for name in pending:
                    self.report_dead(name, tail, "did not become healthy in time")
                raise SystemExit(1)
            time.sleep(0.25)

    def process_states(self):
        try:
            return {info["name"]: info["statename"] for info in self.rpc().supervisor.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Fault):
            return {}

    def check_supervisord(self):
        if self.supervisord.poll() is not None and not self.stopping.is_set():
            say(f"supervisord exited with code {self.supervisord.returncode}; "
                f"see {self.run_dir}/supervisord.log")
            raise SystemExit(1)

    def report_dead(self, name, tail, why):
        say(f"{name} {why}; its last log lines:")
        for line in tail.last.get(name, []):
            show(f"    {line}")

    def watch(self, tail):
        """After start-up: report every part that dies (supervisord restarts it)."""
        running_pid = {}
        while not self.stopping.is_set():
            self.check_supervisord()
            try:
                infos = self.rpc().supervisor.getAllProcessInfo()
            except (OSError, xmlrpc.client.Fault):
                infos = []
            for info in infos:
                name, state, pid = info["name"], info["statename"], info["pid"]
                was = running_pid.get(name)
                restarted = state in DEAD_STATES or state == "STARTING" or (state == "RUNNING" and pid != was)
                if was and restarted and not self.stopping.is_set():
                    self.report_dead(name, tail, f"died (exit status {info['exitstatus']}); restarting")
                    running_pid.pop(name)
                if state == "RUNNING":
                    running_pid[name] = pid
            self.stopping.wait(0.5)

    def stop(self):
        self.stopping.set()
        if self.supervisord and self.supervisord.poll() is None:
            say("stopping every part ...")
            self.supervisord.terminate()
            try:
                self.supervisord.wait(45)
            except subprocess.TimeoutExpired:
                self.supervisord.kill()
                self.supervisord.wait()
        say("stopped")

    def banner(self):
        gateway = f"http://127.0.0.1:{self.ports['GATEWAY_PORT']}"
        dev = os.environ.get("PMS_ENV", "dev") == "dev"
        lines = [
            "", "The Patient Management System is up.",
            f"  Gateway      {gateway}   (health: {gateway}/health)",
            f"  API docs     {gateway}/docs",
        ]
        if dev:
            lines.append("  Dev login    testuser@test.com / password123  →  "
                         f"curl -s -X POST {gateway}/auth/login -H 'Content-Type: application/json' "
                         "-d '{\"email\":\"testuser@test.com\",\"password\":\"password123\"}'")
        lines += [f"  Logs         {self.run_dir}/logs/    Data  {self.data_dir}",
                  "  Stop         Ctrl-C", ""]
        for line in lines:
            say(line)


def main():
    stack = Stack()
    conf = stack.prepare()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    tail = LogTail(stack.run_dir / "logs", [part.name for part in stack.parts])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
