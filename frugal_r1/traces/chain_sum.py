"""chain_sum traces: a left-to-right chain of + and - on integers, one operation a line.

`4821 + 397 - 1200` becomes `4821 + 397: 1+7=8, 2+9=11, 8+3+1=12, 4+0+1=5, so 5218` then
`5218 - 1200: ...` (see `arithmetic` for the column format). Each line starts from the running total;
its second operand is the term after the one the previous line used, read from the question. The chain
is not restated or rewritten after each step (that made a 6-term, 4-digit trace ~430 tokens instead of
~300; basic_arithmetic, which has precedence, does rewrite). The chain comes from
`metadata["expression"]`.
"""

from __future__ import annotations

import random
from typing import Any

from frugal_r1.traces.arithmetic import evaluate, tokenize


def chain_sum_steps(row: dict[str, Any], rng: random.Random) -> tuple[list[str], str]:
    """Trace lines and the answer text for a chain_sum row (deterministic: `rng` is not needed)."""
    lines, value = evaluate(tokenize(row["metadata"]["expression"]), rewrite=False)
    return lines, str(value)
