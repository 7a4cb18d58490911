"""The Java original's 15 sample patients, seeded in dev mode (idempotent)."""

import csv
import logging
import uuid
from datetime import date
from pathlib import Path

import sqlalchemy as sa

from pms_common.events import CREATED
from pms_common.identity import email_key

from .extensions import db
from .models import Patient
from .outbox import record_event
from .records import new_record_number

log = logging.getLogger(__name__)
SEED_FILE = Path(__file__).with_name("seed_patients.csv")


def seed_patients(app):
    if app.config["ENV"] != "dev":
        return
    with SEED_FILE.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    existing = set(db.session.scalars(sa.select(Patient.id)))
    added = 0
    for row in rows:
        patient_id = uuid.UUID(row["id"])
        if patient_id in existing:
            continue
        patient = Patient(
            id=patient_id,
            name=row["name"],
            email=row["email"],
            email_key=email_key(row["email"]),
            address=row["address"],
            date_of_birth=date.fromisoformat(row["dateOfBirth"]),
            registered_date=date.fromisoformat(row["registeredDate"]),
            # Each gets a number as any patient created without one does.
            medical_record_number=new_record_number(),
        )
        db.session.add(patient)
        db.session.flush()
        # Seeds announce themselves like any new patient, so billing opens
        # their accounts (via the worker) and analytics counts them.
        record_event(patient, CREATED)
        added += 1
    db.session.commit()
    log.info("seeded sample patients", extra={"added": added, "present": len(existing)})
