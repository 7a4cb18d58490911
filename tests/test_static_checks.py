"""bandit over the services' code: no finding, unless an inline
`# nosec BXXX` says why it is a false positive. Settings in pyproject.toml."""

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE_CODE = ["pms_common", "patient", "auth", "billing", "analytics", "gateway", "stack"]


def test_bandit_finds_nothing_in_the_services_code():
    run = subprocess.run(
        [sys.executable, "-m", "bandit", "-c", "pyproject.toml", "-r", *SERVICE_CODE, "-f", "json", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = json.loads(run.stdout)
    assert report["errors"] == [], report["errors"]
    findings = [
        f"{result['filename']}:{result['line_number']} {result['test_id']} {result['issue_text']}"
        for result in report["results"]
    ]
    assert findings == [], "\n".join(findings)
    assert run.returncode == 0, run.stderr
    scanned = set(report["metrics"]) - {"_totals"}
    assert {"patient/resources.py", "billing/service.py", "pms_common/web.py"} <= scanned
    assert not any(name.endswith("_pb2.py") for name in scanned)  # generated code is left out


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def interpolated_log_calls(source):
    """Logging calls whose message is built from values (%-arguments, an
    f-string, `%` or `.format`) instead of carrying them in `extra=`."""
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in LOG_METHODS or not node.args:
            continue
        receiver = node.func.value
        name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
        if not name.endswith("log") and name not in ("logger", "logging", "access_log"):
            continue
        message = node.args[0]
        built = isinstance(message, ast.JoinedStr | ast.BinOp) or (
            isinstance(message, ast.Call) and getattr(message.func, "attr", "") == "format"
        )
        if len(node.args) > 1 or built:
            yield node.lineno


def test_log_lines_carry_their_values_as_fields():
    found = [
        f"{path.relative_to(REPO)}:{line}"
        for folder in SERVICE_CODE
        for path in (REPO / folder).rglob("*.py")
        if "protos" not in path.parts
        for line in interpolated_log_calls(path.read_text())
    ]
    assert found == []


def test_the_log_check_finds_interpolation():
    source = (
        'log.info("a %s", x)\nlog.info(f"b {x}")\nlogger.error("c" % x)\nlog.info("fine", extra={"x": x})\n'
    )
    assert list(interpolated_log_calls(source)) == [1, 2, 3]
