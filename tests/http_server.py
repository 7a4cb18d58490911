"""A Flask app served over real HTTP in this process: werkzeug's threaded
server (a thread per connection, chunked request bodies decoded as a WSGI
server does), on a free port, for tests that need real connections and real
concurrency rather than the test client."""

import threading
from contextlib import contextmanager

from werkzeug.serving import WSGIRequestHandler, make_server


class QuietHandler(WSGIRequestHandler):
    # The app logs its own access lines; the dev server's would only add noise.
    def log(self, type, message, *args):
        pass


@contextmanager
def serving_over_http(app):
    """Yields the server's base URL (http://127.0.0.1:<port>); stops it on exit."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="http-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
