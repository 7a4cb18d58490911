"""Password hashing (argon2id) and the strength rule for new passwords."""
import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 12


def character_class(char):
    for name, members in (("lower", string.ascii_lowercase), ("upper", string.ascii_uppercase),
                          ("digit", string.digits)):
        if char in members:
            return name
    return "other"


def password_weakness(password, email):
    """Why a new password is too weak, or None if it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"Must be at least {MIN_LENGTH} characters long."
    classes_used = {character_class(char) for char in password}
    if len(classes_used) < 2:
        return "Must mix at least two kinds of characters (lower case, upper case, digits, others)."
    if email and email.strip().lower() in password.lower():
        return "Must not contain the email address."
    return None


class Passwords:
    """One hasher per app. `verify` costs the same whether or not the user
    exists: an unknown user is checked against a dummy hash of the same cost."""

    def __init__(self, time_cost, memory_kib, parallelism):
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                     parallelism=parallelism)
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
