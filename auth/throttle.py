"""Failed-login throttling per account and per client, counted in the
database so every gunicorn worker (and replica) sees the same numbers.

An attempt that is refused with 429 is not counted, so a lock lifts once the
window has passed since the failures that caused it. Concurrent failures may
overshoot the limit by the number of requests in flight; that only locks sooner."""

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from flask import request

from pms_common.identity import email_key
from pms_common.models import utcnow

from .extensions import db
from .models import LoginFailure

log = logging.getLogger(__name__)
MAX_CLIENT_KEY_LENGTH = 255


def client_address():
    """Envoy's view of the client, else the last proxy's, else the socket's.
    (Only the gateway reaches this service, so its headers are trusted.)"""
    address = request.headers.get("X-Envoy-External-Address", "").strip()
    if not address:
        forwarded = request.headers.get("X-Forwarded-For", "")
        address = forwarded.rsplit(",", 1)[-1].strip()
    return (address or request.remote_addr or "unknown")[:MAX_CLIENT_KEY_LENGTH]


def account_key(email):
    return f"account:{email_key(email)}"


def client_key(address):
    return f"client:{address}"


@dataclass(frozen=True)
class ThrottleState:
    retry_after: int  # seconds; 0 means the attempt may go ahead
    failed_keys: frozenset  # keys with recent failures


class LoginThrottle:
    def __init__(self, max_per_account, max_per_client, window_seconds):
        self.limits = {"account": max_per_account, "client": max_per_client}
        self.window = timedelta(seconds=window_seconds)

    def check(self, keys):
        """Failures within the window under `keys`, and how long to wait."""
        now = utcnow()
        rows = db.session.execute(
            sa.select(LoginFailure.key, LoginFailure.failed_at).where(
                LoginFailure.key.in_(keys), LoginFailure.failed_at > now - self.window
            )
        ).all()
        failures = defaultdict(list)
        for key, failed_at in rows:
            failures[key].append(failed_at)
        wait = 0.0
        for key, times in failures.items():
            limit = self.limits[key.split(":", 1)[0]]
            if len(times) >= limit:
                # Allowed again when the limit-th most recent failure leaves the window.
                times.sort(reverse=True)
                unlock_at = times[limit - 1] + self.window
                wait = max(wait, (unlock_at - now).total_seconds())
        return ThrottleState(retry_after=math.ceil(wait) if wait > 0 else 0, failed_keys=frozenset(failures))

    def record_failure(self, keys):
        now = utcnow()
        db.session.add_all(LoginFailure(key=key, failed_at=now) for key in keys)

    def clear(self, key):
        db.session.execute(sa.delete(LoginFailure).where(LoginFailure.key == key))


def keys_or_429(email, action):
    """The throttle keys of this account and client, or a 429 with
    Retry-After while either has failed too often. Returns (keys, state)."""
    from flask import current_app
    from flask_smorest import abort

    keys = [account_key(email), client_key(client_address())]
    state = current_app.extensions["login_throttle"].check(keys)
    if state.retry_after:
        log.info("throttled", extra={"action": action, "email": email, "retry_after": state.retry_after})
        abort(
            429,
            message=f"Too many failed logins; try again in {state.retry_after} seconds.",
            headers={"Retry-After": str(state.retry_after)},
        )
    return keys, state
