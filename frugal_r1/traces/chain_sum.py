"""chain_sum traces: a left-to-right chain of + and - on integers, one operation a line.

`4821 + 397 - 1200` is written out, then each line does the first operation of the chain and rewrites
what is left: `4821 + 397: 1+7=8, 2+9=11, 8+3+1=12, 4+0+1=5, so 5218`, `= 5218 - 1200`, and so on (see
`arithmetic` for the column format). The next operand is always the one right after the running total
on the line above, and the chain visibly ends when nothing follows it: the model copies from a line it
has just written instead of pointing into the question. That costs tokens (a 6-term, 4-digit chain was
~430 tokens instead of ~300, in the subtraction format of the time) and buys accuracy: pretraining the
speedrun's model on chain_sum alone for 3,000 steps of 2 rows (2026-11-29), greedy held-out accuracy was
67% with the rewrite and 21% without it.
The chain comes from `metadata["expression"]`.
"""

from __future__ import annotations

import random
from typing import Any

from frugal_r1.traces.arithmetic import evaluate, tokenize


def chain_sum_steps(row: dict[str, Any], rng: random.Random) -> tuple[list[str], str]:
    """Trace lines and the answer text for a chain_sum row (deterministic: `rng` is not needed)."""
    lines, value = evaluate(tokenize(row["metadata"]["expression"]))
    return lines, str(value)
