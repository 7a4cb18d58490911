"""`python -m audit`: migrate, then serve the API with gunicorn (and the
consumer and the gateway log's collector beside it, in one process, with
BACKGROUND_LOOPS=beside);
`python -m audit migrate`: migrate only; `python -m audit archive --before
TIME --out FILE`: export and remove entries past their retention."""

from functools import partial

from pms_common.entry import Migrate, run_command
from pms_common.serve import run_web_service
from pms_common.web_app import migrate_web_app

from . import MIGRATIONS_DIR, create_app
from .archive import Archive
from .config import Config
from .extensions import db


def archive_engine(config):
    app = create_app(config)
    with app.app_context():
        return db.engine


def main(argv=None) -> None:
    run_command(
        "audit",
        Config,
        partial(
            run_web_service,
            create_app=create_app,
            migrations_dir=MIGRATIONS_DIR,
            # One process for both loops: each alone would cost its own memory.
            background=[("audit.consumer:CONSUMER", "audit.collector:COLLECTOR")],
        ),
        {"migrate": Migrate(migrate_web_app(create_app, MIGRATIONS_DIR)), "archive": Archive(archive_engine)},
        argv,
    )


if __name__ == "__main__":
    main()
