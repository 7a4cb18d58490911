"""Start-up objects out of the garbage collector's way.

A process makes most of its long-lived objects while it starts (modules, the
app, schemas, SQLAlchemy's metadata), and every full collection walks them all
while holding the GIL, which stalls each of the process's threads meanwhile.
gc.freeze() moves them to a permanent generation that collections skip; what is
allocated later is collected as before (the effect on P2: bench/README.md,
"Frozen start-up objects")."""

import gc
import logging

log = logging.getLogger(__name__)


def freeze_start_up_objects() -> None:
    """When a process's start-up is done. A gunicorn master calls it before it
    forks (its workers then share those pages), and each worker again once
    it is set up."""
    gc.collect()
    gc.freeze()
    log.info("start-up objects frozen", extra={"objects": gc.get_freeze_count()})
