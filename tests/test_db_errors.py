"""What may be said about a database error: its class and SQLSTATE (or
SQLite's error name), never its text, which quotes row values; and the
shared Flask handlers answer it in the one error shape."""

import logging

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from pms_common.db import engine_options
from pms_common.db_errors import describe_error, error_fields
from pms_common.logs import JsonFormatter
from pms_common.web import database_outage_is_503, init_request_context

ROW = {"name": "Quentin Privé", "email": "quentin.prive@example.com"}


@pytest.fixture
def sqlite_engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'errors.db'}"
    engine = sa.create_engine(url, **engine_options(url))
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE people (name TEXT, email TEXT UNIQUE)"))
        connection.execute(sa.text("INSERT INTO people VALUES (:name, :email)"), ROW)
    yield engine
    engine.dispose()


def test_a_refused_insert_is_described_without_its_values(sqlite_engine):
    with pytest.raises(sa.exc.IntegrityError) as caught, sqlite_engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO people VALUES (:name, :email)"), ROW)
    assert "hidden" in str(caught.value) and ROW["name"] not in str(caught.value)  # hide_parameters
    assert error_fields(caught.value) == {
        "error": "IntegrityError",
        "sqlite_error": "SQLITE_CONSTRAINT_UNIQUE",
    }
    assert describe_error(caught.value) == "IntegrityError (SQLITE_CONSTRAINT_UNIQUE)"


def test_other_errors_keep_their_text():
    assert error_fields(RuntimeError("broker down")) == {"error": "broker down"}
    assert describe_error("broker down") == "broker down"


@pytest.mark.parametrize(
    "error_class, status",
    [(sa.exc.DataError, 422), (sa.exc.OperationalError, 503), (sa.exc.IntegrityError, 500)],
)
def test_the_shared_handlers_answer_in_the_error_shape_and_log_no_values(error_class, status, caplog):
    app = Flask(__name__)
    db = SQLAlchemy()
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    db.init_app(app)
    init_request_context(app)
    database_outage_is_503(app, db)
    driver_error = Exception(f"Failing row contains ({ROW['name']}, {ROW['email']}).")

    @app.post("/people")
    def add():
        raise error_class("INSERT INTO people VALUES (?, ?)", tuple(ROW.values()), driver_error)

    caplog.set_level(logging.DEBUG)
    response = app.test_client().post("/people")
    assert response.status_code == status and response.get_json()["code"] == status
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "Exception" in logged  # the driver error's class
    assert ROW["name"] not in logged and ROW["email"] not in logged
    assert ROW["name"] not in response.get_data(as_text=True)
