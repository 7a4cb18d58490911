"""`python -m auth`: migrate, seed, serve with gunicorn."""
from pms_common.serve import run_web_service

from . import MIGRATIONS_DIR, create_app
from .config import Config
from .seed import seed_users

if __name__ == "__main__":
    run_web_service(Config(), create_app, MIGRATIONS_DIR, seed=seed_users)
