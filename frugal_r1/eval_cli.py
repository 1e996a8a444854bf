"""`frugal-r1 eval`: pass@1, cons@K and 95 % intervals for a model directory on tasks (see eval.py).

    frugal-r1 eval --model runs/grpo/final --task chain_sum --task jsonl:gsm8k.jsonl --n 200 --samples 4 \\
        --task-config chain_sum.max_terms=4 --json eval.json

Tasks come from `--task` (repeatable) or, without it, from a recipe's `[data].tasks`; per-task
reasoning-gym kwargs from the recipe's `[data].task_config` and then `--task-config NAME.KEY=VALUE`
(the value read as TOML; the key is split at its last dot, so `jsonl:a.jsonl.verifier=exact` works).
`--seed` picks the held-out rows (default 1,000,003: `DataConfig.eval_seed_offset`, the trainer's own
held-out seed for train.seed 0); `--sampling-seed` seeds the sampler.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from frugal_r1.errors import UserError
from frugal_r1.eval import EVAL_SEED


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="pass@1 / cons@K with intervals on reasoning-gym tasks or JSONL sets")
    parser.add_argument("--model", required=True, metavar="DIR", help="a model directory (ours or transformers)")
    parser.add_argument("--task", action="append", metavar="NAME", help="a reasoning-gym task or jsonl:PATH (repeatable)")
    parser.add_argument("--n", type=int, default=100, help="problems per task (default 100)")
    parser.add_argument("--samples", type=int, default=4, metavar="K", help="completions per problem (default 4)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--task-max-new-tokens", action="append", default=[], metavar="NAME=N",
                        help="a task's own token budget instead of --max-new-tokens (repeatable)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help=f"held-out row seed (default {EVAL_SEED})")
    parser.add_argument("--sampling-seed", type=int, default=0)
    parser.add_argument("--format", choices=["chat", "r1_zero"], default="chat", dest="prompt_format",
                        help="chat (the model's chat template) or r1_zero (R1-Zero's plain prompt)")
    parser.add_argument("--task-config", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="a per-task config value (repeatable)")
    parser.add_argument("--config", metavar="RECIPE.toml", help="take tasks and [data].task_config from a recipe")
    parser.add_argument("--stage", default="sft", choices=["pretrain", "sft", "grpo"],
                        help="which stage of the recipe to read (default sft)")
    parser.add_argument("--batch-size", type=int, default=16, help="problems per generate call")
    parser.add_argument("--backend", default="auto", choices=["auto", "frugal", "hf"])
    parser.add_argument("--device", default="auto", help="auto (the GPU when torch sees one), cpu, cuda or cuda:N")
    parser.add_argument("--examples", type=int, default=0, metavar="N", help="print N example completions per task")
    parser.add_argument("--json", metavar="OUT", help="write the full report (per problem too) as JSON")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default; beside another job on few cores, set it)")
    parser.set_defaults(func=run)


def parse_task_config(items: list[str], base: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """`NAME.KEY=VALUE` items merged over `base` (a recipe's task_config)."""
    from frugal_r1.recipe import parse_override

    out = {name: dict(values) for name, values in (base or {}).items()}
    for item in items:
        if "=" not in item:
            raise UserError(f"--task-config {item!r}: use NAME.KEY=VALUE, e.g. chain_sum.max_terms=4")
        key, value = parse_override(item)
        name, _, field = key.rpartition(".")
        if not name or not field:
            raise UserError(f"--task-config {item!r}: use NAME.KEY=VALUE, e.g. chain_sum.max_terms=4")
        out.setdefault(name, {})[field] = value
    return out


def parse_task_budgets(items: list[str]) -> dict[str, int]:
    """`NAME=N` items -> {NAME: N}."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value.strip().isdigit():
            raise UserError(f"--task-max-new-tokens {item!r}: use NAME=N, e.g. countdown=768")
        out[name] = int(value)
    return out


def check_writable_file(path: Path, flag: str) -> None:
    """Before the work, not after it: `path` must be a file that can be written (its folder made if missing)."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")


def run(args: argparse.Namespace) -> int:
    from frugal_r1.device import resolve_device
    from frugal_r1.eval import console_for_stdout, evaluate
    from frugal_r1.generate import load_backend

    tasks, recipe_config = list(args.task or []), {}
    if args.config:
        from frugal_r1.recipe import load_stage

        data = load_stage(args.stage, args.config).data
        recipe_config = {k: v for k, v in data.task_config.items() if not tasks or k in tasks}
        tasks = tasks or list(data.tasks)
    if not tasks:
        raise UserError("name a task with --task NAME (or give a recipe with --config)")
    tasks = list(dict.fromkeys(tasks))  # a task named twice is evaluated (and averaged) once
    if args.examples < 0:
        raise UserError(f"--examples must be >= 0, got {args.examples}")
    if args.json:
        check_writable_file(Path(args.json), "--json")
    resolve_device(args.device, what="--device")  # a bad --device is named as the flag, before the model loads
    for name, value in (("--n", args.n), ("--samples", args.samples), ("--max-new-tokens", args.max_new_tokens),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    task_config = parse_task_config(args.task_config, recipe_config)
    backend = load_backend(args.model, backend=args.backend, device=args.device)
    report = evaluate(backend, tasks, n=args.n, samples=args.samples, temperature=args.temperature,
                      top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.sampling_seed,
                      prompt_format=args.prompt_format, task_seed=args.seed, task_config=task_config,
                      batch_size=args.batch_size, progress=not args.no_progress,
                      num_examples=max(3, args.examples), model_name=str(args.model),
                      task_max_new_tokens=parse_task_budgets(args.task_max_new_tokens))
    console = console_for_stdout()
    report.print(console)
    for task in report.tasks:
        for example in task.examples[:args.examples]:
            console.rule(f"{task.task} #{example['index']}  score {example['score']}  ({example['reason'] or 'ok'})")
            console.print(example["completion"], markup=False, highlight=False)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        console.print(f"wrote {path}")
    return 0
