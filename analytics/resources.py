"""The analytics API: figures the consumer keeps, read-only."""
from flask.views import MethodView
from flask_smorest import Blueprint

from . import store
from .extensions import db
from .schemas import MonthlyRegistrationSchema, RegistrationQuerySchema, SummarySchema

blp = Blueprint("analytics", __name__, url_prefix="/analytics",
                description="Figures counted from patient events")


@blp.route("/summary")
class SummaryResource(MethodView):
    @blp.response(200, SummarySchema)
    def get(self):
        """Patient totals

        Patients created, updated and deleted, active patients, events
        counted and the time of the latest event counted.
        """
        return store.read_summary(db.session)


@blp.route("/registrations")
class RegistrationsResource(MethodView):
    @blp.arguments(RegistrationQuerySchema(), location="query", as_kwargs=True)
    @blp.response(200, MonthlyRegistrationSchema(many=True))
    def get(self, first_month=None, last_month=None):
        """Registrations per month

        Patients registered in each month (by their registered date) and not
        deleted since, oldest month first; months with none are left out.
        """
        return store.read_registrations(db.session, first_month, last_month)
