"""Reading a model's countdown / puzzle24 search back: is each `left` list right, and where did the winning
path first go wrong?

A search completion is written as the traces teach it (search.py):

    Numbers 48 21 41 15, target 43.
    48+21=69, left 41 15 69.                       a step from the given numbers (depth 1)
    69-41=28, left 15 28: 28+15=43, found 43.      a step leaving two numbers, then the tries on them
    Check ...

`read_search` replays the step lines against the numbers they should start from (the given numbers for a
depth-1 step, the last depth-1 step's list for a step leaving two) and reports, for every step line, whether
its `left` list is what that step leaves; then it follows the path that ends at the first `found` and names
the first thing on it that is wrong:

    operand      an operand that is not on the table the step starts from
    fact         the step's arithmetic (`48+21=76`)
    left         the list written after `left`
    final fact   the hitting try: its arithmetic, or numbers that are not the two left
    missed       `found` after a try whose result is not the target
    no found     the search never claims a hit (`truncated` when it also never closed </think>)
    none         nothing on the path is wrong (a wrong completion then composed its answer wrongly)

It judges only the search's own lines, never the answer: whether the completion is right is the verifier's
call (frugal_r1.rewards). examples/search_errors.py runs it over a model's held-out completions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from frugal_r1.traces.search import _evaluation

STEP = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+), left ([\d ]+)([.:])(.*)$")
FACT = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


@dataclass
class SearchReading:
    """`left_checks`: (depth, right) per step line; `first_error`: see the module docstring."""

    left_checks: list[tuple[int, bool]] = field(default_factory=list)
    first_error: str = "none"


def _apply(op: str, a: int, b: int) -> int | None:
    """a op b as the traces compute it (search._evaluation); None for an inexact division."""
    try:
        return _evaluation((op, a, b))[1]
    except ValueError:
        return None


def _without(numbers: list[int], *used: int) -> list[int] | None:
    """`numbers` with one occurrence of each of `used` removed, in order; None when one is missing."""
    rest = list(numbers)
    for value in used:
        if value not in rest:
            return None
        rest.remove(value)
    return rest


@dataclass(frozen=True)
class _Step:
    start: list[int]
    a: int
    op: str
    b: int
    result: int
    left: list[int]
    tries: str

    @property
    def left_right(self) -> bool:
        rest = _without(self.start, self.a, self.b)
        return rest is not None and rest + [self.result] == self.left

    def error(self) -> str | None:
        if _without(self.start, self.a, self.b) is None:
            return "operand"
        if _apply(self.op, self.a, self.b) != self.result:
            return "fact"
        return None if self.left_right else "left"


def read_search(text: str, numbers: list[int], target: int) -> SearchReading:
    """Read the search in a completion's text for the problem (`numbers`, `target`)."""
    reading = SearchReading()
    parent, last_first_step, found = list(numbers), None, None
    for line in text.split("Check")[0].split("\n"):
        match = STEP.match(line.strip())
        if not match:
            continue
        left = [int(x) for x in match[5].split()]
        depth = 1 if len(left) == len(numbers) - 1 else 2
        step = _Step(list(numbers) if depth == 1 else parent, int(match[1]), match[2], int(match[3]),
                     int(match[4]), left, match[7])
        reading.left_checks.append((depth, step.left_right))
        if depth == 1:
            last_first_step = step
        if match[6] == ".":
            parent = left
        if "found" in step.tries:
            found = step
            break
    if found is None:
        reading.first_error = "no found" if "</think>" in text else "truncated"
        return reading
    path = [found] if last_first_step in (None, found) else [last_first_step, found]
    for step in path:
        problem = step.error()
        if problem:
            reading.first_error = problem
            return reading
    tries = FACT.findall(found.tries)
    if not tries:
        reading.first_error = "final fact"
        return reading
    a, op, b, result = (int(x) if x.isdigit() else x for x in tries[-1])
    if sorted([a, b]) != sorted(found.left) or _apply(op, a, b) != result:
        reading.first_error = "final fact"
    elif result != target:
        reading.first_error = "missed"
    return reading


__all__ = ["SearchReading", "read_search"]
