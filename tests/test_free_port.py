"""The ports the test harness and the benchmarks start servers on."""
import socket

from stack import running


def test_a_free_port_is_below_the_ephemeral_range_and_bindable():
    start = running.ephemeral_ports_start()
    for _ in range(20):
        port = running.free_port()
        assert 1024 <= port < start
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_passed_over(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        in_use = taken.getsockname()[1]
        picks = iter([in_use, in_use, 23456])
        monkeypatch.setattr(running.random, "randrange", lambda *_: next(picks))
        monkeypatch.setattr(running, "ephemeral_ports_start", lambda: 32768)
        assert running.free_port() == 23456


def test_without_the_kernels_range_file_linuxs_default_is_assumed(tmp_path):
    assert running.ephemeral_ports_start(str(tmp_path / "missing")) == 32768
    (tmp_path / "range").write_text("40000\t60999\n")
    assert running.ephemeral_ports_start(str(tmp_path / "range")) == 40000
