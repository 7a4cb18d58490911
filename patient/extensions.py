from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy

# Objects keep their values after commit: a response is built from what was
# written, without reading the row again (which a concurrent delete may have removed).
db = SQLAlchemy(session_options={"expire_on_commit": False})
# Each service keeps its own version table: one DATABASE_URL may serve them all.
migrate = Migrate(version_table="alembic_version_patient", compare_type=True)
api = Api()
