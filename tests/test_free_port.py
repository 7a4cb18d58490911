"""The ports the test harness and the benchmarks start servers on."""

import socket

from stack import config as harness


def test_a_free_port_is_below_the_ephemeral_range_and_bindable():
    start = harness.ephemeral_ports_start()
    for _ in range(20):
        port = harness.free_port()
        assert 1024 <= port < start
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_passed_over(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        in_use = taken.getsockname()[1]
        picks = iter([in_use, in_use, 23456])
        monkeypatch.setattr(harness.random, "randrange", lambda *_: next(picks))
        monkeypatch.setattr(harness, "ephemeral_ports_start", lambda: 32768)
        assert harness.free_port() == 23456


def test_without_the_kernels_range_file_linuxs_default_is_assumed(tmp_path):
    assert harness.ephemeral_ports_start(str(tmp_path / "missing")) == 32768
    (tmp_path / "range").write_text("40000\t60999\n")
    assert harness.ephemeral_ports_start(str(tmp_path / "range")) == 40000


def test_the_ports_of_one_system_are_all_different(monkeypatch):
    # Random picks repeat (about one system start in 60 drew a port twice): each setting gets its own.
    picks = iter([23456, 23456, 23456, 23457])
    monkeypatch.setattr(harness.random, "randrange", lambda *_: next(picks))
    monkeypatch.setattr(harness, "ephemeral_ports_start", lambda: 32768)
    assert harness.free_ports(["BILLING_METRICS_PORT", "ANALYTICS_CONSUMER_METRICS_PORT"]) == {
        "BILLING_METRICS_PORT": 23456,
        "ANALYTICS_CONSUMER_METRICS_PORT": 23457,
    }
