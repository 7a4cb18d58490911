"""Envoy's OpenTelemetry tracer, as the gateway's settings render it: on with
OTEL_EXPORTER_OTLP_ENDPOINT (sampling as the services' OTEL_TRACES_SAMPLER
says), absent without it; the config Envoy accepts either way."""

import subprocess

import pytest
import yaml

from gateway.render import GatewayConfig, render
from pms_common.config import ConfigError
from stack.parts import BIN

TRACED = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4317",
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.1",
}


def rendered(tmp_path, environ):
    path = render(tmp_path / "envoy.yaml", environ)
    validation = subprocess.run(
        [str(BIN / "envoy"), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert validation.returncode == 0, validation.stdout + validation.stderr
    config = yaml.safe_load(path.read_text())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    return manager, clusters


def test_with_an_otlp_endpoint_envoy_traces_to_it_at_the_services_ratio(tmp_path):
    manager, clusters = rendered(tmp_path, TRACED)
    provider = manager["tracing"]["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "opentelemetry_collector"
    assert manager["tracing"]["random_sampling"]["value"] == pytest.approx(10.0)
    endpoint = clusters["opentelemetry_collector"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "collector.example",
        "port_value": 4317,
    }


def test_without_an_endpoint_there_is_no_tracer(tmp_path):
    manager, clusters = rendered(tmp_path, {})
    assert "tracing" not in manager
    assert "opentelemetry_collector" not in clusters


@pytest.mark.parametrize(
    ("sampler", "argument", "percent"),
    [("always_on", "", 100.0), ("parentbased_always_off", "", 0.0), ("traceidratio", "0.25", 25.0)],
)
def test_envoy_samples_new_traces_as_the_sdk_sampler_would(sampler, argument, percent):
    environ = {**TRACED, "OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": argument}
    assert GatewayConfig(environ).trace_sample_percent() == percent


def test_a_ratio_that_is_no_number_is_refused():
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        GatewayConfig({**TRACED, "OTEL_TRACES_SAMPLER_ARG": "ten percent"}).trace_sample_percent()
