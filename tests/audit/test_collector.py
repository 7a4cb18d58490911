"""The collector: what each line of the gateway's audit log becomes (lines
a real Envoy wrote with the rendered config, through the whole system), and
exactly once across a restart and a database outage, because the entries
and the file position commit together."""

import json
import logging
import os
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.collector import GatewayLogCollector, entry_of_line, read_position
from audit.extensions import db
from audit.store import entries_table, verify
from pms_common.worker import Outage, run_until_stopped
from tests.support import wait_for
from tests.tcp_switch import switched_postgres

from .conftest import make_config

# Written by Envoy (gateway/envoy.yaml's audit access log) while a test client
# made the requests named below through `python -m stack`; /health lines left out.
ENVOY_LINES = [json.loads(line) for line in (Path(__file__).parent / "envoy_access_lines.jsonl").open()]
PATIENT = "e5e5cae7-3734-4cf7-b007-356fc2694d35"
ADMIN_EMAIL, CLERK = "testuser@test.com", "clerk@clinic.example"
# (action, actor, actorRole, patientId, status) per line; None: no entry from the log.
EXPECTED = [
    ("LOGIN", ADMIN_EMAIL, None, None, 200),
    None,  # the create committed: its event makes the entry
    ("READ", ADMIN_EMAIL, "ADMIN", PATIENT, 200),  # ext_authz's yes
    ("READ", ADMIN_EMAIL, "ADMIN", PATIENT, 200),  # the memo's yes
    None,  # an update that committed
    ("UPDATE", ADMIN_EMAIL, "ADMIN", PATIENT, 200),  # one that changed nothing: no event
    ("SEARCH", ADMIN_EMAIL, "ADMIN", None, 200),
    ("DENIED", None, None, PATIENT, 401),  # no token; its X-User-Email header is the client's own
    ("USER_CREATED", ADMIN_EMAIL, "ADMIN", None, 201),
    ("LOGIN", CLERK, None, None, 200),
    ("DENIED", CLERK, "USER", None, 403),  # a USER reading the trail
    ("DENIED", CLERK, "USER", PATIENT, 403),  # a USER deleting a patient
    ("LOGIN_FAILED", "nobody@clinic.example", None, None, 401),
    ("BILLING_READ", ADMIN_EMAIL, "ADMIN", PATIENT, 200),
    None,  # reading the trail
    None,  # POST on the trail (405)
    ("LOGIN", ADMIN_EMAIL, None, None, 200),
    ("LOGOUT", ADMIN_EMAIL, None, None, 204),
    ("UPDATE", ADMIN_EMAIL, "ADMIN", PATIENT, 422),  # a change refused: no event
    ("READ", ADMIN_EMAIL, "ADMIN", "123e4567-e89b-12d3-a456-426614179999", 404),
    ("DENIED", None, None, None, 401),  # analytics without a token
    None,  # listing users
    None,
    ("USER_CHANGED", ADMIN_EMAIL, "ADMIN", None, 200),
    None,  # /api-docs/audit
    None,  # a delete that committed
]


def summary(entry):
    if entry is None:
        return None
    return (entry.action, entry.actor, entry.actor_role, entry.patient_id, entry.status)


def test_real_envoy_lines_map_to_entries():
    assert len(ENVOY_LINES) == len(EXPECTED)
    for line, expected in zip(ENVOY_LINES, EXPECTED, strict=True):
        entry = entry_of_line(line, "log:test")
        assert summary(entry) == expected, line
        if entry is not None:
            assert entry.request_id == line["request_id"] and entry.client_address == "127.0.0.1"
            assert entry.fields == (() if expected == EXPECTED[5] else None)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"status": 0}, ("READ", ADMIN_EMAIL, "ADMIN", PATIENT, 0)),  # the client went away
        ({"path": "/patients/Ada%20Lovelace"}, ("READ", ADMIN_EMAIL, "ADMIN", None, 200)),  # no id, no text
        ({"route": None}, None),  # no route: the gateway's 404
        ({"authz_user": None, "memo_hit": None}, ("READ", None, None, PATIENT, 200)),
    ],
)
def test_edge_cases(changes, expected):
    assert summary(entry_of_line({**ENVOY_LINES[2], **changes}, "log:test")) == expected


def test_a_logout_refused_names_nobody():
    logout = {**ENVOY_LINES[17], "status": 401}
    assert summary(entry_of_line(logout, "log:test")) == ("LOGOUT", None, None, None, 401)


def write(path, lines, end=b"\n"):
    with open(path, "ab") as log_file:
        for line in lines:
            log_file.write(json.dumps(line).encode() + end)


def stored(engine):
    with engine.connect() as connection:
        return connection.execute(sa.select(entries_table).order_by(entries_table.c.id)).all()


AUDITED = sum(expected is not None for expected in EXPECTED)


def test_exactly_once_across_restarts_and_partial_lines(app, engine, tmp_path):
    path = tmp_path / "gateway-audit.jsonl"
    write(path, ENVOY_LINES[:10])
    with open(path, "ab") as log_file:
        log_file.write(json.dumps(ENVOY_LINES[10]).encode()[:40])  # Envoy is still writing this one
    first = GatewayLogCollector(path, engine)
    assert first.collect_once() > 0
    audited_first = sum(expected is not None for expected in EXPECTED[:10])
    assert len(stored(engine)) == audited_first
    assert first.collect_once() > 0  # nothing whole is new: nothing appended
    assert len(stored(engine)) == audited_first
    # A new collector (the part restarted) goes on from the committed position.
    with open(path, "ab") as log_file:
        log_file.write(json.dumps(ENVOY_LINES[10]).encode()[40:] + b"\n")
    write(path, ENVOY_LINES[11:])
    second = GatewayLogCollector(path, engine)
    second.collect_once()
    rows = stored(engine)
    assert len(rows) == AUDITED
    assert [row.request_id for row in rows] == [
        line["request_id"] for line, expected in zip(ENVOY_LINES, EXPECTED, strict=True) if expected
    ]
    assert len({row.source for row in rows}) == AUDITED
    with engine.connect() as connection:
        assert read_position(connection, "gateway")[1] == path.stat().st_size
        assert verify(connection).ok


def test_a_log_that_has_not_grown_costs_no_transaction_and_is_looked_at_less_often(app, engine, tmp_path):
    path = tmp_path / "gateway-audit.jsonl"
    write(path, ENVOY_LINES[:3])
    collector = GatewayLogCollector(path, engine, interval_seconds=0.2)
    collector.collect_once()
    transactions = []

    def began(connection):
        transactions.append(connection)

    sa.event.listen(engine, "begin", began)
    try:
        assert [collector.collect_once() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
        assert transactions == []
        write(path, ENVOY_LINES[3:4])
        assert collector.collect_once() == 0.2  # lines came: the short pause again
        assert len(transactions) == 1
        assert collector.collect_once() == 0.2
    finally:
        sa.event.remove(engine, "begin", began)
    assert len(stored(engine)) == sum(expected is not None for expected in EXPECTED[:4])


def test_an_empty_log_costs_one_transaction_until_it_grows(app, engine, tmp_path):
    """The gateway opens its log at start; an idle gateway writes nothing to it."""
    path = tmp_path / "gateway-audit.jsonl"
    path.touch()
    collector = GatewayLogCollector(path, engine, interval_seconds=0.2)
    transactions = []

    def began(connection):
        transactions.append(connection)

    sa.event.listen(engine, "begin", began)
    try:
        assert [collector.collect_once() for _ in range(4)] == [0.2, 0.4, 0.8, 1.0]
        assert len(transactions) == 1
        write(path, ENVOY_LINES[:1])
        assert collector.collect_once() == 0.2
        assert len(transactions) == 2
    finally:
        sa.event.remove(engine, "begin", began)


def test_a_position_lost_does_not_write_twice(app, engine, tmp_path):
    """Each entry names its line: reading a file again from its start (a
    position row restored from an older backup, say) appends nothing twice."""
    path = tmp_path / "gateway-audit.jsonl"
    write(path, ENVOY_LINES)
    GatewayLogCollector(path, engine).collect_once()
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM audit_log_positions"))
    GatewayLogCollector(path, engine).collect_once()
    assert len(stored(engine)) == AUDITED


def test_a_rotated_file_is_finished_then_the_new_one_read(app, engine, tmp_path):
    path = tmp_path / "gateway-audit.jsonl"
    write(path, ENVOY_LINES[:5])
    collector = GatewayLogCollector(path, engine)
    collector.collect_once()
    write(path, ENVOY_LINES[5:12])  # not read yet when the file is rotated
    os.rename(path, tmp_path / "gateway-audit.jsonl.1")
    assert collector.collect_once() > 0  # the rest of the renamed file; the new one is not there yet
    write(path, ENVOY_LINES[12:])  # Envoy reopened: a new file
    collector.collect_once()
    assert [row.request_id for row in stored(engine)] == [
        line["request_id"] for line, expected in zip(ENVOY_LINES, EXPECTED, strict=True) if expected
    ]


def test_a_truncated_file_is_read_from_its_start(app, engine, tmp_path):
    path = tmp_path / "gateway-audit.jsonl"
    write(path, ENVOY_LINES[:5])
    GatewayLogCollector(path, engine).collect_once()
    path.write_bytes(b"")
    write(path, ENVOY_LINES[5:6])
    GatewayLogCollector(path, engine).collect_once()
    assert len(stored(engine)) == sum(expected is not None for expected in EXPECTED[:6])


def test_a_line_that_is_not_json_is_logged_and_passed(app, engine, tmp_path, caplog):
    path = tmp_path / "gateway-audit.jsonl"
    write(path, ENVOY_LINES[:3])
    with open(path, "ab") as log_file:
        log_file.write(b"{not json\n")
    write(path, ENVOY_LINES[3:4])
    GatewayLogCollector(path, engine).collect_once()
    assert [row.action for row in stored(engine)] == ["LOGIN", "READ", "READ"]
    assert "unreadable line" in caplog.text


@pytest.fixture
def postgres(tmp_path):
    with switched_postgres(tmp_path, "audit_outage") as (url, switch):
        yield url, switch


def test_a_database_outage_delays_entries_and_loses_none(postgres, app_factory, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    url, switch = postgres
    reader = app_factory(make_config(url, tmp_path))  # on a connection that stays
    collecting = app_factory(make_config(switch.url_for(url), tmp_path))
    path = tmp_path / "gateway-audit.jsonl"
    with reader.app_context():
        engine = db.engine
    with collecting.app_context():
        collector = GatewayLogCollector(path, db.engine, interval_seconds=0.05)
    stop = threading.Event()
    outage = Outage("collecting the gateway's audit log")
    tries = []

    def step():
        tries.append(None)
        return collector.collect_once()

    thread = threading.Thread(target=run_until_stopped, args=(outage.activity, step, stop, outage))
    thread.start()
    try:
        write(path, ENVOY_LINES[:8])
        first = sum(expected is not None for expected in EXPECTED[:8])
        wait_for(lambda: len(stored(engine)) == first, 20, message="the first lines collected")
        switch.off()
        tries_before = len(tries)
        write(path, ENVOY_LINES[8:])
        # Several tries while away (each refused), still one line said.
        wait_for(lambda: outage.waiting and len(tries) > tries_before + 2, 20, message="tries while away")
        switch.on()
        wait_for(lambda: len(stored(engine)) == AUDITED, 30, message="every line collected after the outage")
        wait_for(lambda: not outage.waiting, 10, message="the collector to resume")
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()
    rows = stored(engine)
    assert len(rows) == AUDITED == len({row.source for row in rows})
    with engine.connect() as connection:
        assert verify(connection).ok
    # Said once as the outage starts, once as it ends, and once at the stop.
    assert [
        (record.getMessage(), getattr(record, "peer", None))
        for record in caplog.records
        if getattr(record, "activity", None) == outage.activity
    ] == [
        ("waiting for a peer; retrying with backoff", "database"),
        ("peer back; resumed", "database"),
        ("stopping", None),
    ]


@pytest.mark.parametrize(
    "route, method, path, expected",
    [
        ("fhir_read", "GET", "/fhir/Patient", ("SEARCH", None)),
        ("fhir_read", "GET", f"/fhir/Patient/{PATIENT}", ("READ", PATIENT)),
        ("fhir_read", "GET", f"/fhir/Patient/{PATIENT}/_history/2", ("READ", PATIENT)),
        ("fhir_write", "PUT", f"/fhir/Patient/{PATIENT}", ("UPDATE", PATIENT)),
        ("fhir_write", "POST", "/fhir/Patient", ("CREATE", None)),
        ("fhir_write", "DELETE", f"/api/fhir/Patient/{PATIENT}", ("DELETE", PATIENT)),
        ("fhir_metadata", "GET", "/fhir/metadata", None),
    ],
)
def test_fhir_routes_are_records_too(route, method, path, expected):
    line = {**ENVOY_LINES[2], "route": route, "method": method, "path": path, "status": 409}
    entry = entry_of_line(line, "log:test")
    assert (entry and (entry.action, entry.patient_id)) == expected
