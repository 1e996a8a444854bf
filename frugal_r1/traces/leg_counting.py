"""leg_counting traces: legs per animal, one line (or a few) per animal, then the running sum.

Each animal gets `woodlouse 14 legs, 13 * 14 = ...` with the multiplication worked as in `arithmetic`
(2-digit counts times 14 legs need partial products). Animals with no legs are written (`snake 0 legs,
4 * 0 = 0`) but left out of the sum, `Total: 182 + 32 + 56`, which is then added up like a chain_sum. The
legs table is reasoning-gym's own `ANIMALS`, so the trace and the answer can never disagree; the counts
come from `metadata["animals"]`.
"""

from __future__ import annotations

import random
from typing import Any

from reasoning_gym.arithmetic.leg_counting import ANIMALS

from frugal_r1.traces.arithmetic import Token, evaluate, multiply, render


def leg_counting_steps(row: dict[str, Any], rng: random.Random) -> tuple[list[str], str]:
    """Trace lines and the answer text for a leg_counting row (deterministic)."""
    lines: list[str] = []
    totals: list[int] = []
    for animal, count in row["metadata"]["animals"].items():
        legs = ANIMALS[animal]
        work, total = multiply(count, legs)
        lines.append(f"{animal} {legs} legs, {work[0]}")
        lines += work[1:]
        if total:
            totals.append(total)
    if not totals:
        return lines + ["Total: 0"], "0"
    terms: list[Token] = [totals[0]]
    for total in totals[1:]:
        terms += ["+", total]
    sum_lines, value = evaluate(terms, rewrite=False)
    return lines + [f"Total: {render(terms)}"] + sum_lines, str(value)
