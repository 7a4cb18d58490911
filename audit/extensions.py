"""Flask extensions, made once and bound to an app in create_app."""

from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy

from pms_common.web_app import Migrations

db = SQLAlchemy()
# Each service keeps its own version table: one DATABASE_URL may serve them all.
migrate = Migrations(version_table="alembic_version_audit")
api = Api()
