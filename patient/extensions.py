from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy

from pms_common.web_app import Migrations

# Objects keep their values after commit: a response is built from what was
# written, without reading the row again (which a concurrent delete may have removed).
db = SQLAlchemy(session_options={"expire_on_commit": False})
# Each service keeps its own version table: one DATABASE_URL may serve them all.
migrate = Migrations(version_table="alembic_version_patient")
api = Api()
