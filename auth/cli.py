"""`python -m auth users …`: user accounts from the command line, for the
operator (the first admin, a lost admin password, a leaver). The same rules
as the API (auth.accounts): strong passwords, emails as keys, the last
enabled ADMIN kept; a password is read from standard input, never from the
command line (where `ps` and shell history would keep it)."""

import argparse
import getpass
import sys

import sqlalchemy as sa

from pms_common.identity import ROLES

from . import MIGRATIONS_DIR, create_app
from .accounts import AccountRefused, change_user, create_user, find_user, set_password
from .extensions import db
from .models import User

OPERATOR = "operator (command line)"
REFUSED = 1  # the exit code of a change the rules refuse


def read_password(prompt="New password: "):
    """From the terminal without echo, or the first line of piped input."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\n")


class Users:
    help = "list, create and change user accounts (create, list, set-role, disable, enable, reset-password)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="action")
        actions.add_parser("list", help="every user: email, role, disabled, created")
        create = actions.add_parser("create", help="a new user; the password is read from standard input")
        create.add_argument("email")
        create.add_argument("--role", choices=ROLES, default="USER")
        set_role = actions.add_parser("set-role", help="change a user's role (their tokens stop working)")
        set_role.add_argument("user", help="email or id")
        set_role.add_argument("role", choices=ROLES)
        for name, text in (("disable", "refuse a user's logins and tokens"), ("enable", "allow them again")):
            actions.add_parser(name, help=text).add_argument("user", help="email or id")
        reset = actions.add_parser(
            "reset-password", help="a new password, read from standard input (their tokens stop working)"
        )
        reset.add_argument("user", help="email or id")

    def __call__(self, config, arguments):
        app = create_app(config)
        with app.app_context():
            from pms_common.serve import migrate_and_seed

            migrate_and_seed(app, MIGRATIONS_DIR)
            try:
                return self.run(arguments)
            except AccountRefused as refused:
                print(f"auth: {refused.message}", file=sys.stderr)
                return REFUSED

    def run(self, arguments):
        action = arguments.action
        if action == "list":
            for user in db.session.scalars(sa.select(User).order_by(User.created_at, User.email)):
                state = "disabled" if user.disabled else "enabled"
                print(f"{user.email}\t{user.role}\t{state}\t{user.created_at.isoformat()}\t{user.id}")
            return 0
        if action == "create":
            user = create_user(arguments.email, arguments.role, read_password(), by=OPERATOR)
            print(f"created {user.email} ({user.role}), id {user.id}")
            return 0
        user = find_user(arguments.user)
        if action == "reset-password":
            set_password(user, read_password(), by=OPERATOR)
            print(f"new password set for {user.email}; their tokens no longer work")
            return 0
        changes = {
            "set-role": {"role": getattr(arguments, "role", None)},
            "disable": {"disabled": True},
            "enable": {"disabled": False},
        }[action]
        user = change_user(user.id, changes, by=OPERATOR)
        print(f"{user.email}: role {user.role}, {'disabled' if user.disabled else 'enabled'}")
        return 0
