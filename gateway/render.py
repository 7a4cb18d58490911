"""Renders gateway/envoy.yaml for this environment.

`python -m gateway.render --out DIR/envoy.yaml` fills the ${...} placeholders
from the gateway's settings (GatewayConfig: every part's address from
pms_common.config.PARTS, everything on 127.0.0.1 at the standard ports by
default) and writes beside it what the config reads: the Lua filters' scripts,
the Swagger UI page and assets, the billing descriptor set for gRPC-JSON
transcoding, and billing's OpenAPI document. The same command serves `make
run`, compose and ECS, so there is one gateway config, not one per environment.
"""

import argparse
import json
import re
import shutil
import string
from pathlib import Path
from urllib.parse import urlsplit

import swagger_ui_bundle
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from pms_common.config import (
    DEV,
    LOOPBACK,
    PARTS,
    PRODUCTION,
    ConfigError,
    Environ,
    audit_log_path,
    audit_trail_on,
    env_int,
    env_log_level,
    env_mode,
    env_str,
    port_of,
)
from pms_common.entry import run_main
from pms_common.protos import billing_service_pb2

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "envoy.yaml"
DOCS_PAGE = HERE / "docs.html"
DOCS_SCRIPT = HERE / "swagger-init.js"
SWAGGER_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js")
# Browser front ends a developer commonly runs beside `make run` (React, Vite, Angular, a static server).
DEV_CORS_ORIGINS = (
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:5173",
    "http://127.0.0.1:5173",
    "http://localhost:4200",
    "http://localhost:8080",
)
ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
# What a browser front end may send and read across origins.
CORS_ALLOW_HEADERS = "authorization, content-type, if-match, if-none-match, x-request-id"
CORS_EXPOSE_HEADERS = "etag, location, x-pagination, x-request-id, retry-after, www-authenticate"
# The OpenAPI documents /docs lists, in the order shown.
SPECS = [
    ("patients", "/api-docs/patients"),
    ("auth", "/api-docs/auth"),
    ("analytics", "/api-docs/analytics"),
    ("audit", "/api-docs/audit"),
    ("billing", "/api-docs/billing"),
]


def part_addresses(prefix: str, environ: Environ | None = None) -> list[tuple[str, int]]:
    """Where the copies of a part listen: <PREFIX>_ADDRESSES (host:port pairs,
    comma-separated) when several copies run, else the one at <PREFIX>_HOST
    and <PREFIX>_PORT."""
    setting = f"{prefix}_ADDRESSES"
    raw = env_str(setting, None, environ)
    if raw is None:
        return [(env_str(f"{prefix}_HOST", LOOPBACK, environ), port_of(prefix, environ))]
    addresses = []
    for item in raw.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{setting} must list host:port pairs, comma-separated, got {item.strip()!r}")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


class GatewayConfig:
    """The gateway's settings, read from `environ` (default: this process's
    environment): every part's port and host, where Envoy binds its listener
    and admin, the log level, how many proxies stand in front of it, its TLS
    certificate and the port of its stats listener."""

    def __init__(self, environ: Environ | None = None) -> None:
        bind = env_str("BIND_HOST", LOOPBACK, environ)
        self.ports = {address.port_setting: port_of(prefix, environ) for prefix, address in PARTS.items()}
        self.hosts = {
            address.host_setting: env_str(address.host_setting, LOOPBACK, environ)
            for address in PARTS.values()
            if address.host_setting
        }
        # Prefix → every copy of that part the gateway balances over (part_addresses).
        self.addresses = {
            prefix: part_addresses(prefix, environ)
            for prefix, address in PARTS.items()
            if address.host_setting
        }
        self.GATEWAY_BIND = env_str("GATEWAY_BIND", bind, environ)
        self.ENVOY_ADMIN_BIND = env_str("ENVOY_ADMIN_BIND", bind, environ)
        self.LOG_LEVEL = env_log_level(environ)
        self.GATEWAY_TRUSTED_HOPS = env_int("GATEWAY_TRUSTED_HOPS", 0, environ)
        # The audit trail's log of every request (audit.collector reads it).
        self.AUDIT_LOG_PATH = audit_log_path(environ)
        self.AUDIT_TRAIL = audit_trail_on(environ)
        self.ENV = env_mode(environ)
        # PEM files of a certificate (chain) and its key: set, the gateway's listener serves HTTPS only.
        self.GATEWAY_TLS_CERT = env_str("GATEWAY_TLS_CERT", None, environ)
        self.GATEWAY_TLS_KEY = env_str("GATEWAY_TLS_KEY", None, environ)
        # A listener of its own that answers only GET /stats/prometheus from the admin
        # interface, for a scraper that cannot reach the admin's address; 0: none.
        self.ENVOY_STATS_PORT = env_int("ENVOY_STATS_PORT", 0, environ)
        # Traces over OTLP/gRPC to this collector when set, like the services' (pms_common.telemetry).
        self.OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT", None, environ)
        self.TRACES_SAMPLER = env_str("OTEL_TRACES_SAMPLER", "parentbased_always_on", environ)
        self.TRACES_SAMPLER_ARG = env_str("OTEL_TRACES_SAMPLER_ARG", "1.0", environ)
        # Browser origins allowed to call the API: none unless set in production.
        default_origins = ",".join(DEV_CORS_ORIGINS) if env_mode(environ) == DEV else ""
        self.CORS_ALLOWED_ORIGINS = [
            origin.strip()
            for origin in env_str("CORS_ALLOWED_ORIGINS", default_origins, environ).split(",")
            if origin.strip()
        ]

    def check(self) -> None:
        if not self.AUDIT_TRAIL and self.ENV == PRODUCTION:
            raise ConfigError("AUDIT_TRAIL=off is for measuring its cost; production keeps the audit trail")
        if self.GATEWAY_TRUSTED_HOPS < 0:
            raise ConfigError(f"GATEWAY_TRUSTED_HOPS must not be negative, got {self.GATEWAY_TRUSTED_HOPS}")
        if bool(self.GATEWAY_TLS_CERT) != bool(self.GATEWAY_TLS_KEY):
            raise ConfigError("GATEWAY_TLS_CERT and GATEWAY_TLS_KEY go together: set both (HTTPS) or neither")
        if not 0 <= self.ENVOY_STATS_PORT <= 65535:
            raise ConfigError(
                f"ENVOY_STATS_PORT must be a port (1-65535) or 0 for none, got {self.ENVOY_STATS_PORT}"
            )
        for origin in self.CORS_ALLOWED_ORIGINS:
            if not ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"CORS_ALLOWED_ORIGINS: {origin!r} is not an origin "
                    f"(scheme://host[:port], no path, no wildcard)"
                )

    def cors_policy(self) -> dict:
        """The virtual host's per-filter config: a CORS policy for the allowed
        origins, or nothing (the CORS filter then leaves every request alone)."""
        if not self.CORS_ALLOWED_ORIGINS:
            return {}
        return {
            "envoy.filters.http.cors": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                "allow_origin_string_match": [{"exact": origin} for origin in self.CORS_ALLOWED_ORIGINS],
                "allow_methods": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
                "allow_headers": CORS_ALLOW_HEADERS,
                "expose_headers": CORS_EXPOSE_HEADERS,
                "max_age": "600",
                "allow_credentials": False,
            }
        }

    def tls_transport_socket(self) -> str:
        """The gateway filter chain's `transport_socket` line: TLS with the
        configured certificate, or nothing (plain HTTP)."""
        if not self.GATEWAY_TLS_CERT:
            return ""
        socket = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": self.GATEWAY_TLS_CERT},
                            "private_key": {"filename": self.GATEWAY_TLS_KEY},
                        }
                    ],
                },
            },
        }
        return f"transport_socket: {json.dumps(socket)}"

    def trace_sample_percent(self) -> float:
        """The share of new traces Envoy samples, from the OpenTelemetry SDK's
        sampler settings (a ratio sampler's argument; always_off none; else all)."""
        if self.TRACES_SAMPLER.endswith("always_off"):
            return 0.0
        if self.TRACES_SAMPLER.endswith("traceidratio"):
            try:
                ratio = float(self.TRACES_SAMPLER_ARG)
            except ValueError:
                raise ConfigError(
                    f"OTEL_TRACES_SAMPLER_ARG must be a ratio (0-1), got {self.TRACES_SAMPLER_ARG!r}"
                ) from None
            return min(100.0, max(0.0, ratio * 100))
        return 100.0

    def audit_access_log(self) -> str:
        """The access log entry of the audit trail, or nothing with AUDIT_TRAIL
        off: one JSON line per request to the file the audit part's collector
        reads (audit/collector.py) with who the token check said the caller is
        (a client's own identity header counts only when the memo set it), what
        (routes are named: the path may be the rewritten one), the status the
        client got and from where; no query string, body or response; no line
        for the gateway's own health checks."""
        if not self.AUDIT_TRAIL:
            return ""
        line = {
            "time": "%START_TIME%",
            "method": "%REQ(:METHOD)%",
            "route": "%ROUTE_NAME%",
            "path": "%PATH(NQ:ORIG_OR_PATH)%",
            "status": "%RESPONSE_CODE%",
            "request_id": "%REQ(X-REQUEST-ID)%",
            "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            "authz_user": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:user)%",
            "authz_role": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:role)%",
            "memo_hit": "%DYNAMIC_METADATA(pms.authz:hit)%",
            "user": "%REQ(X-USER-EMAIL)%",
            "role": "%REQ(X-USER-ROLE)%",
            "audit_event": "%RESP(X-AUDIT-EVENT)%",
            "login_email": "%DYNAMIC_METADATA(pms.audit:login_email)%",
            "token_subject": "%DYNAMIC_METADATA(pms.audit:token_subject)%",  # nosec B105  (a format operator)
        }
        access_log = {
            "name": "envoy.access_loggers.file",
            # The gateway's own /health (answered by its health check filter) is
            # no audited action, and probes ask it every few seconds: left out,
            # they neither grow the log nor wake its collector.
            "filter": {"not_health_check_filter": {}},
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": self.AUDIT_LOG_PATH,
                "log_format": {"json_format": line},
            },
        }
        return f"- {json.dumps(access_log)}"

    def tracing_and_cluster(self) -> tuple[str, str]:
        """The connection manager's `tracing` line (Envoy's OpenTelemetry
        tracer: it starts or continues each request's W3C trace and passes
        `traceparent` to ext_authz and the services) and the collector's
        cluster, or nothing when OTEL_EXPORTER_OTLP_ENDPOINT is unset."""
        if not self.OTLP_ENDPOINT:
            return "", ""
        endpoint = urlsplit(
            self.OTLP_ENDPOINT if "://" in self.OTLP_ENDPOINT else f"http://{self.OTLP_ENDPOINT}"
        )
        if endpoint.hostname is None:
            raise ConfigError(f"OTEL_EXPORTER_OTLP_ENDPOINT must be a URL, got {self.OTLP_ENDPOINT!r}")
        tracing = {
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {
                        "envoy_grpc": {"cluster_name": "opentelemetry_collector"},
                        "timeout": "1s",
                    },
                    "service_name": "gateway",
                },
            },
            "random_sampling": {"value": self.trace_sample_percent()},
        }
        address = {
            "socket_address": {
                "address": endpoint.hostname,
                "port_value": endpoint.port or (443 if endpoint.scheme == "https" else 4317),
            }
        }
        cluster = {
            "name": "opentelemetry_collector",
            "type": "STRICT_DNS",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": "opentelemetry_collector",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
            },
        }
        if endpoint.scheme == "https":
            cluster["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                    ".UpstreamTlsContext",
                    "sni": endpoint.hostname,
                },
            }
        return f"tracing: {json.dumps(tracing)}", f"- {json.dumps(cluster)}"

    def stats_listener_and_cluster(self) -> tuple[str, str]:
        """Sequence items for `listeners` and `clusters`: a listener on
        ENVOY_STATS_PORT whose one route is GET /stats/prometheus to the admin
        interface (reached on loopback inside Envoy's host), or nothing."""
        if not self.ENVOY_STATS_PORT:
            return "", ""
        router = {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
        routes = [
            {
                "match": {
                    "path": "/stats/prometheus",
                    "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                },
                "route": {"cluster": "envoy_admin"},
            },
            {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
        ]
        manager = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": "envoy_stats",
            "route_config": {
                "name": "envoy_stats",
                "virtual_hosts": [{"name": "envoy_stats", "domains": ["*"], "routes": routes}],
            },
            "http_filters": [router],
        }
        listener = {
            "name": "envoy_stats",
            "address": {
                "socket_address": {"address": self.GATEWAY_BIND, "port_value": self.ENVOY_STATS_PORT}
            },
            "filter_chains": [
                {
                    "filters": [
                        {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
                    ]
                }
            ],
        }
        admin = {"socket_address": {"address": LOOPBACK, "port_value": self.ports["ENVOY_ADMIN_PORT"]}}
        cluster = {
            "name": "envoy_admin",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "envoy_admin",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": admin}}]}],
            },
        }
        return f"- {json.dumps(listener)}", f"- {json.dumps(cluster)}"

    def endpoints(self, prefix: str) -> str:
        """A cluster's `lb_endpoints`: one per copy of the part."""
        return json.dumps(
            [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                for host, port in self.addresses[prefix]
            ]
        )

    def template_values(self, out_dir: Path) -> dict[str, str]:
        values = {name: str(port) for name, port in self.ports.items()}
        values.update(self.hosts)
        values.update({f"{prefix}_ENDPOINTS": self.endpoints(prefix) for prefix in self.addresses})
        values.update(
            GATEWAY_BIND=self.GATEWAY_BIND,
            ENVOY_ADMIN_BIND=self.ENVOY_ADMIN_BIND,
            GATEWAY_TRUSTED_HOPS=str(self.GATEWAY_TRUSTED_HOPS),
            OUT_DIR=str(out_dir),
            CORS_POLICY=json.dumps(self.cors_policy()),
            AUDIT_ACCESS_LOG=self.audit_access_log(),
            GATEWAY_TLS=self.tls_transport_socket(),
        )
        values["STATS_LISTENER"], values["STATS_CLUSTER"] = self.stats_listener_and_cluster()
        values["TRACING"], values["TRACING_CLUSTER"] = self.tracing_and_cluster()
        # Per-request lines are INFO lines: above INFO only server errors are logged.
        quiet = self.LOG_LEVEL not in ("DEBUG", "INFO")
        values["ACCESS_LOG_MIN_STATUS"], values["ACCESS_LOG_LEVEL"] = (
            ("500", "ERROR") if quiet else ("0", "INFO")
        )
        return values


def billing_descriptor_set():
    """The FileDescriptorSet Envoy's transcoder needs, built from the committed
    stubs (so rendering needs no protoc)."""
    files, seen = [], set()

    def add(file_descriptor):
        if file_descriptor.name in seen:
            return
        for dependency in file_descriptor.dependencies:
            add(dependency)
        seen.add(file_descriptor.name)
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        files.append(proto)

    add(billing_service_pb2.DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(file=files).SerializeToString()


# Proto scalar types as OpenAPI types; every field of billing's messages is one of these.
OPENAPI_TYPES = {
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: {"type": "string"},
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: {"type": "boolean"},
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: {"type": "integer", "format": "int32"},
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: {"type": "string", "format": "int64"},
}
EXAMPLE_PATIENT_ID = "123e4567-e89b-12d3-a456-426614174000"  # the first seed patient
ERROR = {"$ref": "#/components/schemas/Error"}


def message_schema(message):
    """An OpenAPI schema of a proto message, field by field, as the transcoder
    prints it (proto field names, every field present)."""
    return {
        "type": "object",
        "required": [field.name for field in message.fields],
        "properties": {field.name: dict(OPENAPI_TYPES[field.type]) for field in message.fields},
    }


def billing_openapi():
    """OpenAPI for billing's JSON endpoints, read off the proto: each RPC with
    an http rule, its path parameters and its response message."""
    service = billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"]
    paths, schemas = (
        {},
        {
            "Error": {
                "type": "object",
                "required": ["code", "status", "message"],
                "properties": {
                    "code": {"type": "integer"},
                    "status": {"type": "string"},
                    "message": {"type": "string"},
                },
            }
        },
    )
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        if not rule.get:
            continue
        parameters = [
            {
                "name": field.json_name,
                "in": "path",
                "required": True,
                "schema": {**OPENAPI_TYPES[field.type], "format": "uuid", "example": EXAMPLE_PATIENT_ID},
            }
            for field in method.input_type.fields
            if "{" + field.name + "}" in rule.get
        ]
        schemas[method.output_type.name] = message_schema(method.output_type)
        errors = {
            "400": "The patient id is not a UUID",
            "401": "No token, or an invalid, expired or revoked one",
            "403": "The token's role may not do this",
            "404": "No account for this patient",
        }
        paths[rule.get] = {
            "get": {
                "summary": f"{method.name} (gRPC BillingService/{method.name}, as JSON)",
                "description": f"The {method.output_type.name} of the patient, from billing's gRPC service "
                "through the gateway's JSON transcoding.",
                "operationId": method.name[0].lower() + method.name[1:],
                "tags": ["billing"],
                "parameters": parameters,
                "responses": {
                    "200": {
                        "description": method.output_type.name,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": f"#/components/schemas/{method.output_type.name}"}
                            }
                        },
                    },
                    **{
                        code: {"description": text, "content": {"application/json": {"schema": ERROR}}}
                        for code, text in errors.items()
                    },
                },
            }
        }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Billing Service",
            "version": "1.0",
            "description": "Billing accounts, one per patient, read through the gateway. "
            "Send a token from `POST /auth/login` as `Authorization: Bearer <token>`.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": "billing", "description": "Billing accounts"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
    }


def render(out_file, environ: Environ | None = None):
    """Renders for the settings in `environ` (default: this process's
    environment); a setting it cannot render with is a ConfigError."""
    config = GatewayConfig(environ)
    config.check()
    return write_gateway_files(out_file, config)


def write_gateway_files(out_file, config: GatewayConfig):
    out_file = Path(out_file).resolve()
    out_dir = out_file.parent
    (out_dir / "docs").mkdir(parents=True, exist_ok=True)
    if config.AUDIT_TRAIL:
        # Envoy makes the audit log file, not its folder; private, as the data folder.
        Path(config.AUDIT_LOG_PATH).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    out_file.write_text(string.Template(TEMPLATE.read_text()).substitute(config.template_values(out_dir)))
    for script in HERE.glob("*.lua"):  # the Lua filters' code (authz memo, error shapes)
        shutil.copyfile(script, out_dir / script.name)
    (out_dir / "billing.pb").write_bytes(billing_descriptor_set())
    (out_dir / "billing-openapi.json").write_text(json.dumps(billing_openapi(), indent=2))
    spec_urls = json.dumps([{"name": name, "url": url} for name, url in SPECS])
    shutil.copyfile(DOCS_PAGE, out_dir / "docs" / "index.html")
    (out_dir / "docs" / "swagger-init.js").write_text(
        string.Template(DOCS_SCRIPT.read_text()).substitute(SPEC_URLS=spec_urls)
    )
    assets = Path(swagger_ui_bundle.swagger_ui_path)
    for asset in SWAGGER_ASSETS:
        shutil.copyfile(assets / asset, out_dir / "docs" / asset)
    return out_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write envoy.yaml (assets go beside it)")
    out = parser.parse_args(argv).out
    run_main("gateway", GatewayConfig, lambda config: print(write_gateway_files(out, config)))


if __name__ == "__main__":
    main()
