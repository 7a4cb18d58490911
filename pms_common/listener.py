"""The port of an HTTP part, handed from a gunicorn master that died to the
one started in its place without a moment in which nobody listens.

The master binds its socket with SO_REUSEPORT, so that the next master can
bind beside the old socket while the old workers finish. A worker dies with
its master (its parent-death signal is SIGTERM: it stops accepting and
finishes what it holds) but keeps a copy of the old socket open until another
socket listens on the port, for at most HANDOVER_SECONDS: connections queued
on the old socket meanwhile are then reset, and the gateway retries them on
the new one. A refused connection could not be told from a service that is
down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

HANDOVER_SECONDS = 30.0
LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp
_kept: list[tuple[int, int]] = []  # this worker's copies of its master's sockets: (fd, port)


def bind_shared(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket that a later process of this user may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((host, port))
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


def listeners_on(port: int, proc_net: Path = Path("/proc/net")) -> int | None:
    """How many sockets listen on `port` (any address); None where the kernel does not say."""
    count, readable = 0, False
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc_net / table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[3] == LISTEN_STATE
                and int(fields[1].rpartition(":")[2], 16) == port
            ):
                count += 1
    return count if readable else None


def keep_sockets(sockets: list[socket.socket]) -> None:
    """In a worker after fork: copies of its master's sockets, closed by hand_over()."""
    _kept.extend((os.dup(sock.fileno()), sock.getsockname()[1]) for sock in sockets)


def hand_over(master_alive: bool, wait_seconds: float = HANDOVER_SECONDS) -> None:
    """When a worker ends: closes its copies of the sockets, once another
    socket listens on each port if its master is gone."""
    deadline = time.monotonic() + wait_seconds
    try:
        for _fd, port in [] if master_alive else _kept:
            while time.monotonic() < deadline and (listeners_on(port) or 0) == 1:
                time.sleep(0.05)
            log.info("port handed over", extra={"port": port, "listeners": listeners_on(port)})
    finally:
        while _kept:
            os.close(_kept.pop()[0])
