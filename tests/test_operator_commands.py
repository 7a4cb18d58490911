"""The operator's commands, run as an operator runs them (`python -m <part> …`
in a shell, on the part's settings): `migrate` for every part with a
database, and `python -m auth users …` for accounts."""

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from tests.support import fresh_database

STRONG = "violet meadow anchor 4417"
PARTS_WITH_A_DATABASE = ("patient", "auth", "analytics", "billing")
TABLES = {
    "patient": "patients",
    "auth": "users",
    "analytics": "analytics_processed_events",
    "billing": "billing_accounts",
}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "postgres" and not os.environ.get("PMS_TEST_POSTGRES_URL"):
        pytest.skip("PostgreSQL tests run when PMS_TEST_POSTGRES_URL is set (CI sets it)")
    with fresh_database(request.param, tmp_path, "ops") as url:
        yield url


def run(part, *arguments, database_url, data_dir, stdin=""):
    env = {key: value for key, value in os.environ.items() if not key.endswith("DATABASE_URL")}
    env.update({f"{part.upper()}_DATABASE_URL": database_url, "PMS_DATA_DIR": str(data_dir)})
    return subprocess.run(
        [sys.executable, "-m", part, *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("part", PARTS_WITH_A_DATABASE)
def test_migrate_applies_a_part_s_migrations_and_exits(part, database_url, tmp_path):
    done = run(part, "migrate", database_url=database_url, data_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{part}: the database is migrated" in done.stdout
    engine = sa.create_engine(database_url)
    try:
        assert TABLES[part] in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_an_unknown_command_is_a_usage_error(tmp_path):
    done = run("patient", "frobnicate", database_url=f"sqlite:///{tmp_path}/p.db", data_dir=tmp_path)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_the_operator_manages_accounts_from_the_command_line(database_url, tmp_path):
    def users(*arguments, stdin=""):
        return run("auth", "users", *arguments, database_url=database_url, data_dir=tmp_path, stdin=stdin)

    weak = users("create", "ops@example.com", "--role", "ADMIN", stdin="password1234\n")
    assert weak.returncode == 1 and weak.stderr.startswith("auth: ") and "created" not in weak.stdout
    assert users("create", "ops@example.com", "--role", "ADMIN", stdin=STRONG + "\n").returncode == 0
    assert users("create", "clerk@example.com", stdin=STRONG + "!\n").returncode == 0
    duplicate = users("create", "OPS@example.com", stdin=STRONG + "?\n")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr

    listed = users("list").stdout
    assert "ops@example.com\tADMIN\tenabled" in listed and "clerk@example.com\tUSER\tenabled" in listed

    last_admin = users("set-role", "ops@example.com", "USER")
    assert last_admin.returncode == 1 and "no enabled ADMIN" in last_admin.stderr
    assert users("set-role", "clerk@example.com", "ADMIN").returncode == 0
    assert users("disable", "ops@example.com").returncode == 0
    assert users("reset-password", "clerk@example.com", stdin="another quiet harbour 8812\n").returncode == 0
    assert users("disable", "nobody@example.com").returncode == 1

    listed = users("list").stdout
    assert "ops@example.com\tADMIN\tdisabled" in listed and "clerk@example.com\tADMIN\tenabled" in listed
    assert logs_in(database_url, tmp_path, "clerk@example.com", "another quiet harbour 8812")
    assert not logs_in(database_url, tmp_path, "clerk@example.com", STRONG + "!")
    assert not logs_in(database_url, tmp_path, "ops@example.com", STRONG)


def logs_in(database_url, data_dir, email, password):
    from auth import create_app
    from auth.config import Config

    app = create_app(Config(DATABASE_URL=database_url, DATA_DIR=str(data_dir), ENV="dev"))
    try:
        response = app.test_client().post("/login", json={"email": email, "password": password})
        return response.status_code == 200
    finally:
        with app.app_context():
            from auth.extensions import db

            db.engine.dispose()
