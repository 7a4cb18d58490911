"""`python -m patient`: migrate, seed (dev), serve with gunicorn (and the
worker beside it with BACKGROUND_LOOPS=beside); `python -m patient migrate`:
migrate only."""

from functools import partial

from pms_common.entry import Migrate, run_command
from pms_common.serve import run_web_service
from pms_common.web_app import migrate_web_app

from . import MIGRATIONS_DIR, create_app
from .config import Config
from .seed import seed_patients


def main(argv=None) -> None:
    run_command(
        "patient",
        Config,
        partial(
            run_web_service,
            create_app=create_app,
            migrations_dir=MIGRATIONS_DIR,
            seed=seed_patients,
            background=["patient.worker:WORKER"],
        ),
        {"migrate": Migrate(migrate_web_app(create_app, MIGRATIONS_DIR))},
        argv,
    )


if __name__ == "__main__":
    main()
