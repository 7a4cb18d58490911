"""`python -m analytics`: migrate, then serve the API with gunicorn (and the
consumer beside it with BACKGROUND_LOOPS=beside); `python -m analytics
migrate`: migrate only."""

from functools import partial

from pms_common.entry import Migrate, run_command
from pms_common.serve import run_web_service
from pms_common.web_app import migrate_web_app

from . import MIGRATIONS_DIR, create_app
from .config import Config


def main(argv=None) -> None:
    run_command(
        "analytics",
        Config,
        partial(
            run_web_service,
            create_app=create_app,
            migrations_dir=MIGRATIONS_DIR,
            background=["analytics.consumer:CONSUMER"],
        ),
        {"migrate": Migrate(migrate_web_app(create_app, MIGRATIONS_DIR))},
        argv,
    )


if __name__ == "__main__":
    main()
