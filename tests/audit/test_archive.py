"""The archive step: the only way entries leave the trail. It exports a
prefix of the chain older than the retention period, removes it, and the
chain still verifies from the anchor it leaves; the file's own chain ends in
that anchor."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from audit.archive import archive
from audit.store import append_entries, entry_hash, head_table, verify
from pms_common.models import utcnow

from .conftest import entry

OLD = datetime(2019, 1, 1, tzinfo=UTC)


def fill(engine, old, recent):
    entries = [entry(n, time=OLD + timedelta(days=n)) for n in range(1, old + 1)]
    entries += [entry(n, time=utcnow() - timedelta(minutes=n)) for n in range(old + 1, old + recent + 1)]
    with engine.begin() as connection:
        append_entries(connection, entries)


def test_archive_exports_removes_and_keeps_the_chain(engine, tmp_path):
    fill(engine, old=12, recent=5)
    out = tmp_path / "archive.jsonl"
    assert archive(engine, OLD + timedelta(days=10, hours=1), str(out)) == 10
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    exported, anchor = lines[:-1], lines[-1]
    assert [item["id"] for item in exported] == list(range(1, 11))
    # The file carries its own chain: each hash recomputes and links to the one before.
    previous = "0" * 64
    for item in exported:
        row = {
            "time": datetime.fromisoformat(item["time"].replace("Z", "+00:00")),
            "actor": item["actor"],
            "actor_role": item["actorRole"],
            "action": item["action"],
            "patient_id": item["patientId"],
            "request_id": item["requestId"],
            "status": item["status"],
            "client_address": item["clientAddress"],
            "fields": item["fields"],
            "source": item["source"],
        }
        assert item["prevHash"] == previous
        assert entry_hash(item["id"], row, previous) == item["hash"]
        previous = item["hash"]
    assert anchor == {"archivedThroughId": 10, "lastHash": previous, "previousAnchorHash": "0" * 64}
    with engine.connect() as connection:
        assert verify(connection).as_json() == {"ok": True, "entries": 7}
        head = connection.execute(sa.select(head_table)).one()
    assert (head.archived_through_id, head.archived_hash) == (10, previous)
    # New entries go on from the head; a second archive with nothing old enough takes nothing.
    with engine.begin() as connection:
        append_entries(connection, [entry(100)])
    assert archive(engine, OLD, str(tmp_path / "none.jsonl")) == 0
    with engine.connect() as connection:
        assert verify(connection).as_json() == {"ok": True, "entries": 8}


def test_archive_takes_a_prefix_only(engine, tmp_path):
    """An old entry after a newer one (events arrive late) waits for the newer one."""
    with engine.begin() as connection:
        append_entries(
            connection,
            [entry(1, time=OLD), entry(2, time=utcnow()), entry(3, time=OLD)],
        )
    assert archive(engine, OLD + timedelta(days=1), str(tmp_path / "a.jsonl")) == 1
    with engine.connect() as connection:
        assert verify(connection).as_json() == {"ok": True, "entries": 2}


def test_archived_rows_only_are_deletable(engine, tmp_path):
    fill(engine, old=3, recent=2)
    archive(engine, OLD + timedelta(days=10), str(tmp_path / "a.jsonl"))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM audit_entries"))
    with pytest.raises(DBAPIError, match="only moves forward"), engine.begin() as connection:
        connection.execute(sa.text("UPDATE audit_chain_head SET archived_through_id = 0"))


def test_a_broken_chain_is_not_archived(engine, tmp_path):
    fill(engine, old=3, recent=0)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        else:
            connection.exec_driver_sql("DROP TRIGGER audit_entries_no_update")
        connection.exec_driver_sql("UPDATE audit_entries SET status = 500 WHERE id = 2")
    with pytest.raises(Exception, match="broken at entry 2"):
        archive(engine, utcnow(), str(tmp_path / "a.jsonl"))
    assert not (tmp_path / "a.jsonl").exists()


def run_command(app, *args):
    env = {
        "PATH": "/usr/bin:/bin",
        "AUDIT_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "PMS_DATA_DIR": app.config["DATA_DIR"],
        "AUDIT_RETENTION_DAYS": "365",
    }
    return subprocess.run(
        [sys.executable, "-m", "audit", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_command_keeps_the_retention_period(app, engine, tmp_path):
    fill(engine, old=4, recent=3)
    too_recent = (utcnow() - timedelta(days=30)).isoformat()
    refused = run_command(app, "archive", "--before", too_recent, "--out", str(tmp_path / "x.jsonl"))
    assert refused.returncode == 1 and "AUDIT_RETENTION_DAYS (365)" in refused.stdout
    assert not (tmp_path / "x.jsonl").exists()
    done = run_command(app, "archive", "--out", str(tmp_path / "y.jsonl"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 entries archived" in done.stdout
    again = run_command(app, "archive", "--out", str(tmp_path / "y.jsonl"))
    assert again.returncode == 1 and "exists" in again.stdout
    bad = run_command(app, "archive", "--before", "last tuesday", "--out", str(tmp_path / "z.jsonl"))
    assert bad.returncode == 2 and "--before" in bad.stderr
