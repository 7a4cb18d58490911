"""Counting rules and idempotence of the store, on each real database."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from analytics import store
from analytics.extensions import db
from analytics.models import PatientState, ProcessedEvent
from pms_common.events import CREATED, DELETED, UPDATED, decode
from pms_common.models import utcnow
from tests.support import prepared_lookups

from .helpers import patient_event


def apply(app, *events):
    with app.app_context(), db.engine.begin() as connection:
        return store.apply_events(connection, [decode(event.SerializeToString()) for event in events])


def figures(app):
    with app.app_context(), db.engine.connect() as connection:
        return store.read_summary(connection), {
            row["month"]: row["count"] for row in store.read_registrations(connection)
        }


def test_each_event_counts_once_and_a_replay_changes_nothing(app):
    ada, bob = str(uuid.uuid4()), str(uuid.uuid4())
    events = [
        patient_event(CREATED, ada, registered_date="2024-01-05", occurred_at="2024-03-01T10:00:00Z"),
        patient_event(CREATED, bob, registered_date="2024-02-07", occurred_at="2024-03-01T10:00:01Z"),
        patient_event(UPDATED, ada, occurred_at="2024-03-01T10:00:03Z"),
        patient_event(UPDATED, ada, occurred_at="2024-03-01T10:00:02Z"),
        patient_event(DELETED, bob, occurred_at="2024-03-01T10:00:04Z"),
    ]
    assert apply(app, *events) == 5
    expected = (
        {
            "patients_created": 2,
            "patients_updated": 2,
            "patients_deleted": 1,
            "active_patients": 1,
            "events_processed": 5,
        },
        {"2024-01": 1},
    )
    summary, months = figures(app)
    assert {k: v for k, v in summary.items() if k != "last_event_at"} == expected[0]
    assert summary["last_event_at"].isoformat() == "2024-03-01T10:00:04+00:00"
    assert months == expected[1]

    assert apply(app, *events) == 0
    assert apply(app, events[2], events[2]) == 0
    assert figures(app) == (summary, months)


def test_a_duplicate_inside_one_batch_counts_once(app):
    create = patient_event(CREATED)
    assert apply(app, create, create) == 1
    assert figures(app)[0]["events_processed"] == 1


def test_a_patient_is_created_and_deleted_once_whatever_the_event_ids(app):
    patient = str(uuid.uuid4())
    apply(app, patient_event(CREATED, patient, registered_date="2024-05-01"))
    apply(
        app,
        patient_event(CREATED, patient, registered_date="2024-05-01"),
        patient_event(DELETED, patient),
        patient_event(DELETED, patient),
    )
    apply(app, patient_event(DELETED, patient), patient_event(CREATED, patient))
    summary, months = figures(app)
    assert (summary["patients_created"], summary["patients_deleted"], summary["active_patients"]) == (1, 1, 0)
    assert summary["events_processed"] == 6
    assert months == {}


def test_deleting_a_patient_never_seen_created_keeps_active_at_zero(app):
    stranger = str(uuid.uuid4())
    apply(app, patient_event(DELETED, stranger))
    apply(app, patient_event(DELETED, stranger))
    summary, _ = figures(app)
    assert (summary["patients_deleted"], summary["active_patients"]) == (1, 0)
    with app.app_context(), db.engine.connect() as connection:
        assert (
            connection.execute(
                sa.select(PatientState.active).where(PatientState.patient_id == stranger)
            ).scalar_one()
            is False
        )


def test_registrations_follow_creates_and_deletes_per_month(app):
    kept = [patient_event(CREATED, registered_date=day) for day in ("2023-12-31", "2024-01-01", "2024-01-31")]
    gone = patient_event(CREATED, registered_date="2024-03-10")
    apply(app, *kept, gone)
    apply(app, patient_event(DELETED, gone.patientId))
    assert figures(app)[1] == {"2023-12": 1, "2024-01": 2}


def test_the_effect_and_the_event_id_commit_together_or_not_at_all(app):
    create = patient_event(CREATED)
    with app.app_context():
        try:
            with db.engine.begin() as connection:
                store.apply_events(connection, [decode(create.SerializeToString())])
                raise RuntimeError("crash before commit")
        except RuntimeError:
            pass
        with db.engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(ProcessedEvent)).scalar() == 0
    assert figures(app) == ({**store.EMPTY_SUMMARY}, {})
    assert apply(app, create) == 1


def test_concurrent_writers_of_the_same_events_count_them_once(app):
    events = [patient_event(CREATED, registered_date="2024-06-01") for _ in range(50)]

    def attempt(_):
        for _ in range(20):  # the loser of a race retries, as the consumer would
            try:
                return apply(app, *events)
            except sa.exc.DBAPIError:
                continue
        raise AssertionError("never committed")

    with ThreadPoolExecutor(4) as pool:
        counted = list(pool.map(attempt, range(4)))
    assert sum(counted) == 50
    summary, months = figures(app)
    assert (summary["events_processed"], summary["patients_created"], months) == (50, 50, {"2024-06": 50})


def test_batches_of_every_size_make_a_handful_of_distinct_statements(app):
    """One statement per batch size would grow every statement cache (SQLAlchemy's,
    the driver's, the server's) with each new size: the consumer's memory crept."""
    statements = set()

    def seen(_conn, _cursor, statement, *_args):
        statements.add(statement)

    with app.app_context():
        sa.event.listen(db.engine, "before_cursor_execute", seen)
        try:
            for size in range(1, 41):
                apply(app, *(patient_event(CREATED) for _ in range(size)))
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", seen)
    lookups = {statement for statement in statements if " IN (" in statement}
    assert 0 < len(lookups) <= 2 * 7  # two lookups, IN lists of 1, 2, 4, ... 64
    assert figures(app)[0]["patients_created"] == sum(range(1, 41))


def test_ids_of_old_events_are_forgotten_in_chunks_and_recent_ones_still_stop_redeliveries(app):
    from datetime import timedelta

    old, recent = patient_event(CREATED), patient_event(CREATED)
    now = utcnow()
    with app.app_context(), db.engine.begin() as connection:
        store.apply_events(connection, [decode(old.SerializeToString())], now=now - timedelta(days=9))
        store.apply_events(connection, [decode(recent.SerializeToString())], now=now - timedelta(hours=1))
        connection.execute(
            sa.insert(ProcessedEvent),
            [{"event_id": str(uuid.uuid4()), "processed_at": now - timedelta(days=10)} for _ in range(4)],
        )
    with app.app_context(), db.engine.begin() as connection:
        cutoff = now - timedelta(days=8)
        assert store.forget_processed_events(connection, cutoff, limit=3) == 3
        assert store.forget_processed_events(connection, cutoff, limit=3) == 2
        assert store.forget_processed_events(connection, cutoff, limit=3) == 0
        kept = connection.scalars(sa.select(ProcessedEvent.event_id)).all()
    assert kept == [recent.event_id]
    # The recent event's redelivery still changes nothing.
    assert apply(app, recent) == 0
    assert figures(app)[0]["events_processed"] == 2


@pytest.mark.parametrize("database_kind", ["postgres"], indirect=True)
def test_a_batch_is_looked_up_with_a_plan_for_the_tables_as_they_are(app):
    """A consumer's connection counts batch after batch: PostgreSQL plans its
    lookups of a batch's ids for the tables as they are at each batch, never
    with a generic plan cached while they were small (one made on a nearly
    empty table is a sequential scan, kept as the table grows:
    pms_common.db.plan_for_current_sizes)."""
    patient_ids = [str(uuid.uuid4()) for _ in range(8)]
    with app.app_context(), db.engine.connect() as connection:
        for batch in range(20):
            with connection.begin():
                events = [
                    patient_event(UPDATED if batch else CREATED, patient_id) for patient_id in patient_ids
                ]
                store.apply_events(connection, [decode(event.SerializeToString()) for event in events])
        plans = prepared_lookups(connection, "analytics_processed_events", "analytics_patients")
    assert len(plans) == 2 and all(custom > 0 for _, custom in plans.values())
    assert {statement: generic for statement, (generic, _) in plans.items()} == dict.fromkeys(plans, 0)
