"""Flask extensions, made once and bound to an app in create_app."""

from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
# Each service keeps its own version table: one DATABASE_URL may serve them all.
migrate = Migrate(version_table="alembic_version_audit", compare_type=True)
api = Api()
