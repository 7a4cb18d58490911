"""`python -m auth`: migrate, seed, serve with gunicorn; `python -m auth migrate`: migrate
only; `python -m auth users …`: user accounts from the command line (auth.cli)."""

from functools import partial

from pms_common.entry import Migrate, run_command
from pms_common.serve import run_web_service
from pms_common.web_app import migrate_web_app

from . import MIGRATIONS_DIR, create_app
from .cli import Users
from .config import Config
from .seed import seed_users


def main(argv=None) -> None:
    run_command(
        "auth",
        Config,
        partial(run_web_service, create_app=create_app, migrations_dir=MIGRATIONS_DIR, seed=seed_users),
        {"migrate": Migrate(migrate_web_app(create_app, MIGRATIONS_DIR)), "users": Users()},
        argv,
    )


if __name__ == "__main__":
    main()
