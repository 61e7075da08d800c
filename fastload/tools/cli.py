"""The `fastload` command line: argparse subcommands that call the library functions.

This file is the command table: it lists every command module, and each module adds the one command it
defines (``register(subparsers)``); no command module registers another.
"""

from __future__ import annotations

import argparse
import sys

from fastload.errors import FastloadError
from fastload.tools import cache_commands, demo, show, synth_command
from fastload.tools.bench import commands as bench_commands

# the command modules, in the order `fastload --help` lists their commands
COMMANDS = (
    cache_commands,  # cache build | merge | verify | info
    synth_command,  # synth
    show,  # show
    bench_commands,  # bench
    demo,  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastload", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastload {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def _version() -> str:
    from fastload import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FastloadError as exc:
        print(f"fastload {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
