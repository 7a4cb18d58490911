"""`python -m analytics`: migrate, then serve the API with gunicorn."""
from pms_common.serve import run_web_service

from . import MIGRATIONS_DIR, create_app
from .config import Config


def main():
    run_web_service(Config(), create_app, MIGRATIONS_DIR)


if __name__ == "__main__":
    main()
