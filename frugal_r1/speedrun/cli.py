"""`frugal-r1 speedrun [--out DIR] [--seed S] [--minutes M] [--resume] [--compare DIR]`: see run.py."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("speedrun", help="random weights → a reasoning model on a CPU, with a report card")
    parser.add_argument("--out", default="runs/speedrun", metavar="DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=30.0, help="scale every stage's steps to this budget")
    parser.add_argument("--resume", action="store_true", help="continue the speedrun in --out")
    parser.add_argument("--config", metavar="RECIPE.toml", help="another recipe (default recipes/speedrun.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE",
                        help="override one stage's field, e.g. grpo:rl.group_size=16 (repeatable)")
    parser.add_argument("--compare", action="append", default=[], metavar="DIR",
                        help="a finished speedrun to set beside this one in the report: what more time buys "
                             "(repeatable)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from frugal_r1.errors import UserError
    from frugal_r1.speedrun.run import run_speedrun

    for item in args.set:
        if ":" not in item or item.split(":", 1)[0] not in ("pretrain", "sft", "grpo"):
            raise UserError(f"--set {item!r}: use STAGE:section.key=value with STAGE pretrain, sft or grpo")
    run_speedrun(args.out, seed=args.seed, minutes=args.minutes, resume=args.resume, recipe=args.config,
                 overrides=args.set, compare=args.compare)
    return 0
