"""Work done once in a forked child, so that what it imports and allocates
(alembic and its templates, for a start-up migration) never enters the
long-lived process, whose pages its workers and loops share.

    run_in_child(lambda: migrate_and_seed(app, migrations_dir))

The child's failure comes back as an exception in the caller: a database
that is away as PeerUnavailable (so that the caller's Outage waits for it,
pms_common.worker), anything else as ChildFailed."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from .db_errors import describe_error
from .worker import DATABASE, PeerUnavailable, peer_of

log = logging.getLogger(__name__)
DONE, PEER_AWAY, FAILED = 0, 3, 1
MESSAGE_BYTES = 4096


class ChildFailed(RuntimeError):
    """The child's work raised an error that names no peer (its traceback is in the child's log)."""


def run_in_child(work: Callable[[], object]) -> None:
    """Runs work() in a forked child and waits for it; returns when it succeeded."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code, message = _run(work)
        os.write(write_end, message.encode()[:MESSAGE_BYTES])
        os.close(write_end)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # the parent's atexit handlers and buffers are not the child's to run
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == DONE:
        return
    if code == PEER_AWAY:
        peer, _, text = message.partition(":")
        raise PeerUnavailable(peer, text)
    raise ChildFailed(message or f"the child exited with {code}")


def _run(work: Callable[[], object]) -> tuple[int, str]:
    try:
        work()
    except Exception as error:
        # Described as the logs describe it: a database error by class and SQLSTATE only.
        if peer_of(error) == DATABASE:
            return PEER_AWAY, f"{DATABASE}:{describe_error(error)}"
        log.exception("work in a child process failed")
        return FAILED, describe_error(error)
    return DONE, ""
