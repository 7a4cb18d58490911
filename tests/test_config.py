"""Configuration one way: settings are read only by pms_common.config, every
part's address comes from its one table (PARTS), the dev login is written
once, and each part's settings reach what uses them (gunicorn, the logs)."""

import ast
import json
import logging
from pathlib import Path

import pytest

from analytics import create_app as create_analytics_app
from analytics.config import Config as AnalyticsConfig
from auth.config import Config as AuthConfig
from billing.config import Config as BillingConfig
from gateway.ext_authz.config import Config as ExtAuthzConfig
from gateway.render import GatewayConfig
from patient import create_app as create_patient_app
from patient.config import Config as PatientConfig
from pms_common.config import DEV_USER_EMAIL, DEV_USER_PASSWORD, PARTS, ConfigError, port_of, service_address
from pms_common.logs import JsonFormatter, configure_logging
from pms_common.serve import BuiltApp, gunicorn_settings
from stack.config import StackConfig

REPO = Path(__file__).resolve().parents[1]
PRODUCT_CODE = ["pms_common", "patient", "auth", "billing", "analytics", "gateway", "stack"]
THE_READER = REPO / "pms_common" / "config.py"
SERVICE_CONFIGS = [PatientConfig, AuthConfig, AnalyticsConfig, BillingConfig, ExtAuthzConfig]


def product_files():
    for package in PRODUCT_CODE:
        for path in sorted((REPO / package).rglob("*.py")):
            if "protos" not in path.parts and "migrations" not in path.parts:
                yield path


ENVIRONMENT_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def reads_the_environment(tree):
    """Lines that touch os.environ, os.getenv and the like, however imported."""
    for node in ast.walk(tree):
        attribute_of_os = (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in ENVIRONMENT_NAMES
        )
        imported_from_os = (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in ENVIRONMENT_NAMES for alias in node.names)
        )
        if attribute_of_os or imported_from_os:
            yield node.lineno


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    for name in [
        *(address.port_setting for address in PARTS.values()),
        *(address.host_setting for address in PARTS.values() if address.host_setting),
        "PMS_ENV",
        "LOG_LEVEL",
        "WEB_CONCURRENCY",
        "WEB_THREADS",
        "BACKGROUND_LOOPS",
        "DATABASE_URL",
        "DB_HOST",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PMS_DATA_DIR", str(tmp_path / "data"))


def test_only_pms_common_config_reads_the_environment():
    readers = [
        f"{path.relative_to(REPO)}:{line}"
        for path in product_files()
        if path != THE_READER
        for line in reads_the_environment(ast.parse(path.read_text(), str(path)))
    ]
    assert readers == [], "read settings through a config object (pms_common.config):\n" + "\n".join(readers)


def test_the_dev_login_is_written_once():
    copies = [
        str(path.relative_to(REPO))
        for path in product_files()
        if path != THE_READER
        if DEV_USER_EMAIL in path.read_text() or f'"{DEV_USER_PASSWORD}"' in path.read_text()
    ]
    assert copies == [], "import DEV_USER_EMAIL and DEV_USER_PASSWORD from pms_common.config: " + ", ".join(
        copies
    )


def test_every_part_listens_where_the_table_says(clean_environment):
    listening = {config.SERVICE: config().PORT for config in SERVICE_CONFIGS}
    table = {prefix.lower(): address.default_port for prefix, address in PARTS.items()}
    assert listening == {service: table[service] for service in listening}
    expected = {address.port_setting: address.default_port for address in PARTS.values()}
    assert StackConfig().ports == expected
    assert GatewayConfig().ports == expected
    reached = {"billing": PatientConfig().BILLING_ADDRESS, "auth": ExtAuthzConfig().AUTH_URL}
    assert reached == {
        "billing": f"127.0.0.1:{table['billing']}",
        "auth": f"http://127.0.0.1:{table['auth']}",
    }


def test_one_setting_moves_a_part_for_everyone_who_reaches_it(clean_environment, monkeypatch):
    monkeypatch.setenv("BILLING_PORT", "19001")
    monkeypatch.setenv("BILLING_HOST", "billing")
    assert BillingConfig().PORT == 19001
    assert PatientConfig().BILLING_ADDRESS == "billing:19001" == service_address("BILLING")
    assert StackConfig().ports["BILLING_PORT"] == 19001
    values = GatewayConfig().template_values(Path("/out"))
    assert (values["BILLING_HOST"], values["BILLING_PORT"]) == ("billing", "19001")


def test_the_gateway_and_the_launcher_read_a_given_mapping_too():
    environ = {"AUTH_HOST": "auth", "AUTH_PORT": "14005", "BIND_HOST": "0.0.0.0", "LOG_LEVEL": "warning"}
    values = GatewayConfig(environ).template_values(Path("/out"))
    assert (values["AUTH_HOST"], values["AUTH_PORT"], values["GATEWAY_BIND"]) == ("auth", "14005", "0.0.0.0")
    assert (values["ACCESS_LOG_LEVEL"], values["ACCESS_LOG_MIN_STATUS"]) == ("ERROR", "500")
    assert StackConfig({"AUTH_PORT": "14005"}).ports["AUTH_PORT"] == 14005


@pytest.mark.parametrize("raw", ["abc", "0", "65536", "-1", "4000.5"])
def test_a_port_is_a_number_from_1_to_65535(raw):
    with pytest.raises(ConfigError, match=f"PATIENT_PORT must be a port number .*{raw!r}"):
        port_of("PATIENT", {"PATIENT_PORT": raw})


def test_a_part_nobody_connects_to_has_no_host_setting():
    assert PARTS["GATEWAY"].host_setting is None and PARTS["BROKER"].host_setting is None
    with pytest.raises(ValueError):
        service_address("GATEWAY")


def test_the_launcher_refuses_two_parts_on_one_port():
    with pytest.raises(
        ConfigError,
        match="PATIENT_PORT and GATEWAY_PORT are both 4004|GATEWAY_PORT and PATIENT_PORT are both 4004",
    ):
        StackConfig({"PATIENT_PORT": "4004"}).check()


def test_the_app_factory_checks_the_config(clean_environment, tmp_path):
    with pytest.raises(ConfigError, match="OUTBOX_BATCH_SIZE"):
        create_patient_app(PatientConfig(DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}", OUTBOX_BATCH_SIZE=0))
    with pytest.raises(ConfigError, match="WEB_THREADS"):
        create_analytics_app(AnalyticsConfig(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}", WEB_THREADS=0))
    with pytest.raises(ConfigError, match="BACKGROUND_LOOPS must be 'apart' or 'beside', got 'inside'"):
        create_analytics_app(
            AnalyticsConfig(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}", BACKGROUND_LOOPS="inside")
        )


def test_gunicorn_takes_pool_bind_and_logging_from_the_config(clean_environment, monkeypatch, tmp_path):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("WEB_THREADS", "5")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    config = AnalyticsConfig(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}", PORT=14002)
    server = BuiltApp(create_analytics_app(config), config, gunicorn_settings(config))
    assert (server.cfg.workers, server.cfg.threads, server.cfg.bind) == (3, 5, ["127.0.0.1:14002"])
    assert server.cfg.loglevel == "warning" and server.cfg.worker_class_str == "gthread"
    formatter = server.cfg.logconfig_dict["formatters"]["json"]
    assert formatter["service"] == "analytics"
    assert server.cfg.post_fork is not None and server.cfg.http_parser == "fast"


@pytest.fixture
def restored_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_lines_name_the_service_they_are_given(capsys, restored_logging):
    record = logging.LogRecord("patient.resources", logging.INFO, __file__, 1, "patient created", (), None)
    assert json.loads(JsonFormatter("patient").format(record))["service"] == "patient"
    configure_logging("analytics-consumer", "INFO")
    logging.getLogger("analytics.consumer").info("consuming", extra={"topic": "patient"})
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (line["service"], line["logger"], line["message"], line["topic"]) == (
        "analytics-consumer",
        "analytics.consumer",
        "consuming",
        "patient",
    )


def test_the_access_line_is_structured(clean_environment, tmp_path, caplog):
    app = create_analytics_app(AnalyticsConfig(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}"))
    with caplog.at_level(logging.INFO, logger="pms_common.web.access"):
        assert app.test_client().get("/openapi.json").status_code == 200
    (record,) = [record for record in caplog.records if record.name == "pms_common.web.access"]
    assert record.getMessage() == "request"
    assert (record.method, record.path, record.status) == ("GET", "/openapi.json", 200)
