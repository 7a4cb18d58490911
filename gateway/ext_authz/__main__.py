"""`python -m gateway.ext_authz`: serve until SIGTERM."""

import asyncio

from pms_common.entry import run_main

from . import serve
from .config import Config


def main():
    run_main("ext_authz", Config, lambda config: asyncio.run(serve(config)))


if __name__ == "__main__":
    main()
