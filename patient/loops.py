"""patient's background loop: the worker (outbox relay, billing retries and
reconciliation), forked beside the web workers or run by `python -m
patient.worker` (pms_common.serve)."""

from pms_common.serve import Background

WORKER = Background("patient-worker", "patient.worker:work", metrics_port_setting="WORKER_METRICS_PORT")
