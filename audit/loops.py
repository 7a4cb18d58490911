"""audit's background loops: the event consumer and the gateway log's
collector, forked beside the web workers or run by `python -m audit.consumer`
and `python -m audit.collector` (pms_common.serve)."""

from pms_common.serve import Background

CONSUMER = Background("audit-consumer", "audit.consumer:work")
COLLECTOR = Background("audit-collector", "audit.collector:work")
