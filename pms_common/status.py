"""What a part without a port says about its work: a small JSON file in the
data folder that the part rewrites at each change and on a heartbeat, and
that the launcher (stack) reads to name a part that is not doing its work.

A part's loops each get an Outage from `status.outage(activity)`, so each
change between working and waiting is written as it happens; the loop that
does the part's main work calls `status.beat(idle=..., started_at=...)` after
each round, which rewrites the file once per HEARTBEAT_SECONDS (at once when
`idle` flips), and `status.alive()` before a round that may block up to its
own timeout, so that a long idle wait followed by that timeout is not taken
for a stuck part. `idle` says the round that started at `started_at` found no
work: a stop that waits until nothing is left (stack.drain) reads it.

Writing is best effort: a file that cannot be written (a read-only disk) is
said once in the log and never stops the part."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from .worker import UNEXPECTED, Outage

log = logging.getLogger(__name__)

# A part's heartbeats (this file; a consumer's row in its store) come three
# times within STALE_SECONDS; each is a write, a commit for a row (bench/README.md, P7).
HEARTBEAT_SECONDS = 5.0
# A working part's file older than this: the part is stuck or gone.
STALE_SECONDS = 15.0
STATUS_FOLDER = "status"


def status_path(data_dir: str | Path, part: str, copy: int = 1) -> Path:
    """Where the part named `part` keeps its status file (its `copy`-th
    copy, when several run: `<part>-<copy>`, as the launcher names it)."""
    name = part if copy == 1 else f"{part}-{copy}"
    return Path(data_dir) / STATUS_FOLDER / f"{name}.json"


def waiting_for(outage: Outage) -> str | None:
    """One line on what an activity waits for; None while it works."""
    if outage.peer is None:
        return None
    if outage.peer == UNEXPECTED:
        return f"{outage.activity} fails ({outage.problem}); retrying"
    return f"{outage.activity} waits for the {outage.peer} ({outage.problem})"


class StatusFile:
    """The status file of one process (none when `path` is None); safe to use from several threads."""

    def __init__(self, path: str | Path | None, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> None:
        self.path = None if path is None else Path(path)
        self.heartbeat_seconds = heartbeat_seconds
        self._problems: dict[str, str] = {}
        self._idle: bool | None = None
        self._started_at: float | None = None
        self._next_write = 0.0
        self._lock = threading.Lock()
        self._failed = False

    def outage(self, activity: str) -> Outage:
        """An Outage for one of the part's loops whose every change is written."""
        outage = Outage(activity)
        outage.on_change = lambda _problem: self.report(activity, waiting_for(outage))
        return outage

    def report(self, activity: str, problem: str | None) -> None:
        """Records what one activity waits for (None: it works) and writes the file."""
        with self._lock:
            if problem is None:
                self._problems.pop(activity, None)
            else:
                self._problems[activity] = problem
            self._write()

    def beat(self, idle: bool | None = None, started_at: float | None = None) -> None:
        """After a round of work: rewrites the file when the heartbeat is due or `idle` flipped."""
        with self._lock:
            flipped = idle is not None and idle != self._idle
            self._idle, self._started_at = idle, started_at
            if flipped or time.monotonic() >= self._next_write:
                self._write()

    def alive(self) -> None:
        """Rewrites the file when the heartbeat is due, keeping what the last
        round said."""
        with self._lock:
            if time.monotonic() >= self._next_write:
                self._write()

    def _write(self) -> None:
        self._next_write = time.monotonic() + self.heartbeat_seconds
        if self.path is None:
            return
        content = {
            "working": not self._problems,
            "problems": self._problems,
            "idle": self._idle,
            "started_at": self._started_at,
            "written_at": time.time(),
            "pid": os.getpid(),
        }
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(content))
            os.replace(temporary, self.path)  # a reader sees the old file or the new one, never half
        except OSError as error:
            if not self._failed:
                log.warning("status file not written", extra={"path": str(self.path), "error": str(error)})
            self._failed = True
        else:
            self._failed = False


def read_status(path: str | Path, stale_seconds: float = STALE_SECONDS, now: float | None = None) -> dict:
    """The status file's content; raises OSError or ValueError when there is none to read."""
    content = json.loads(Path(path).read_text())
    if not isinstance(content, dict):
        raise ValueError("a status file holds a JSON object")
    content["age_s"] = (time.time() if now is None else now) - float(content.get("written_at", 0))
    content["stale"] = content["age_s"] > stale_seconds
    return content


def problem_of(
    path: str | Path, stale_seconds: float = STALE_SECONDS, now: float | None = None
) -> str | None:
    """None while the part says it does its work; otherwise one line on why not."""
    try:
        status = read_status(path, stale_seconds, now)
    except FileNotFoundError:
        return "has not reported yet"
    except (OSError, ValueError) as error:
        return f"status unreadable ({error})"
    if status.get("problems"):
        return "; ".join(str(problem) for problem in status["problems"].values())
    if status["stale"]:
        return f"last reported {status['age_s']:.0f}s ago (stuck, or not running)"
    return None
