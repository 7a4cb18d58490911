"""Deleting rows nobody needs any more: revocations of tokens that have
expired anyway, failed logins older than the throttling window."""

import threading
import time
from datetime import timedelta

import sqlalchemy as sa

from pms_common.models import utcnow

from .extensions import db
from .models import LoginFailure, RevokedToken


class Housekeeping:
    """Deletes expired revocations and old failures, at most once per
    interval per process, piggybacking on login and logout requests."""

    def __init__(self, window_seconds, interval_seconds=60.0):
        self.window = timedelta(seconds=window_seconds)
        self.interval_seconds = interval_seconds
        self._next_run = 0.0
        self._lock = threading.Lock()

    def run_if_due(self):
        with self._lock:
            if time.monotonic() < self._next_run:
                return False
            self._next_run = time.monotonic() + self.interval_seconds
        now = utcnow()
        db.session.execute(sa.delete(RevokedToken).where(RevokedToken.expires_at < now))
        db.session.execute(sa.delete(LoginFailure).where(LoginFailure.failed_at < now - self.window))
        db.session.commit()
        return True
