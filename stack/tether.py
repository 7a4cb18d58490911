"""Every process `make run` starts is tied to the run: it dies with its
parent, and a record in the run folder lets the next start find and stop
whatever a hard kill left behind.

supervisord starts each part as `python -m stack.tether RUN_DIR NAME COMMAND...`:
the kernel is asked to send the part SIGTERM when supervisord dies
(PR_SET_PDEATHSIG, which exec keeps), its pid and start time are recorded in
RUN_DIR/pids/NAME.pid, and then it becomes the part (exec: same pid, and the
process group supervisord gave it, which its own children share).

It imports little beyond the standard library: it runs before every part.
"""

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pms_common.lifeline import die_with_parent

PIDS_FOLDER = "pids"
SUPERVISORD = "supervisord"
# supervisord writes this before it starts any part.
SUPERVISORD_PID_FILE = "supervisord.pid"
# Long enough for a part's own graceful stop (gunicorn's graceful_timeout, supervisord's stopwaitsecs).
LEFTOVER_STOP_SECONDS = 25.0


def start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot), which tells it from a
    later process given the same pid; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the name before ")" may hold spaces


def record(run_dir: Path, name: str, pid: int) -> None:
    """Writes RUN_DIR/pids/NAME.pid: the pid and its start time."""
    folder = Path(run_dir) / PIDS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pid").write_text(f"{pid} {start_time(pid) or ''}\n")


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's group now: not ours
        return False
    return True


def still_running(pid: int, started: str) -> bool:
    """Whether the recorded process, or a process of its group, still runs.
    A living pid with another start time is a later, unrelated process; a
    dead leader's group that still has members is ours (the kernel does not
    hand out a pid while a group of that number exists)."""
    now_started = start_time(pid)
    if now_started is not None:
        return now_started == started
    return _group_alive(pid)


def leftovers(run_dir: Path) -> dict[str, int]:
    """Name → pid of every recorded process of an earlier run that still runs."""
    found = {}
    for path in sorted((Path(run_dir) / PIDS_FOLDER).glob("*.pid")):
        try:
            pid_text, _, started = path.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and still_running(pid, started):
            found[path.stem] = pid
    return found


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def stop_leftovers(
    run_dir: Path, say: Callable[[str], None], wait_seconds: float = LEFTOVER_STOP_SECONDS
) -> list[str]:
    """Stops what an earlier run in this folder left running (its launcher
    killed outright): SIGTERM to each process group, SIGKILL to whatever
    still runs after `wait_seconds`. Returns the names it found."""
    found = leftovers(run_dir)
    if not found:
        return []
    say(
        "stopping what an earlier run in this folder left running: "
        + ", ".join(f"{name} (pid {pid})" for name, pid in found.items())
    )
    for pid in found.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline and any(_group_alive(pid) for pid in found.values()):
        time.sleep(0.1)
    for name, pid in found.items():
        if _group_alive(pid):
            say(f"{name} (pid {pid}) did not stop within {wait_seconds:g}s: killed")
            _signal_group(pid, signal.SIGKILL)
    return list(found)


def supervisor_gone(run_dir: Path) -> bool:
    """Whether the supervisord that starts this process died before the
    parent-death signal was asked for (then the kernel would never send it)."""
    try:
        supervisor = int((Path(run_dir) / SUPERVISORD_PID_FILE).read_text())
    except (OSError, ValueError):
        return False  # nothing to compare with: supervisord writes it before starting anything
    return os.getppid() != supervisor


def main(argv: list[str] | None = None) -> None:
    run_dir, name, *command = sys.argv[1:] if argv is None else argv
    if not command:
        sys.exit("usage: python -m stack.tether RUN_DIR NAME COMMAND...")
    die_with_parent()
    if supervisor_gone(Path(run_dir)):
        sys.exit(f"{name}: not started, its supervisor is gone")
    record(Path(run_dir), name, os.getpid())
    # The part's command as supervisord's config gives it, no shell.
    os.execvp(command[0], command)  # nosec B606


if __name__ == "__main__":
    main()
