"""The gateway's settings as rendered into its config."""

import json
import subprocess

import pytest
import requests
import yaml

from gateway.render import DEV_CORS_ORIGINS, GatewayConfig, render
from pms_common.config import ConfigError
from stack.config import free_ports
from stack.parts import BIN
from tests.support import running_gateway, wait_for


def cors_policy(environ):
    return GatewayConfig(environ).cors_policy().get("envoy.filters.http.cors")


def test_dev_allows_the_usual_local_origins_and_production_none():
    assert [m["exact"] for m in cors_policy({})["allow_origin_string_match"]] == list(DEV_CORS_ORIGINS)
    assert cors_policy({"PMS_ENV": "production"}) is None


def test_production_allows_exactly_the_origins_it_is_given():
    policy = cors_policy(
        {
            "PMS_ENV": "production",
            "CORS_ALLOWED_ORIGINS": "https://clinic.example, https://admin.clinic.example:8443",
        }
    )
    assert [m["exact"] for m in policy["allow_origin_string_match"]] == [
        "https://clinic.example",
        "https://admin.clinic.example:8443",
    ]
    assert policy["allow_credentials"] is False


@pytest.mark.parametrize("origin", ["*", "https://clinic.example/app", "clinic.example", "https://*.example"])
def test_anything_but_an_exact_origin_is_refused(origin):
    with pytest.raises(ConfigError, match="CORS_ALLOWED_ORIGINS"):
        GatewayConfig({"CORS_ALLOWED_ORIGINS": origin}).check()


def test_the_rendered_virtual_host_carries_the_policy(tmp_path):
    config = yaml.safe_load(
        render(
            tmp_path / "envoy.yaml",
            {"PMS_ENV": "production", "CORS_ALLOWED_ORIGINS": "https://clinic.example"},
        ).read_text()
    )
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    host = manager["route_config"]["virtual_hosts"][0]
    assert json.dumps(host["typed_per_filter_config"]).count("https://clinic.example") == 1
    assert manager["http_filters"][1]["name"] == "envoy.filters.http.cors"


# --------------------------------------------------------------- HTTPS and stats


def self_signed_certificate(folder):
    """A certificate for localhost and 127.0.0.1 and its key, as PEM files."""
    from datetime import UTC, datetime, timedelta
    from ipaddress import ip_address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "gateway.crt", folder / "gateway.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def public_chain(config):
    (listener,) = [item for item in config["static_resources"]["listeners"] if item["name"] == "gateway"]
    (chain,) = listener["filter_chains"]
    return chain


@pytest.mark.parametrize("only", ["GATEWAY_TLS_CERT", "GATEWAY_TLS_KEY"])
def test_a_certificate_without_its_key_or_a_key_without_its_certificate_is_refused(only):
    with pytest.raises(ConfigError, match="GATEWAY_TLS_CERT and GATEWAY_TLS_KEY"):
        GatewayConfig({only: "/etc/envoy/tls/file.pem"}).check()


def test_the_listener_serves_tls_only_when_given_a_certificate(tmp_path):
    plain = yaml.safe_load(render(tmp_path / "plain" / "envoy.yaml", {}).read_text())
    assert "transport_socket" not in public_chain(plain)
    assert [item["name"] for item in plain["static_resources"]["listeners"]] == ["gateway"]
    assert "envoy_admin" not in [cluster["name"] for cluster in plain["static_resources"]["clusters"]]

    environ = {"GATEWAY_TLS_CERT": "/certs/gateway.crt", "GATEWAY_TLS_KEY": "/certs/gateway.key"}
    secure = yaml.safe_load(render(tmp_path / "tls" / "envoy.yaml", environ).read_text())
    socket = public_chain(secure)["transport_socket"]
    context = socket["typed_config"]["common_tls_context"]
    assert context["tls_certificates"] == [
        {
            "certificate_chain": {"filename": "/certs/gateway.crt"},
            "private_key": {"filename": "/certs/gateway.key"},
        }
    ]
    assert context["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2"


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_a_stats_port_out_of_range_is_refused(port):
    with pytest.raises(ConfigError, match="ENVOY_STATS_PORT"):
        GatewayConfig({"ENVOY_STATS_PORT": port}).check()


@pytest.fixture
def secure_gateway(tmp_path):
    """Real Envoy with a rendered config: HTTPS on the gateway's port with a
    fresh self-signed certificate, and the stats listener; no services behind."""
    cert_file, key_file = self_signed_certificate(tmp_path)
    ports = free_ports(["GATEWAY_PORT", "ENVOY_ADMIN_PORT", "ENVOY_STATS_PORT"])
    environ = {
        "GATEWAY_TLS_CERT": str(cert_file),
        "GATEWAY_TLS_KEY": str(key_file),
        **{key: str(value) for key, value in ports.items()},
    }
    with running_gateway(tmp_path / "envoy" / "envoy.yaml", environ):
        yield ports, cert_file


def test_the_gateway_serves_https_with_the_configured_certificate_and_refuses_plain_http(secure_gateway):
    ports, cert_file = secure_gateway
    url = f"https://localhost:{ports['GATEWAY_PORT']}"
    # Verified against the certificate it was given: the name and the chain match.
    docs = requests.get(f"{url}/docs/", timeout=5, verify=str(cert_file))
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/docs/", timeout=5)  # not trusted by the system's CAs
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{ports['GATEWAY_PORT']}/docs/", timeout=5)


def test_the_stats_listener_serves_prometheus_stats_and_nothing_else_of_the_admin(secure_gateway):
    from tests.deploy.compose_helpers import ENVOY_METRICS

    ports, cert_file = secure_gateway
    assert requests.get(
        f"https://localhost:{ports['GATEWAY_PORT']}/docs/", timeout=5, verify=str(cert_file)
    ).ok
    stats = f"http://127.0.0.1:{ports['ENVOY_STATS_PORT']}"

    def scraped():
        text = requests.get(f"{stats}/stats/prometheus", timeout=5).text
        return (
            'envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="gateway"}'
            in text
            and text
        )

    text = wait_for(scraped, timeout=15, message="the gateway's request in Envoy's stats")
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }
    # What the Grafana dashboard reads from Envoy.
    assert names >= ENVOY_METRICS
    for path in ("/ready", "/stats", "/config_dump", "/quitquitquit", "/"):
        assert requests.get(f"{stats}{path}", timeout=5).status_code == 404, path
    assert requests.post(f"{stats}/stats/prometheus", timeout=5).status_code == 404
    # The public listener does not serve them either.
    public = requests.get(
        f"https://localhost:{ports['GATEWAY_PORT']}/stats/prometheus", timeout=5, verify=str(cert_file)
    )
    assert public.status_code in (401, 404)


def cluster_addresses(config, name):
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return [
        (
            endpoint["endpoint"]["address"]["socket_address"]["address"],
            endpoint["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for group in cluster["load_assignment"]["endpoints"]
        for endpoint in group["lb_endpoints"]
    ]


def test_each_cluster_lists_every_copy_of_its_part(tmp_path):
    config = yaml.safe_load(
        render(
            tmp_path / "envoy.yaml",
            {
                "PATIENT_ADDRESSES": "127.0.0.1:4000, 10.0.0.7:4010",
                "BILLING_ADDRESSES": "billing-a:9001,billing-b:9001",
                "ANALYTICS_HOST": "analytics.internal",
                "ANALYTICS_PORT": "4102",
            },
        ).read_text()
    )
    assert cluster_addresses(config, "patient") == [("127.0.0.1", 4000), ("10.0.0.7", 4010)]
    assert cluster_addresses(config, "billing") == [("billing-a", 9001), ("billing-b", 9001)]
    # Without <PREFIX>_ADDRESSES: the one copy at <PREFIX>_HOST and <PREFIX>_PORT, as before.
    assert cluster_addresses(config, "analytics") == [("analytics.internal", 4102)]
    assert cluster_addresses(config, "auth") == [("127.0.0.1", 4005)]
    # /health answers 200 while each cluster has a healthy copy, not only when all are.
    health = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (health_filter,) = [f for f in health["http_filters"] if f["name"] == "envoy.filters.http.health_check"]
    assert health_filter["typed_config"]["cluster_min_healthy_percentages"]["patient"] == {"value": 1}


@pytest.mark.parametrize("addresses", ["127.0.0.1", "127.0.0.1:", ":4000", "127.0.0.1:4000,", "host:99999"])
def test_a_copy_without_a_host_and_port_is_refused(addresses):
    with pytest.raises(ConfigError, match="PATIENT_ADDRESSES"):
        GatewayConfig({"PATIENT_ADDRESSES": addresses})


# --------------------------------------------------------------- the audit trail switch


def audit_access_logs(rendered):
    config = yaml.safe_load(rendered.read_text())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [log for log in manager["access_log"] if log["name"] == "envoy.access_loggers.file"]


def test_the_audit_log_is_written_by_default_and_not_with_the_trail_off(tmp_path):
    audit_log = tmp_path / "audit" / "gateway-audit.jsonl"
    on = render(tmp_path / "on" / "envoy.yaml", {"AUDIT_LOG_PATH": str(audit_log)})
    [entry] = audit_access_logs(on)
    assert entry["typed_config"]["path"] == str(audit_log)
    assert entry["typed_config"]["log_format"]["json_format"]["route"] == "%ROUTE_NAME%"
    off = render(tmp_path / "off" / "envoy.yaml", {"AUDIT_TRAIL": "off"})
    assert audit_access_logs(off) == []
    for rendered in (on, off):
        subprocess.run([str(BIN / "envoy"), "--mode", "validate", "-c", str(rendered)], check=True)


def test_production_refuses_to_run_without_the_audit_trail():
    with pytest.raises(ConfigError, match="AUDIT_TRAIL"):
        GatewayConfig({"PMS_ENV": "production", "AUDIT_TRAIL": "off"}).check()


def test_the_launcher_runs_no_audit_part_with_the_trail_off(tmp_path):
    from stack.config import StackConfig
    from stack.parts import AUDIT_PARTS, build_parts

    ports = StackConfig({}).ports
    names_on = {part.name for part in build_parts(ports, tmp_path / "envoy.yaml", tmp_path)}
    names_off = {
        part.name for part in build_parts(ports, tmp_path / "envoy.yaml", tmp_path, audit_trail=False)
    }
    assert set(AUDIT_PARTS) <= names_on
    assert names_on - names_off == set(AUDIT_PARTS)
