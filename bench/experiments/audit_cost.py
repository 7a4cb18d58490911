"""What the audit trail costs: P1 and P2 on a system without it
(AUDIT_TRAIL=off: no audit parts, no audit log at the gateway) and with it,
interleaved in one run.

    .venv/bin/python -m bench.experiments.audit_cost [options]

Its options are observability_cost's.

Both systems run at once and take slices of load in turn, as in
bench.experiments.observability_cost; the figures are each cycle's ratios to
the system without the trail (the issue's goal: within 10 %)."""

from .observability_cost import arguments, compare

SETTINGS = {"trail off": {"AUDIT_TRAIL": "off"}, "trail on": {}}


def main(argv=None):
    compare(SETTINGS, arguments(argv, __doc__.splitlines()[0]), "pms-audit-cost-")


if __name__ == "__main__":
    main()
