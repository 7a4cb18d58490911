"""A gunicorn master started in place of a killed one takes its port over with
no moment in which nobody listens (pms_common.listener)."""

import socket
import threading
import time

from pms_common import listener
from pms_common.listener import bind_shared, hand_over, keep_sockets, listeners_on
from stack.harness import free_port


def test_a_second_socket_binds_beside_the_first_and_both_are_counted():
    port = free_port()
    first = bind_shared("127.0.0.1", port, 16)
    try:
        assert listeners_on(port) == 1
        second = bind_shared("127.0.0.1", port, 16)
        assert listeners_on(port) == 2
        second.close()
        assert listeners_on(port) == 1
    finally:
        first.close()
    assert listeners_on(port) == 0
    with socket.socket() as plain:  # a socket that did not ask to share is refused while one listens
        plain.bind(("127.0.0.1", port))


def test_a_worker_whose_master_lives_lets_go_of_the_port_at_once():
    port = free_port()
    master = bind_shared("127.0.0.1", port, 16)
    keep_sockets([master])
    master.close()
    assert listeners_on(port) == 1  # the worker's copy
    started = time.monotonic()
    hand_over(master_alive=True, wait_seconds=5)
    assert time.monotonic() - started < 1 and listeners_on(port) == 0


def test_a_worker_whose_master_died_keeps_the_port_until_a_new_master_listens():
    port = free_port()
    old_master = bind_shared("127.0.0.1", port, 16)
    keep_sockets([old_master])
    old_master.close()
    sockets = []
    threading.Timer(0.5, lambda: sockets.append(bind_shared("127.0.0.1", port, 16))).start()
    started = time.monotonic()
    try:
        hand_over(master_alive=False, wait_seconds=10)
        assert 0.4 < time.monotonic() - started < 5
        assert listeners_on(port) == 1  # the new master's only
    finally:
        for sock in sockets:
            sock.close()


def test_the_wait_for_a_new_master_is_bounded():
    port = free_port()
    old_master = bind_shared("127.0.0.1", port, 16)
    keep_sockets([old_master])
    old_master.close()
    started = time.monotonic()
    hand_over(master_alive=False, wait_seconds=0.3)
    assert time.monotonic() - started < 2 and listeners_on(port) == 0
    assert listener._kept == []


def test_without_the_kernels_table_the_count_is_unknown(tmp_path):
    assert listeners_on(1234, proc_net=tmp_path) is None
