"""``convnd``: one command, a subcommand per module.

Each module in COMMANDS has ``register(subparsers)`` that adds its subcommands and
sets ``func`` to the function taking the parsed args; add a module to add commands.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version

COMMANDS = ("app.commands.up", "app.commands.serve", "app.commands.train", "app.commands.jobs", "app.commands.model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convnd", description="N-D convolution service and tools.",
                                     epilog="Start with: convnd up   (then open http://127.0.0.1:8000/docs)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # plain `convnd`: say what there is, not a usage error
        parser.print_help()
        return 0
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at exit
        return status
    except BrokenPipeError:
        # The reader went away (`convnd jobs | head -1`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _version() -> str:
    try:
        return version("convnd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
