"""Auth's HTTP resources, one blueprint a module: tokens (login, validate,
logout), the caller's own password, and user accounts."""

from . import login, password, users

BLUEPRINTS = (login.blp, password.blp, users.blp)
