"""Reading and writing the analytics figures. The consumer applies a batch of
events in the caller's transaction; the API only reads."""

from collections import Counter
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pms_common.db import padded_for_in, plan_for_current_sizes
from pms_common.db_errors import describe_error
from pms_common.events import CREATED, DELETED, UPDATED
from pms_common.models import utcnow

from .models import SUMMARY_ROW_ID, ConsumerStatus, PatientState, ProcessedEvent, Registration, Summary

FORGET_CHUNK = 5000
EMPTY_SUMMARY = {
    "patients_created": 0,
    "patients_updated": 0,
    "patients_deleted": 0,
    "active_patients": 0,
    "events_processed": 0,
    "last_event_at": None,
}


class ConsumerNotAlive(RuntimeError):
    """The consumer's heartbeat is missing or too old."""


def apply_events(connection, events, now=None):
    """Counts the events not counted before, in the caller's transaction, and
    records their ids there too: commit both or neither. Returns how many
    events were new (redeliveries and duplicates in the batch count 0)."""
    batch = {}
    for event in events:
        batch.setdefault(event.event_id, event)
    if not batch:
        return 0
    plan_for_current_sizes(connection)
    seen = set(
        connection.scalars(
            sa.select(ProcessedEvent.event_id).where(ProcessedEvent.event_id.in_(padded_for_in(batch)))
        )
    )
    new_events = [event for event_id, event in batch.items() if event_id not in seen]
    if not new_events:
        return 0

    patient_ids = {event.patient_id for event in new_events}
    stored = {
        row.patient_id: row
        for row in connection.execute(
            sa.select(PatientState.patient_id, PatientState.registered_month, PatientState.active).where(
                PatientState.patient_id.in_(padded_for_in(patient_ids))
            )
        )
    }
    # patient id -> (registered_month, active) after this batch
    states = {patient_id: (row.registered_month, row.active) for patient_id, row in stored.items()}
    totals = Counter()
    month_deltas = Counter()
    for event in new_events:
        known = states.get(event.patient_id)
        if event.event_type == CREATED:
            # A patient is created once: a second create (a new event id for the
            # same patient, or one after its delete) changes no figure.
            if known is None:
                states[event.patient_id] = (event.registered_month, True)
                totals["patients_created"] += 1
                totals["active_patients"] += 1
                month_deltas[event.registered_month] += 1
        elif event.event_type == UPDATED:
            totals["patients_updated"] += 1
        elif event.event_type == DELETED:
            # A patient is deleted once; one never seen created (its create came
            # before this store existed) still counts as deleted, not as active.
            if known is None:
                states[event.patient_id] = (None, False)
                totals["patients_deleted"] += 1
            elif known[1]:
                states[event.patient_id] = (known[0], False)
                totals["patients_deleted"] += 1
                totals["active_patients"] -= 1
                if known[0]:
                    month_deltas[known[0]] -= 1

    now = now or utcnow()
    connection.execute(
        sa.insert(ProcessedEvent), [{"event_id": event.event_id, "processed_at": now} for event in new_events]
    )
    _write_patient_states(connection, states, stored)
    _add_to_summary(connection, totals, len(new_events), max(event.occurred_at for event in new_events))
    _add_to_registrations(connection, {month: delta for month, delta in month_deltas.items() if delta})
    return len(new_events)


def forget_processed_events(connection, before, limit=FORGET_CHUNK):
    """Deletes up to `limit` ids of events processed before `before` (a chunk,
    so no transaction holds many rows); returns how many. An id only needs to
    outlive any redelivery of its event."""
    table = ProcessedEvent.__table__
    oldest = sa.select(table.c.event_id).where(table.c.processed_at < before).limit(limit)
    return connection.execute(sa.delete(table).where(table.c.event_id.in_(oldest.scalar_subquery()))).rowcount


def _write_patient_states(connection, states, stored):
    new_rows = [
        {"patient_id": patient_id, "registered_month": month, "active": active}
        for patient_id, (month, active) in states.items()
        if patient_id not in stored
    ]
    if new_rows:
        connection.execute(sa.insert(PatientState), new_rows)
    # Known patients only ever go from active to deleted.
    deleted = [
        {"deleted_id": patient_id}
        for patient_id, (_, active) in states.items()
        if patient_id in stored and stored[patient_id].active and not active
    ]
    if deleted:
        connection.execute(
            sa.update(PatientState)
            .where(PatientState.patient_id == sa.bindparam("deleted_id"))
            .values(active=False),
            deleted,
        )


def _add_to_summary(connection, totals, processed, latest_event_at):
    table = Summary.__table__
    latest_event_at = sa.literal(latest_event_at, table.c.last_event_at.type)
    increments = {
        name: table.c[name] + totals[name]
        for name in ("patients_created", "patients_updated", "patients_deleted", "active_patients")
        if totals[name]
    }
    result = connection.execute(
        sa.update(table)
        .where(table.c.id == SUMMARY_ROW_ID)
        .values(
            events_processed=table.c.events_processed + processed,
            last_event_at=sa.case(
                (
                    sa.or_(table.c.last_event_at.is_(None), table.c.last_event_at < latest_event_at),
                    latest_event_at,
                ),
                else_=table.c.last_event_at,
            ),
            **increments,
        )
    )
    if result.rowcount == 0:  # the migration creates the row; this covers a store emptied by hand
        connection.execute(
            sa.insert(table).values(
                {
                    **EMPTY_SUMMARY,
                    **totals,
                    "id": SUMMARY_ROW_ID,
                    "events_processed": processed,
                    "last_event_at": latest_event_at,
                }
            )
        )


def _add_to_registrations(connection, month_deltas):
    if not month_deltas:
        return
    insert = _dialect_insert(connection)(Registration.__table__)
    # Sorted, so that concurrent writers lock months in the same order.
    connection.execute(
        insert.on_conflict_do_update(
            index_elements=["month"], set_={"count": Registration.__table__.c.count + insert.excluded.count}
        ),
        [{"month": month, "count": delta} for month, delta in sorted(month_deltas.items())],
    )


def _dialect_insert(connection):
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


def read_summary(connection):
    row = (
        connection.execute(
            sa.select(*(Summary.__table__.c[name] for name in EMPTY_SUMMARY)).where(
                Summary.id == SUMMARY_ROW_ID
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else dict(EMPTY_SUMMARY)


def read_registrations(connection, first_month=None, last_month=None):
    query = (
        sa.select(Registration.month, Registration.count)
        .where(Registration.count > 0)
        .order_by(Registration.month)
    )
    if first_month:
        query = query.where(Registration.month >= first_month)
    if last_month:
        query = query.where(Registration.month <= last_month)
    return [dict(row) for row in connection.execute(query).mappings()]


def write_heartbeat(connection, group_id, consumer, error=None, now=None):
    """Upserts the consumer's status row; an error is kept until the next one."""
    now = now or utcnow()
    values = {"consumer": consumer, "last_heartbeat": now}
    if error is not None:
        # Shown by readiness: a database error only by class and SQLSTATE.
        values.update(last_error=describe_error(error)[:2000], last_error_at=now)
    insert = _dialect_insert(connection)(ConsumerStatus.__table__)
    connection.execute(
        insert.values(group_id=group_id, **values).on_conflict_do_update(
            index_elements=["group_id"], set_=values
        )
    )


def check_consumer_alive(connection, group_id, stale_seconds, now=None):
    """Readiness: raises ConsumerNotAlive unless a heartbeat is recent enough."""
    status = connection.execute(
        sa.select(ConsumerStatus.consumer, ConsumerStatus.last_heartbeat, ConsumerStatus.last_error).where(
            ConsumerStatus.group_id == group_id
        )
    ).first()
    if status is None:
        raise ConsumerNotAlive(f"no heartbeat from consumer group {group_id!r} yet")
    age = (now or utcnow()) - status.last_heartbeat
    if age > timedelta(seconds=stale_seconds):
        detail = f"; last error: {status.last_error}" if status.last_error else ""
        raise ConsumerNotAlive(
            f"last heartbeat from {status.consumer} {age.total_seconds():.0f}s ago"
            f" (limit {stale_seconds:g}s){detail}"
        )
