"""`frugal-r1 pretrain`, `sft` and `grpo`: the command-line faces of run.py and grpo_run.py.

Both take the same flags: a recipe (`--config`), overrides (`--set section.key=value`), and the common
shortcuts (`--preset`, `--task`, `--steps`, `--seed`, `--save-every`), plus `--out` and `--resume`;
`sft` and `grpo` also `--init MODEL_DIR`. The same commands run data-parallel under `torchrun --nproc_per_node=N`.
"""

from __future__ import annotations

import argparse

from frugal_r1.recipe import load_stage


def add_stage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="RECIPE.toml", help="a recipe file (TOML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. train.lr=3e-4 (repeatable)")
    parser.add_argument("--preset", help="model preset (tiny, small, …)")
    parser.add_argument("--task", action="append", metavar="NAME",
                        help="a reasoning-gym task or jsonl:PATH (repeatable; configs via the recipe)")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", required=True, metavar="DIR", help="the run directory")
    parser.add_argument("--save-every", type=int, metavar="N", help="checkpoint every N steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def register(subparsers: argparse._SubParsersAction) -> None:
    pretrain = subparsers.add_parser("pretrain", help="pretrain a DeepSeek-V3-style model from random weights")
    add_stage_flags(pretrain)
    pretrain.set_defaults(func=lambda args: _run("pretrain", args))
    sft = subparsers.add_parser("sft", help="supervised fine-tuning (cold start) in the chat format")
    add_stage_flags(sft)
    sft.add_argument("--init", required=True, metavar="MODEL_DIR", help="the model to start from")
    sft.set_defaults(func=lambda args: _run("sft", args))
    grpo = subparsers.add_parser("grpo", help="GRPO with verifiable rewards (R1-Zero) on a frugal-r1 or transformers model")
    add_stage_flags(grpo)
    grpo.add_argument("--init", required=True, metavar="MODEL_DIR", help="the policy to start from")
    grpo.set_defaults(func=lambda args: _run("grpo", args))


def _run(kind: str, args: argparse.Namespace) -> int:
    from frugal_r1.train.run import apply_common_flags, run_lm_stage

    cfg = apply_common_flags(load_stage(kind, args.config, args.set), args)
    if kind == "grpo":
        from frugal_r1.train.grpo_run import run_grpo

        run_grpo(cfg, args.out, args.init, resume=args.resume)
    else:
        run_lm_stage(kind, cfg, args.out, resume=args.resume, init=getattr(args, "init", None))
    return 0
