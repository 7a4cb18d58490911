"""A TCP forwarder a test can switch off and on, to take a real peer (a
PostgreSQL server) away from one client and give it back: while off, open
connections are cut and new ones refused, as when the server is down."""

import socket
import threading
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from tests.support import free_port, fresh_database, postgres_admin_url


class TcpSwitch:
    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = None
        self._sockets = set()
        self._lock = threading.Lock()

    def on(self):
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def off(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def url_for(self, database_url):
        """The same database URL, through this switch."""
        scheme, rest = database_url.split("://", 1)
        credentials, _, location = rest.rpartition("@")
        _address, _, path = location.partition("/")
        return f"{scheme}://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}/{path}"

    def _accept(self, listener):
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by off()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def require_postgres():
    """Skips the test without a PostgreSQL server to take away (a SQLite file cannot go away)."""
    if not postgres_admin_url():
        pytest.skip("PostgreSQL tests run when PMS_TEST_POSTGRES_URL is set (CI sets it)")


@contextmanager
def switched(database_url):
    """A switch, on, in front of the PostgreSQL server of this URL."""
    address = sa.engine.make_url(database_url)
    switch = TcpSwitch(address.host, address.port or 5432).on()
    try:
        yield switch
    finally:
        switch.off()


@contextmanager
def switched_postgres(tmp_path, name):
    """A new PostgreSQL database, and a switch in front of its server: (its URL, the switch)."""
    require_postgres()
    with fresh_database("postgres", tmp_path, name) as url, switched(url) as switch:
        yield url, switch
