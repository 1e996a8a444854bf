"""Where a model's countdown or puzzle24 searches go wrong, on held-out problems.

    .venv/bin/python examples/search_errors.py runs/speedrun/sft/final [--task countdown] [--n 100] [--samples 2]
    .venv/bin/python examples/search_errors.py runs/probe/final --prompt pretrain --samples 1   # a pretrained model

Samples `--n` problems of the speedrun's held-out set (its reasoning-gym seed and task config) `--samples` times
(T 0.6, top-p 0.95; greedy with one sample), scores each completion with the task's verifier, and reads its search
back (frugal_r1/traces/search_errors.py): how often the `left` lists are right at each depth, and for every wrong
completion the first mistake on its winning path. The findings in traces/search.py's docstring come from it.
"""

from __future__ import annotations

import argparse
import collections

from frugal_r1.eval import task_prompt
from frugal_r1.generate import load_backend
from frugal_r1.generate.backend import SamplingParams
from frugal_r1.speedrun.run import SpeedrunConfig
from frugal_r1.tasks import load_task
from frugal_r1.traces.__main__ import TASK_CONFIGS
from frugal_r1.traces.search_errors import read_search
from frugal_r1.train.corpus import pretraining_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--task", choices=["countdown", "puzzle24"], default="countdown")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--prompt", choices=["chat", "pretrain"], default="chat",
                        help="chat: the SFT'd format; pretrain: '{question}\\n<think>\\n'")
    parser.add_argument("--max-new-tokens", type=int, default=896)
    args = parser.parse_args()

    backend = load_backend(args.model)
    task = load_task(args.task, size=args.n, seed=SpeedrunConfig().eval_seed, **TASK_CONFIGS[args.task])
    rows = [task[i] for i in range(args.n)]
    prompts = [task_prompt(backend.tokenizer, row["prompt"], "chat") if args.prompt == "chat"
               else pretraining_prompt(row) for row in rows]
    greedy = args.samples == 1
    params = SamplingParams(temperature=0.0 if greedy else 0.6, top_p=1.0 if greedy else 0.95,
                            max_new_tokens=args.max_new_tokens, n=args.samples, seed=0)
    checks, outcomes = collections.Counter(), collections.Counter()
    for completion in backend.generate(prompts, params):
        row = rows[completion.prompt_index]
        text = completion.text or ""
        numbers, target = row["metadata"]["numbers"], row["metadata"].get("target", 24)
        reading = read_search(text, numbers, target)
        checks.update(reading.left_checks)
        outcomes["right" if task.score(text, row) > 0 else f"wrong: {reading.first_error}"] += 1
    print(f"{args.task}, {args.n} held-out problems x {args.samples}, {args.model}")
    for depth, name in ((1, "first step (from the given numbers)"), (2, "second step (two numbers left)")):
        total = checks[(depth, True)] + checks[(depth, False)]
        if total:
            print(f"  `left` right at the {name}: {checks[(depth, True)]}/{total} = {checks[(depth, True)] / total:.0%}")
    for outcome, count in outcomes.most_common():
        print(f"  {count:5d}  {outcome}")


if __name__ == "__main__":
    main()
