"""make bench's verdicts: a figure with two goals is ok only when both hold."""
from bench.__main__ import GOALS


def test_p2_needs_its_ratio_and_its_p99():
    _goal, check = GOALS["P2"]
    assert check(0.31, {"p99_ms": 49.9})
    assert not check(0.31, {"p99_ms": 50.0})
    assert not check(0.29, {"p99_ms": 20.0})


def test_p5_needs_a_cold_and_a_warm_start_in_time():
    _goal, check = GOALS["P5"]
    assert check(120.0, {"warm_s": 14.0})
    assert not check(120.0, {"warm_s": 15.0})
    assert not check(180.0, {"warm_s": 5.0})
