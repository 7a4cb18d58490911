"""What a part without a port says about its work (pms_common.status): written
at each change and on a heartbeat, read by the launcher."""

import json
import logging
import time

from sqlalchemy.exc import OperationalError

from pms_common.status import StatusFile, problem_of, read_status, status_path
from pms_common.worker import PeerUnavailable

DATABASE_DOWN = OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))


def test_each_change_of_a_loop_is_written_at_once_and_named_in_one_line(tmp_path):
    path = status_path(tmp_path, "patient-worker")
    status = StatusFile(path, heartbeat_seconds=3600)
    assert problem_of(path) == "has not reported yet"
    relay, retries = status.outage("outbox relay"), status.outage("billing account retries")
    relay.failed(DATABASE_DOWN)
    retries.failed(PeerUnavailable("billing", "billing did not answer"))
    assert problem_of(path) == (
        "outbox relay waits for the database (ConnectionRefusedError); "
        "billing account retries waits for the billing (billing did not answer)"
    )
    relay.recovered()
    assert problem_of(path) == "billing account retries waits for the billing (billing did not answer)"
    retries.recovered()
    assert problem_of(path) is None
    relay.failed(KeyError("a bug"))
    assert problem_of(path) == "outbox relay fails ('a bug'); retrying"


def test_a_heartbeat_is_written_when_due_and_at_once_when_idle_flips(tmp_path):
    path = tmp_path / "relay.json"
    status = StatusFile(path, heartbeat_seconds=3600)
    status.beat(idle=False, started_at=1.0)
    assert read_status(path)["idle"] is False
    status.beat(idle=False, started_at=2.0)  # not due, nothing changed: not written
    assert read_status(path)["started_at"] == 1.0
    status.beat(idle=True, started_at=3.0)
    assert (read_status(path)["idle"], read_status(path)["started_at"]) == (True, 3.0)
    quick = StatusFile(path, heartbeat_seconds=0)
    quick.beat(idle=True, started_at=4.0)
    assert read_status(path)["started_at"] == 4.0


def test_alive_rewrites_the_file_only_when_due_and_keeps_what_the_last_round_said(tmp_path):
    path = tmp_path / "relay.json"
    status = StatusFile(path, heartbeat_seconds=0.5)
    status.beat(idle=True, started_at=1.0)
    written_at = read_status(path)["written_at"]
    status.alive()  # not due: not written
    assert read_status(path)["written_at"] == written_at
    time.sleep(0.6)
    status.alive()
    after = read_status(path)
    assert after["written_at"] > written_at and (after["idle"], after["started_at"]) == (True, 1.0)


def test_a_working_part_that_stops_writing_is_named_stale(tmp_path):
    path = tmp_path / "consumer.json"
    StatusFile(path).report("consuming", None)
    written_at = json.loads(path.read_text())["written_at"]
    assert problem_of(path, stale_seconds=15, now=written_at + 5) is None
    assert problem_of(path, stale_seconds=15, now=written_at + 40) == (
        "last reported 40s ago (stuck, or not running)"
    )
    path.write_text("{not json")
    assert problem_of(path).startswith("status unreadable")


def test_a_file_that_cannot_be_written_is_said_once_and_stops_nothing(tmp_path, caplog):
    (tmp_path / "blocked").write_text("a file where the folder should be")
    status = StatusFile(tmp_path / "blocked" / "part.json")
    with caplog.at_level(logging.WARNING, logger="pms_common.status"):
        for _ in range(3):
            status.report("consuming", "waits")
            status.beat(idle=True, started_at=0.0)
    assert [record.getMessage() for record in caplog.records] == ["status file not written"]


def test_without_a_path_nothing_is_written(tmp_path):
    status = StatusFile(None)
    status.outage("loop").failed(DATABASE_DOWN)
    status.beat(idle=True, started_at=0.0)
    assert list(tmp_path.iterdir()) == []
