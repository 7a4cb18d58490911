"""analytics' background loop: the event consumer, forked beside the web
workers or run by `python -m analytics.consumer` (pms_common.serve)."""

from pms_common.serve import Background

from . import CONSUMER_PART

CONSUMER = Background(CONSUMER_PART, "analytics.consumer:work", metrics_port_setting="CONSUMER_METRICS_PORT")
