"""The `fastload` command line: argparse subcommands that call the library functions.

Each area registers its own subcommands (``register(subparsers)``) so that this file stays a thin shell.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fastload.errors import FastloadError

# modules that define register(subparsers); each adds one or more subcommands
_COMMAND_MODULES = (
    "fastload.cache.commands",  # cache build | verify | info | merge, synth
    "fastload.show",  # show
    "fastload.bench.commands",  # bench, demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastload", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastload {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
