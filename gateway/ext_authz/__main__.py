"""`python -m gateway.ext_authz`: serve until SIGTERM."""
import threading

from pms_common.grpc_server import serve_until_signalled
from pms_common.logs import configure_logging

from . import SERVICE_NAMES, create_server, watch_auth
from .config import Config


def main():
    config = Config()
    configure_logging("ext_authz", config.LOG_LEVEL)
    server, _port, health, _validator = create_server(config)
    server.start()
    stop = threading.Event()
    threading.Thread(target=watch_auth, args=(config, health, stop), daemon=True).start()
    serve_until_signalled(server, health, SERVICE_NAMES, on_stop=stop.set)


if __name__ == "__main__":
    main()
