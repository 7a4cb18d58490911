"""The audit API: the trail, read-only, for ADMINs. No route changes or
deletes an entry: other methods are 405."""

from flask.views import MethodView

from pms_common.identity import ADMIN, require_role
from pms_common.pagination import page_of
from pms_common.web import ApiBlueprint

from . import store
from .extensions import db
from .schemas import AuditEntrySchema, AuditQuerySchema, VerdictSchema

blp = ApiBlueprint("audit", __name__, url_prefix="/audit", description="Who saw or changed which record")


def admins_only(view):
    """Documents the answers `require_role(ADMIN)` and the gateway give."""
    view = blp.alt_response(403, description="Only ADMINs read the audit trail")(view)
    return blp.alt_response(401, description="No token, or an invalid, expired or revoked one")(view)


@blp.route("")
class AuditEntries(MethodView):
    @require_role(ADMIN)
    @blp.arguments(AuditQuerySchema(), location="query", as_kwargs=True)
    @blp.response(200, AuditEntrySchema(many=True))
    @blp.paginate(page_size=50, max_page_size=500)
    @admins_only
    def get(self, pagination_parameters, **filters):
        """Audit entries, newest first

        A bare JSON array, one page at a time (`page`, `page_size`; the
        `X-Pagination` header has the totals). Filter by `patientId`, `actor`
        (email), `action`, and `from` / `to` (ISO 8601 times, inclusive).
        """
        return page_of(db.session, store.read_entries_query(**filters), pagination_parameters)


@blp.route("/verify")
class AuditVerify(MethodView):
    @require_role(ADMIN)
    @blp.response(200, VerdictSchema)
    @admins_only
    def get(self):
        """Check the hash chain

        Walks every entry since the archive's anchor: `ok` is true when each
        hashes to its stored hash and links to the one before; else
        `firstBrokenId` names the first entry missing, altered or unlinked.
        """
        return store.verify(db.session.connection()).as_json()
