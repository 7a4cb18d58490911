"""Password hashing (argon2id) and the strength rule for new passwords and
keys: NIST SP 800-63B, a minimum length and a guessability estimate (zxcvbn),
no composition rules."""

import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from pms_common.identity import email_key

MIN_LENGTH = 12
# zxcvbn's 0-4 scale; 3 is "safely unguessable" against an online attack.
MIN_SCORE = 3
# zxcvbn's matching grows steeply with length; later characters only add strength.
ESTIMATE_PREFIX = 100
# zxcvbn keeps the user inputs in a module-level dictionary between calls.
_zxcvbn_lock = threading.Lock()


def estimate(text, user_inputs=()):
    """zxcvbn's estimate (`score`, `guesses_log10`, `feedback`) of the text's first characters."""
    with _zxcvbn_lock:
        return zxcvbn(text[:ESTIMATE_PREFIX], user_inputs=list(user_inputs), max_length=ESTIMATE_PREFIX)


def password_weakness(password, email=None):
    """Why a new password is too weak, or None if it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"Must be at least {MIN_LENGTH} characters long."
    user_inputs = []
    if email:
        key = email_key(email.strip())
        user_inputs = [key, key.partition("@")[0]]
    result = estimate(password, user_inputs)
    if result["score"] >= MIN_SCORE:
        return None
    feedback = result["feedback"]
    warning = feedback.get("warning")
    if any(match.get("dictionary_name") == "user_inputs" for match in result["sequence"]):
        warning = "It contains the email address."
    advice = " ".join(part for part in [warning, *feedback.get("suggestions", ())] if part)
    return f"Too easy to guess. {advice or 'Use a longer passphrase of uncommon words.'}"


class Passwords:
    """One hasher per app. `verify` costs the same whether or not the user
    exists: an unknown user is checked against a dummy hash of the same cost."""

    def __init__(self, time_cost, memory_kib, parallelism):
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password):
        return self.hasher.hash(password)

    def verify(self, stored_hash, password):
        """True if `password` matches; `stored_hash` None means no such user."""
        try:
            self.hasher.verify(stored_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        return stored_hash is not None

    def needs_rehash(self, stored_hash):
        return self.hasher.check_needs_rehash(stored_hash)
