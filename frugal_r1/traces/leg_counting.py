"""leg_counting traces: the list of animals copied from the question, then one animal at a time.

`1 crab, 15 cows, 4 leechs` becomes
    1 crab, 15 cows, 4 leechs
    1 crab, 10 legs each: 1 * 10 = 10
    = 10 legs, then 15 cows, 4 leechs
    15 cows, 4 legs each: 15 * 4: 5*4=20, 1*4+2=6, so 60
    10 + 60: 0+0=0, 1+6=7, so 70
    = 70 legs, then 4 leechs
    4 leechs, 0 legs each: 4 * 0 = 0
    = 70 legs
Each line starts with the question's own words (`15 cows`, reasoning-gym's plural), so an animal's name is
a copy of the question's tokens rather than a second spelling the model must map each of 37 names to; and
after each animal the rest of the list is rewritten, so the next animal is a copy from the line just
written and the list visibly ends, as in chain_sum. Pretraining the speedrun's model on leg_counting alone
for 2,500 steps of 2 rows (2026-11-29), greedy held-out accuracy was 41% with this trace, 0% with the one
before it (`duck 2 legs, 5 * 2 = 10` a line, then `Total: ...`) and 1% with the question's words but no rewrite.
The running total is added as each animal is counted. Multiplications are worked as in `arithmetic` (2-digit
counts times 14 legs need partial products). The legs table is reasoning-gym's own `ANIMALS`, so the trace
and the answer can never disagree; the animals and counts come from `metadata["animals"]`.
"""

from __future__ import annotations

import random
from typing import Any

from reasoning_gym.arithmetic.leg_counting import ANIMALS

from frugal_r1.traces.arithmetic import add_sub, multiply


def _as_in_question(animal: str, count: int) -> str:
    return f"{count} {animal}{'s' if count > 1 else ''}"


def leg_counting_steps(row: dict[str, Any], rng: random.Random) -> tuple[list[str], str]:
    """Trace lines and the answer text for a leg_counting row (deterministic)."""
    animals = row["metadata"]["animals"]
    listed = [_as_in_question(animal, count) for animal, count in animals.items()]
    lines = [", ".join(listed)]
    total = None
    for index, (animal, count) in enumerate(animals.items()):
        legs = ANIMALS[animal]
        work, legs_here = multiply(count, legs)
        lines.append(f"{listed[index]}, {legs} legs each: {work[0]}")
        lines += work[1:]
        if total is None:
            total = legs_here
        elif legs_here:
            sum_lines, total = add_sub(total, "+", legs_here)
            lines += sum_lines
        rest = ", ".join(listed[index + 1:])
        lines.append(f"= {total} legs, then {rest}" if rest else f"= {total} legs")
    return lines, str(total)
