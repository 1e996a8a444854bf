"""basic_arithmetic traces: + - * / with parentheses, unary minus and negative numbers.

The expression (`metadata["expression"]`) is reduced one operation at a time by
`arithmetic.evaluate`: innermost parentheses first, then `*` and `/` left to right, then `+` and `-`;
after each operation the whole expression is written again with the result in place, so precedence is
shown rather than remembered. reasoning-gym computes `/` as Python's `//`; its divisions are exact in
all but a few rows, which are written with a remainder and rounded down, so answers match
reasoning-gym's `str(int)` answers exactly.
"""

from __future__ import annotations

import random
from typing import Any

from frugal_r1.traces.arithmetic import evaluate, tokenize


def basic_arithmetic_steps(row: dict[str, Any], rng: random.Random) -> tuple[list[str], str]:
    """Trace lines and the answer text for a basic_arithmetic row (deterministic)."""
    lines, value = evaluate(tokenize(row["metadata"]["expression"]))
    return lines, str(value)
