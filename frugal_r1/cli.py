"""The `frugal-r1` command line.

Each subcommand lives in its own module (train/cli.py holds the three training ones: pretrain, sft, grpo),
which exposes `register(subparsers)`: it adds its parsers and sets `func` to the function that runs each. This
file only lists the modules, so adding a command is one line.
A `UserError` (or `ValueError` from config validation) becomes a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from frugal_r1.errors import UserError

# Subcommand modules, in the order `--help` lists them.
COMMANDS: list[str] = [
    "frugal_r1.speedrun.cli",
    "frugal_r1.demo",
    "frugal_r1.train.cli",
    "frugal_r1.cost.cli",
    "frugal_r1.eval_cli",
    "frugal_r1.chat_cli",
    "frugal_r1.serve.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frugal-r1",
        description="DeepSeek-R1 on a budget: train, evaluate and price reasoning models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as error:
        print(f"frugal-r1 {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"frugal-r1 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
