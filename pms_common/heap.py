"""Start-up objects out of the garbage collector's way.

A service allocates about 100 k long-lived objects while it starts (modules,
the app, schemas, SQLAlchemy's metadata). Each full collection walks them all
while holding the GIL: under create load each one stalled a patient worker's
threads for 100-190 ms, which made the p99 of a create. gc.freeze() moves them
to a permanent generation that collections skip; what is allocated later is
collected as before (bench/README.md, P2)."""
import gc
import logging

log = logging.getLogger(__name__)


def freeze_start_up_objects():
    """When a process's start-up is done. A gunicorn master calls it before it
    forks (its workers then share those pages), and each worker again once
    it is set up."""
    gc.collect()
    gc.freeze()
    log.info("start-up objects frozen", extra={"objects": gc.get_freeze_count()})
