"""make bench: its verdicts (a figure with two goals is ok only when both hold),
its open-loop load generator against a real server, what it needs, and the
lab kept apart from it."""

import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from bench import open_loop
from bench.__main__ import FIGURES, GOALS, main, p2_over_floor
from stack.parts import ROOT
from tests.http_server import serving_over_http


def test_p1_needs_every_round_not_only_the_median():
    _goal, check = GOALS["P1"]
    assert check(0.84, {"round_ratios": [0.80, 0.84, 0.88]})
    assert not check(0.84, {"round_ratios": [0.79, 0.84, 0.88]})


def test_p2_is_the_system_over_the_floor_of_a_create():
    _goal, check = GOALS["P2"]
    assert check(2.0, {})
    assert not check(2.01, {})


def test_p2_over_floor_leaves_the_load_generator_out_of_the_floor():
    hops = {"wrk (the load, per request)": 0.5, "Envoy, one route, no filters": 0.75, "gRPC": 1.25}
    detail = {}
    assert p2_over_floor(5.0, detail, hops) == 2.5
    assert detail["floor_cpu_ms_per_create"] == 2.0
    assert detail["wrk_cpu_ms_per_request"] == 0.5


def test_p2_latency_needs_its_p99_and_no_errors():
    _goal, check = GOALS["P2_latency"]
    assert check(49.9, {"errors": 0})
    assert not check(50.0, {"errors": 0})
    assert not check(20.0, {"errors": 1})


def test_p5_needs_a_cold_and_a_warm_start_in_time():
    _goal, check = GOALS["P5"]
    assert check(59.9, {"warm_s": 4.9})
    assert not check(59.9, {"warm_s": 5.0})
    assert not check(60.0, {"warm_s": 2.0})


def test_p6_footprint_and_p7_idle_cost():
    assert GOALS["P6"][1](600.0, {})
    assert not GOALS["P6"][1](600.1, {})
    assert GOALS["P7"][1](20.0, {})
    assert not GOALS["P7"][1](20.1, {})


def test_every_figure_can_be_asked_for_and_has_a_goal():
    assert set(FIGURES) <= set(GOALS)
    with pytest.raises(SystemExit):
        main(["--only", "P8"])


@contextmanager
def recording_server(delay):
    """A real HTTP server that answers 201 after `delay` seconds and records
    when each request arrived (time.monotonic, as open_loop's clock)."""
    arrivals = []

    def app(environ, start_response):
        arrivals.append(time.monotonic())
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        time.sleep(delay)
        start_response("201 Created", [("Content-Type", "application/json"), ("Content-Length", "2")])
        return [b"{}"]

    with serving_over_http(app) as url:
        yield url, arrivals


def test_open_loop_counts_a_slow_servers_queue_from_each_requests_due_time():
    """20 requests/s offered to a server that takes 200 ms, at most 2 in
    flight: it serves 10/s, so the queue grows and each request's latency is
    its wait plus 200 ms (a closed loop would report 200 ms for all)."""
    with recording_server(delay=0.2) as (url, arrivals):
        result = open_loop.run(
            f"{url}/patients", rate=20, seconds=2, body=lambda i: b'{"n": %d}' % i, max_in_flight=2
        )
    assert result["requests"] == len(arrivals) == 40
    assert result["errors"] == 0
    # The i-th request is answered near 0.2 + i / 10 s after the start and was due at i / 20 s.
    assert result["p50_ms"] > 800
    assert result["p99_ms"] > 1600
    assert result["late_sends"] >= 30
    assert result["achieved_rate"] < 12


def test_open_loop_sends_at_the_offered_rate():
    with recording_server(delay=0.0) as (url, arrivals):
        result = open_loop.run(f"{url}/patients", rate=50, seconds=2, max_in_flight=8)
    assert result["requests"] == len(arrivals) == 100
    assert result["errors"] == 0
    assert 45 <= result["sent_rate"] <= 55
    assert result["late_sends"] <= 5
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert 1.8 <= arrivals[-1] - arrivals[0] <= 2.2
    assert max(gaps) < 0.1  # on schedule: never a burst after a stall


def test_open_loop_counts_failures_by_kind():
    missing = open_loop.run("http://127.0.0.1:1/x", rate=20, seconds=0.5, timeout=1)
    assert missing["errors"] == 10
    assert set(missing["errors_by_kind"]) == {"ConnectionRefusedError"}


def test_make_bench_without_wrk_says_what_to_install_and_installs_nothing(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    # An empty PATH hides wrk (and apt-get); -o install-dev skips the venv step.
    result = subprocess.run(
        [make, "-o", "install-dev", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode != 0
    assert "apt-get install wrk" in result.stderr
    assert "-m bench" not in result.stdout


def test_each_experiment_runs_as_a_module_and_has_its_line_in_the_readme():
    readme = (ROOT / "bench" / "README.md").read_text()
    experiments = sorted(
        path.stem for path in (ROOT / "bench" / "experiments").glob("*.py") if path.stem != "__init__"
    )
    assert experiments
    for name in experiments:
        assert f"python -m bench.experiments.{name}" in readme, name
        result = subprocess.run(
            [sys.executable, "-m", f"bench.experiments.{name}", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_bench_keeps_only_what_make_bench_and_the_soak_run():
    """Everything at bench/'s top level is imported by `python -m bench` (or
    by what it imports) or is the soak test; experiments live in bench/experiments."""
    kept = {path.stem for path in (ROOT / "bench").glob("*.py")} - {"__init__", "__main__"}
    reached, queue = set(), ["__main__", "soak"]
    while queue:
        source = (ROOT / "bench" / f"{queue.pop()}.py").read_text()
        for name in kept - reached:
            imported = rf"\bfrom \.{name} import|\bfrom \. import [^\n]*\b{name}\b|bench\.{name}\b"
            if re.search(imported, source):
                reached.add(name)
                queue.append(name)
    assert kept - reached == set(), f"not run by make bench: {sorted(kept - reached)}"
