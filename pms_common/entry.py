"""The one shape of every part's entry point (`python -m <part>`): read and
check the settings, configure logging, run. A bad setting is one clear line
on stderr and exit code 2, never a traceback.

A new part's `__main__.py` is `run_main("<part>", Config, run)`, where `run`
takes the checked config and runs until the part stops, or
`run_command(...)` when the part also has operator commands (`migrate`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

from .config import ConfigError
from .logs import configure_logging

USAGE_ERROR = 2  # the exit code for a setting the part cannot run with


class CheckedConfig(Protocol):
    LOG_LEVEL: str

    def check(self) -> None: ...


ConfigT = TypeVar("ConfigT", bound=CheckedConfig)


def refuse(service: str, problem: object) -> NoReturn:
    """Says what is wrong in one line on stderr and exits with USAGE_ERROR."""
    print(f"{service}: {' '.join(str(problem).split())}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def run_main(service: str, make_config: Callable[[], ConfigT], run: Callable[[ConfigT], object]) -> None:
    """Builds the config and calls its `check()` (which refuses what the part
    must not run with), configures logging, then `run(config)`. A ConfigError
    raised while starting, inside `run`, is refused the same way."""
    try:
        config = make_config()
        config.check()
    except ConfigError as error:
        refuse(service, error)
    configure_logging(service, config.LOG_LEVEL)
    try:
        run(config)
    except ConfigError as error:
        refuse(service, error)


class Command(Protocol):
    """One operator command of a part: `python -m <part> <name> [arguments]`."""

    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def __call__(self, config: Any, arguments: argparse.Namespace) -> int | None: ...


def run_command(
    service: str,
    make_config: Callable[[], ConfigT],
    serve: Callable[[ConfigT], object],
    commands: Mapping[str, Command],
    argv: Sequence[str] | None = None,
) -> None:
    """`python -m <part>` serves; `python -m <part> <command> …` runs one of
    the part's operator commands (e.g. `migrate`) on the same settings and
    exits with its status. Usage errors exit 2, like a bad setting."""
    parser = argparse.ArgumentParser(prog=f"python -m {service}", description=f"Runs {service}.")
    subcommands = parser.add_subparsers(dest="command", metavar="command")
    subcommands.add_parser("serve", help="serve (the default)")
    for name, command in commands.items():
        command.add_arguments(subcommands.add_parser(name, help=command.help, description=command.help))
    arguments = parser.parse_args(argv)
    if arguments.command in (None, "serve"):
        run_main(service, make_config, serve)
        return
    status: list[int | None] = [None]

    def run(config: ConfigT) -> None:
        status[0] = commands[arguments.command](config, arguments)

    run_main(service, make_config, run)
    sys.exit(status[0] or 0)


class Migrate:
    """`python -m <part> migrate`: applies the part's migrations and exits
    (what the part also does at every start), e.g. before a rolling deploy."""

    help = "apply the database migrations, then exit"

    def __init__(self, apply: Callable[[Any], object]) -> None:
        self.apply = apply

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def __call__(self, config: Any, arguments: argparse.Namespace) -> int:
        self.apply(config)
        print(f"{config.SERVICE}: the database is migrated")
        return 0
