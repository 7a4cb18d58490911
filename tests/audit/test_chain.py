"""The trail as a hash chain, on a real database: appends form one line,
each source is appended once, and verify names the first entry edited,
deleted or unlinked, whoever changed the rows directly in the database."""

import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from audit.models import GENESIS_HASH
from audit.store import append_entries, entries_table, entry_hash, head_table, verify
from tests.support import prepared_lookups

from .conftest import entry


def append(engine, entries):
    with engine.begin() as connection:
        return append_entries(connection, entries)


def verdict(engine):
    with engine.connect() as connection:
        return verify(connection).as_json()


def rows(engine):
    with engine.connect() as connection:
        return connection.execute(sa.select(entries_table).order_by(entries_table.c.id)).all()


@pytest.fixture
def tamper(engine):
    """Runs SQL as someone who reaches around the service's triggers: on
    PostgreSQL a superuser with triggers off for the session, on SQLite a
    writer who dropped them (an attacker with the file)."""

    def run(statement, **params):
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
            else:
                for (name,) in connection.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger'"
                ).all():
                    connection.exec_driver_sql(f"DROP TRIGGER {name}")
            return connection.execute(sa.text(statement), params).rowcount

    return run


def test_entries_are_chained_with_consecutive_ids(engine):
    assert append(engine, [entry(n) for n in range(1, 6)]) == 5
    stored = rows(engine)
    assert [row.id for row in stored] == [1, 2, 3, 4, 5]
    assert stored[0].prev_hash == GENESIS_HASH
    for before, after in zip(stored, stored[1:], strict=False):
        assert after.prev_hash == before.hash
    for row in stored:
        assert row.hash == entry_hash(row.id, row._mapping, row.prev_hash)
    assert verdict(engine) == {"ok": True, "entries": 5}


def test_a_source_is_appended_once(engine):
    assert append(engine, [entry(1), entry(2)]) == 2
    # A redelivery, and a duplicate within one batch, add nothing.
    assert append(engine, [entry(2), entry(3), entry(3)]) == 1
    assert [row.source for row in rows(engine)] == ["test:1", "test:2", "test:3"]
    assert verdict(engine)["ok"]


def test_unknown_action_is_refused(engine):
    with pytest.raises(ValueError, match="unknown audit action"):
        append(engine, [entry(1, action="PEEK")])


def test_concurrent_appends_form_one_chain(engine):
    errors = []

    def writer(first):
        try:
            for number in range(first, first + 20):
                append(engine, [entry(number)])
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(start,)) for start in (0, 100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert [row.id for row in rows(engine)] == list(range(1, 61))
    assert verdict(engine) == {"ok": True, "entries": 60}


def test_an_edited_entry_is_named(engine, tamper):
    append(engine, [entry(n) for n in range(1, 8)])
    assert tamper("UPDATE audit_entries SET actor = 'someone@else' WHERE id = 4") == 1
    assert verdict(engine) == {"ok": False, "entries": 3, "firstBrokenId": 4}


def test_an_edit_that_also_rehashes_is_named_by_the_next_link(engine, tamper):
    append(engine, [entry(n) for n in range(1, 8)])
    row = rows(engine)[3]._mapping
    forged = {**row, "status": 404}
    tamper(
        "UPDATE audit_entries SET status = 404, hash = :hash WHERE id = 4",
        hash=entry_hash(4, forged, row["prev_hash"]),
    )
    assert verdict(engine) == {"ok": False, "entries": 4, "firstBrokenId": 5}


def test_a_deleted_entry_is_named(engine, tamper):
    append(engine, [entry(n) for n in range(1, 8)])
    assert tamper("DELETE FROM audit_entries WHERE id = 3") == 1
    assert verdict(engine) == {"ok": False, "entries": 2, "firstBrokenId": 3}


def test_deleting_the_newest_entries_is_named(engine, tamper):
    append(engine, [entry(n) for n in range(1, 8)])
    assert tamper("DELETE FROM audit_entries WHERE id >= 6") == 2
    assert verdict(engine) == {"ok": False, "entries": 5, "firstBrokenId": 6}


def test_the_services_connection_cannot_change_or_delete_entries(engine):
    append(engine, [entry(n) for n in range(1, 4)])
    for statement in (
        "UPDATE audit_entries SET actor = 'x' WHERE id = 2",
        "DELETE FROM audit_entries WHERE id = 2",
        "UPDATE audit_chain_head SET last_id = 1",
        "DELETE FROM audit_chain_head",
    ):
        with pytest.raises(DBAPIError, match="append-only|only moves forward"), engine.begin() as connection:
            connection.execute(sa.text(statement))
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(sa.text("TRUNCATE audit_entries"))
    assert verdict(engine) == {"ok": True, "entries": 3}
    with engine.connect() as connection:
        assert connection.execute(sa.select(head_table.c.last_id)).scalar_one() == 3


@pytest.mark.parametrize("database_kind", ["postgres"], indirect=True)
def test_sources_are_looked_up_with_a_plan_for_the_trail_as_it_is(engine):
    """Batch after batch on one connection, PostgreSQL plans the lookup of a
    batch's sources for the trail as it is, never with a generic plan cached
    while it was small (pms_common.db.plan_for_current_sizes)."""
    with engine.connect() as connection:
        for batch in range(20):
            with connection.begin():
                append_entries(connection, [entry(batch * 8 + number) for number in range(8)])
        plans = prepared_lookups(connection, "audit_entries")
    assert len(plans) == 1 and all(custom > 0 for _, custom in plans.values())
    assert [generic for generic, _ in plans.values()] == [0]
