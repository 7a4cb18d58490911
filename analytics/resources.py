"""The analytics API: figures the consumer keeps, read-only."""

from flask.views import MethodView

from pms_common.identity import USER, require_role
from pms_common.web import ApiBlueprint

from . import store
from .extensions import db
from .schemas import MonthlyRegistrationSchema, RegistrationQuerySchema, SummarySchema

blp = ApiBlueprint(
    "analytics", __name__, url_prefix="/analytics", description="Figures counted from patient events"
)


def signed_in(view):
    """Documents the answers `require_role(USER)` and the gateway give."""
    view = blp.alt_response(403, description="The caller's role may not read figures")(view)
    return blp.alt_response(401, description="No token, or an invalid, expired or revoked one")(view)


@blp.route("/summary")
class SummaryResource(MethodView):
    @require_role(USER)
    @blp.response(200, SummarySchema)
    @signed_in
    def get(self):
        """Patient totals

        Patients created, updated and deleted, active patients, events
        counted and the time of the latest event counted.
        """
        return store.read_summary(db.session)


@blp.route("/registrations")
class RegistrationsResource(MethodView):
    @require_role(USER)
    @blp.arguments(RegistrationQuerySchema(), location="query", as_kwargs=True)
    @blp.response(200, MonthlyRegistrationSchema(many=True))
    @signed_in
    def get(self, first_month=None, last_month=None):
        """Registrations per month

        Patients registered in each month (by their registered date) and not
        deleted since, oldest month first; months with none are left out.
        """
        return store.read_registrations(db.session, first_month, last_month)
