"""Renders gateway/envoy.yaml for this environment.

`python -m gateway.render --out DIR/envoy.yaml` fills the ${...} placeholders
from the environment (defaults: everything on 127.0.0.1 at the standard ports)
and writes beside it what the config reads: the authz memo script, the Swagger UI page and assets,
the billing descriptor set for gRPC-JSON transcoding, and billing's OpenAPI
document. The same command serves `make run`, compose and ECS, so there is one
gateway config, not one per environment.
"""
import argparse
import json
import os
import shutil
import string
import sys
from pathlib import Path

import swagger_ui_bundle
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from pms_common.protos import billing_service_pb2

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "envoy.yaml"
DOCS_PAGE = HERE / "docs.html"
SWAGGER_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js")
# The OpenAPI documents /docs lists, in the order shown.
SPECS = [("patients", "/api-docs/patients"), ("auth", "/api-docs/auth"),
         ("analytics", "/api-docs/analytics"), ("billing", "/api-docs/billing")]
DEFAULTS = {
    "GATEWAY_PORT": "4004", "ENVOY_ADMIN_PORT": "9901",
    "PATIENT_PORT": "4000", "AUTH_PORT": "4005", "ANALYTICS_PORT": "4002",
    "BILLING_PORT": "9001", "EXT_AUTHZ_PORT": "9002",
}
HOSTS = ("PATIENT_HOST", "AUTH_HOST", "ANALYTICS_HOST", "BILLING_HOST", "EXT_AUTHZ_HOST")


def settings(environ, out_dir):
    bind = environ.get("BIND_HOST") or "127.0.0.1"
    values = {name: environ.get(name) or default for name, default in DEFAULTS.items()}
    values.update({name: environ.get(name) or "127.0.0.1" for name in HOSTS})
    values["GATEWAY_BIND"] = environ.get("GATEWAY_BIND") or bind
    values["ENVOY_ADMIN_BIND"] = environ.get("ENVOY_ADMIN_BIND") or bind
    values["OUT_DIR"] = str(out_dir)
    # Per-request lines are INFO lines: above INFO only server errors are logged.
    quiet = (environ.get("LOG_LEVEL") or "INFO").upper() not in ("DEBUG", "INFO")
    values["ACCESS_LOG_MIN_STATUS"], values["ACCESS_LOG_LEVEL"] = ("500", "ERROR") if quiet else ("0", "INFO")
    for name in DEFAULTS:
        if not values[name].isdigit():
            raise SystemExit(f"{name} must be a port number, got {values[name]!r}")
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


def billing_openapi():
    """OpenAPI for billing's JSON endpoints, read off the proto's http rules."""
    service = billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"]
    paths = {}
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        if not rule.get:
            continue
        parameters = [{"name": field.json_name, "in": "path", "required": True,
                       "schema": {"type": "string"}} for field in method.input_type.fields
                      if "{" + field.name + "}" in rule.get]
        output = {field.json_name: {"type": "string"} for field in method.output_type.fields}
        paths[rule.get] = {"get": {
            "summary": method.name, "operationId": method.name, "parameters": parameters,
            "responses": {
                "200": {"description": method.output_type.name,
                        "content": {"application/json": {"schema": {"type": "object", "properties": output}}}},
                "404": {"description": "No such account"},
                "401": {"description": "Missing or invalid token"},
            }}}
    return {"openapi": "3.0.3", "info": {"title": "Billing Service", "version": "1.0"},
            "servers": [{"url": "/"}], "paths": paths,
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                              "bearerFormat": "JWT"}}},
            "security": [{"bearerAuth": []}]}


def render(out_file, environ=os.environ):
    out_file = Path(out_file).resolve()
    out_dir = out_file.parent
    (out_dir / "docs").mkdir(parents=True, exist_ok=True)
    values = settings(environ, out_dir)
    out_file.write_text(string.Template(TEMPLATE.read_text()).substitute(values))
    shutil.copyfile(HERE / "authz_memo.lua", out_dir / "authz_memo.lua")
    (out_dir / "billing.pb").write_bytes(billing_descriptor_set())
    (out_dir / "billing-openapi.json").write_text(json.dumps(billing_openapi(), indent=2))
    spec_urls = json.dumps([{"name": name, "url": url} for name, url in SPECS])
    (out_dir / "docs" / "index.html").write_text(
        string.Template(DOCS_PAGE.read_text()).substitute(SPEC_URLS=spec_urls))
    assets = Path(swagger_ui_bundle.swagger_ui_path)
    for asset in SWAGGER_ASSETS:
        shutil.copyfile(assets / asset, out_dir / "docs" / asset)
    return out_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write envoy.yaml (assets go beside it)")
    print(render(parser.parse_args(argv).out))


if __name__ == "__main__":
    sys.exit(main())
