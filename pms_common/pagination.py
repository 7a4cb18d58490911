"""One page of a query, the way every list endpoint pages (flask-smorest's
pagination parameters and X-Pagination header). A part's list view is
`@blp.paginate()` and `return page_of(db.session, query, pagination_parameters)`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from flask_smorest.pagination import PaginationParameters
from sqlalchemy.orm import Session, scoped_session


def page_of(
    session: Session | scoped_session[Any], query: sa.Select[Any], pagination_parameters: PaginationParameters
) -> Sequence[Any]:
    """Counts the matching rows for X-Pagination and returns the requested page.

    A page past the end is empty without running the page query, which also
    keeps an absurd page number (an OFFSET no database takes) out of SQL.
    """
    total = session.scalar(sa.select(sa.func.count()).select_from(query.order_by(None).subquery()))
    pagination_parameters.item_count = total
    if pagination_parameters.first_item >= total:
        return []
    return session.scalars(
        query.offset(pagination_parameters.first_item).limit(pagination_parameters.page_size)
    ).all()
