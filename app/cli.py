"""``convnd``: one command, a subcommand per module.

Each module in COMMANDS has ``register(subparsers)`` that adds its subcommands and
sets ``func`` to the function taking the parsed args; add a module to add commands.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("app.commands.up", "app.commands.serve", "app.commands.train", "app.commands.jobs", "app.commands.model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convnd", description="N-D convolution service and tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
