"""What the audit trail costs: P1 and P2 on a system without it
(AUDIT_TRAIL=off: no audit parts, no audit log at the gateway) and with it,
in turns, in one run.

    .venv/bin/python -m bench.experiments.audit_cost [--seconds 10] [--connections 16] [--rounds 1]

Each setting gets a system of its own on a fresh PostgreSQL database; the
table shows each setting's medians and their ratio to the system without the
trail (the issue's goal: within 10 %)."""

from .observability_cost import arguments, compare

SETTINGS = {"trail off": {"AUDIT_TRAIL": "off"}, "trail on": {}}


def main(argv=None):
    compare(SETTINGS, arguments(argv, __doc__.splitlines()[0]), "pms-audit-cost-")


if __name__ == "__main__":
    main()
