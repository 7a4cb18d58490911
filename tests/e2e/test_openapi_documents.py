"""Every OpenAPI document the gateway serves at /api-docs/* passes Spectral's
`spectral:oas` ruleset with no error (Spectral from npm, installed by `make
install-dev` beside checkov), names every operation, tells how to get a token,
and uses patterns a browser (Swagger UI) can evaluate."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SPECTRAL = ROOT / ".venv" / "tools" / "node" / "node_modules" / ".bin" / "spectral"
DOCUMENTS = ("patients", "auth", "analytics", "billing", "audit")


@pytest.fixture(scope="module")
def documents(system):
    return {name: requests.get(f"{system.url}/api-docs/{name}", timeout=10).json() for name in DOCUMENTS}


def operations(document):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if isinstance(operation, dict) and method != "parameters":
                yield path, method, operation


@pytest.mark.parametrize("name", DOCUMENTS)
def test_spectral_finds_no_error(documents, name, tmp_path):
    assert SPECTRAL.exists(), "make install-dev installs Spectral"
    (tmp_path / ".spectral.yaml").write_text('extends: ["spectral:oas"]\n')
    (tmp_path / f"{name}.json").write_text(json.dumps(documents[name]))
    run = subprocess.run(
        [str(SPECTRAL), "lint", "--ruleset", ".spectral.yaml", "--format", "json", "--quiet", f"{name}.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    findings = json.loads(run.stdout or "[]")
    errors = [f"{'.'.join(map(str, f['path']))}: {f['message']}" for f in findings if f["severity"] == 0]
    assert errors == []


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_operation_is_named_and_the_token_is_explained(documents, name):
    document = documents[name]
    ids = [operation.get("operationId") for _, _, operation in operations(document)]
    assert all(ids) and len(ids) == len(set(ids)), ids
    assert "/auth/login" in document["info"]["description"]


def test_patterns_are_ecma_regular_expressions(documents):
    patterns = re.findall(r'"pattern": "((?:[^"\\]|\\.)*)"', json.dumps(documents))
    assert patterns, "the month parameters carry a pattern"
    assert not [p for p in patterns if "\\\\Z" in p or "\\\\A" in p]


def test_the_dev_documents_name_the_dev_login(documents):
    assert "testuser@test.com" in documents["patients"]["info"]["description"]
