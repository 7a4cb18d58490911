"""What a log line or a readiness answer may say about an error: a database
error by its class and SQLSTATE (SQLite's error name), never its text, which
drivers fill with row values (`Key (email)=(...) already exists`).

It imports no database library, so a part without a database (ext_authz,
through the gRPC frame) can describe errors the same way."""

# Where database errors are defined: SQLAlchemy's wrappers and the drivers'.
DATABASE_ERROR_PACKAGES = frozenset({"sqlalchemy", "psycopg", "sqlite3"})


def _is_database_error(error: object) -> bool:
    return isinstance(error, BaseException) and any(
        cls.__module__.partition(".")[0] in DATABASE_ERROR_PACKAGES for cls in type(error).__mro__
    )


def db_error_fields(error: object) -> dict[str, str] | None:
    """The log fields of a database error: its class and SQLSTATE (SQLite's
    error name), never its text. None when `error` is not a database error."""
    cause = getattr(error, "orig", None) or error
    if not _is_database_error(error) and not _is_database_error(cause):
        return None
    fields = {"error": type(cause).__name__}
    sqlstate, sqlite_error = getattr(cause, "sqlstate", None), getattr(cause, "sqlite_errorname", None)
    if sqlstate:
        fields["sqlstate"] = sqlstate
    elif sqlite_error:
        fields["sqlite_error"] = sqlite_error
    return fields


def error_fields(error: object) -> dict[str, str]:
    """The log fields of any error: a database error's class and SQLSTATE,
    anything else's text."""
    return db_error_fields(error) or {"error": str(error)}


def describe_error(error: object) -> str:
    """One line about an error that may be logged or shown: a database error
    as its class and SQLSTATE only, anything else as it prints."""
    fields = db_error_fields(error)
    if fields is None:
        return str(error)
    if "sqlstate" in fields:
        return f"{fields['error']} (SQLSTATE {fields['sqlstate']})"
    return f"{fields['error']} ({fields['sqlite_error']})" if "sqlite_error" in fields else fields["error"]
