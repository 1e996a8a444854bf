"""`python -m frugal_r1.traces --demo [--seed N]`: print one trace per task, as in docs/traces.md.

`--stats N` prints trace lengths (characters, and tokens of a BPE trained on the traces themselves
with the project tokenizer) over N rows per task. The task configs are the speedrun's (`TASK_CONFIGS`).
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
from typing import Any, Callable

from frugal_r1.tasks import load_task
from frugal_r1.traces import TRACE_TASKS, make_trace

TASK_CONFIGS: dict[str, dict[str, Any]] = {
    "chain_sum": {},
    "basic_arithmetic": {"max_digits": 2, "max_terms": 4},
    "leg_counting": {},
    "countdown": {"min_numbers": 3, "max_numbers": 4, "min_value": 1, "max_value": 50,
                  "min_target": 10, "max_target": 100},
    "puzzle24": {},
}
# The demo shows, per task, the first row that exercises most of its trace format.
_SHOWCASE: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "chain_sum": lambda row, trace: row["metadata"]["num_terms"] >= 4 and row["metadata"]["num_digits"] >= 3
    and "-(" in trace and any(":" in line and "-(" not in line for line in trace.split("\n")),
    "basic_arithmetic": lambda row, trace: "(" in row["metadata"]["expression"]
    and re.search(r"\d\d \* -?\d\d", row["metadata"]["expression"]) is not None and abs(int(row["answer"])) < 5000,
    "leg_counting": lambda row, trace: " = 0" in trace and "+ 13 *" in trace,
    "countdown": lambda row, trace: len(row["metadata"]["numbers"]) == 4 and "Wait" in trace,
    "puzzle24": lambda row, trace: "Wait" in trace,
}


def demo(seed: int) -> str:
    """Markdown: for each task, a question and its trace."""
    parts = []
    for name in TRACE_TASKS:
        task = load_task(name, size=200, seed=seed, **TASK_CONFIGS[name])
        for index in range(len(task)):
            row = task[index]
            trace = make_trace(name, row, random.Random(seed + index))
            if _SHOWCASE[name](row, trace):
                break
        parts.append(f"### {name}\n\n```\n{row['prompt'].strip()}\n```\n\n```\n{trace}\n```\n\n"
                     f"score: {task.score(trace, row)}\n")
    return "\n".join(parts)


def stats(rows: int, seed: int) -> str:
    """A table of trace lengths per task."""
    from frugal_r1.tokenizer import train_tokenizer

    traces = {}
    for name in TRACE_TASKS:
        task = load_task(name, size=rows, seed=seed, **TASK_CONFIGS[name])
        traces[name] = [make_trace(name, row, random.Random(seed + i)) for i, row in enumerate(task)]
    tokenizer = train_tokenizer([t for ts in traces.values() for t in ts], 2048)
    lines = ["task              chars mean   max   tokens mean   p90   max"]
    for name, ts in traces.items():
        chars = [len(t) for t in ts]
        tokens = sorted(len(tokenizer(t)["input_ids"]) for t in ts)
        lines.append(f"{name:17s} {statistics.mean(chars):10.0f} {max(chars):5d} {statistics.mean(tokens):13.0f} "
                     f"{tokens[int(0.9 * len(tokens))]:5d} {tokens[-1]:5d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frugal_r1.traces", description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="print one trace per task (markdown)")
    parser.add_argument("--stats", type=int, metavar="N", help="trace length statistics over N rows per task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.demo and not args.stats:
        parser.print_help()
        return 2
    if args.demo:
        print(demo(args.seed))
    if args.stats:
        print(stats(args.stats, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
