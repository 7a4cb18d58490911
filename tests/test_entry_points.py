"""Every entry point has one shape (pms_common.entry.run_main): a setting the
part cannot run with is one line on stderr and exit code 2, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "module, setting, named",
    [
        ("billing", {"BILLING_PORT": "ninety"}, "BILLING_PORT"),
        ("gateway.ext_authz", {"EXT_AUTHZ_PORT": "ninety"}, "EXT_AUTHZ_PORT"),
        ("analytics.consumer", {"ANALYTICS_BATCH_SIZE": "0"}, "ANALYTICS_BATCH_SIZE"),
        ("patient.worker", {"OUTBOX_BATCH_SIZE": "many"}, "OUTBOX_BATCH_SIZE"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_code_2(module, setting, named, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PMS_DATA_DIR": str(tmp_path), **setting},
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and named in result.stderr, result.stderr
    assert result.stdout == ""
