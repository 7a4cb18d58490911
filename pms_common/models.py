"""What every part's tables share: one clock, one timestamp column type, one
autoincrementing key type."""

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


def utcnow() -> datetime:
    """Now, zone-aware, in UTC: every timestamp the parts write comes from here."""
    return datetime.now(UTC)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that goes in and comes out as an aware datetime in UTC, on
    SQLite (which keeps no zone) as on PostgreSQL (which answers in the
    session's zone). A naive value is refused: its zone would be a guess."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UtcDateTime needs an aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A 64-bit key on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
BigIntegerKey = sa.BigInteger().with_variant(sa.Integer, "sqlite")
