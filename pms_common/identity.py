"""Who is calling, as every part reads it: the role table, the identity
headers the gateway sets (and strips from clients), the role check each
service makes itself, and the one way an email becomes a comparison key.

The gateway is the first check, not the only one: each service refuses an
operation whose role the identity headers do not carry, so a gateway route
mistake alone never opens a write or the user list.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

ADMIN, USER = "ADMIN", "USER"
# Higher ranks may do everything lower ranks may.
ROLE_RANK = {USER: 1, ADMIN: 2}
ROLES = (ADMIN, USER)
# The role parts give themselves when they call each other directly (patient
# to billing). Tokens never carry it (auth issues only ROLES), so no request
# through the gateway has it, and it meets no USER or ADMIN requirement.
SERVICE = "SERVICE"

USER_HEADER, ROLE_HEADER = "X-User-Email", "X-User-Role"

Handler = TypeVar("Handler", bound=Callable[..., Any])


def role_allows(role: str | None, required: str) -> bool:
    """True when `role` may do what `required` may; an unknown role may do
    nothing, and an unknown requirement is met by nobody."""
    return ROLE_RANK.get(role or "", 0) >= ROLE_RANK.get(required, len(ROLE_RANK) + 1)


def email_key(email: str) -> str:
    """The form emails are compared and stored as keys in: NFKC-normalised and
    case-folded, so look-alikes (full-width letters, ligatures, ß/ss, case) of
    one address are one key."""
    return unicodedata.normalize("NFKC", email).casefold()


def bearer_token(authorization_header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme in any
    case), else None."""
    scheme, _, token = (authorization_header or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def require_role(required: str) -> Callable[[Handler], Handler]:
    """Flask view decorator: 401 without an identity from the gateway, 403
    with one whose role is too low, in the one error shape."""

    def decorate(view: Handler) -> Handler:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            from flask import request
            from flask_smorest import abort

            role = request.headers.get(ROLE_HEADER)
            if not role or not request.headers.get(USER_HEADER):
                abort(
                    401,
                    message="This needs a signed-in user (through the gateway).",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not role_allows(role, required):
                abort(403, message=f"This needs the {required} role.")
            return view(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate
