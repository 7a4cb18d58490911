"""`python -m gateway.ext_authz`: serve until SIGTERM."""
import asyncio

from pms_common.logs import configure_logging

from . import serve
from .config import Config


def main():
    config = Config()
    configure_logging("ext_authz", config.LOG_LEVEL)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
