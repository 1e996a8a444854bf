"""countdown and puzzle24 traces: a visible depth-first search (Stream-of-Search style), then a check.

A trace opens with `Numbers 8 5 10 6, target 24.` and then searches by combining two of the numbers:

    8+5=13, left 10 6 13.                         one step: the two numbers, the result, what is left
    13-10=3, left 6 3: 6+3=9, 6*3=18, none is 24.  two numbers left: try the operations on them
    Wait, back to 8 5 10 6.                        a dead end: the state to continue from, restated
    8*6=48, left 5 10 48.
    10/5=2, left 48 2: 48-2=46, 48/2=24, found 24.
    Check 8*6=48 is 8 * 6, 10/5=2 is 10 / 5, 48/2=24 is 8 * 6 / (10 / 5). Uses 8 6 10 5.

Design choices:
- Integers only, and (while searching) only positive results: `a-b` and `a/b` are written larger first,
  a division only when exact, a product only up to `PRODUCT_LIMIT` (200; a 2-digit by 2-digit product is
  a step the model cannot take in its head, and the targets are at most 100). No fractions: every
  reasoning-gym puzzle24 and countdown row is built from a chain of integer steps. The few rows these
  rules cannot solve (about 0.7% of countdown; no puzzle24 row) get their winning path under looser
  rules: any product, then negative and zero intermediates too.
- The order of the search comes from `rng`: at each node the candidate steps are either shuffled or
  sorted by how close their numbers come to the target (with noise), with a per-trace probability, so
  the same row searched with another seed tries other steps first. Steps that give a multiset of numbers
  already tried at that node are skipped.
- Each inner node (not the first) tries at most 1-3 of its children before backing up ("Wait, back to
  ..." restates the state, so the model copies it rather than keeping a stack in its head). The search
  shows at most a budget of 3-10 attempts (drawn per trace); when that runs out without a hit it backs up
  to the start and walks a solution path found by an exhaustive solver, preferring a first step not yet
  tried. That path is written exactly like the search, and it is always correct. With the speedrun
  configs the search finds the answer itself in ~70% of countdown and ~40% of puzzle24 traces; ~65% and
  ~83% of traces show at least one failed attempt.
  The solver path is an oracle the model cannot imitate, so a complete search with none was tried: every
  step in `_children`'s fixed order until one hits (dead branches before the winning one cut to 900
  characters). Trained on countdown alone (2,000 pretraining + 40 SFT steps, one thread, 2026-12-05) it
  scored 0.5% pass@1 against 4.5% for these traces (100 held-out problems x 2): its longer searches take
  many more one-step sums of two-digit numbers, which the model gets wrong ("48+21=76", "25-25=1"), and
  43% of its completions ran past 896 tokens. Two-digit arithmetic in one step, not the search, is what
  the model lacks here.
- What goes wrong (examples/search_errors.py reads a model's searches back; the speedrun's held-out problems,
  100 x 2 samples at T 0.6). countdown, the seed-0 SFT model of this recipe (2026-12-07): 21 of 200 right; the
  winning path first went wrong at `found` after a try that missed the target 79 times, at an operand not on the
  table 41, at a `left` list 28, at a fact 12; 10 had a right path and a wrongly composed answer, 9 ran out of
  tokens; `left` lists were right 65% of the time at the first step and 73% at the second. The seed-1 SFT model
  of 2026-12-06 (the trial subtraction format's run, the same search traces): 13 right; `left` 77 (mostly an
  operand kept and another number dropped, `48-21=27, left 48 15 27.`), missed 35, operand 33, a fact 26, out of
  tokens 14, composed wrongly 2; `left` right 34% / 59%. So the search's bookkeeping fails more often than its
  arithmetic. puzzle24, the seed-0 model: 53 right, 78 out of tokens, and 53 composed wrongly from a right path
  (`7+7=14`, `14+10=24`, `24*1=24, found 24`, answered `7 * (7 + 7 + 10)`); `left` right 74% / 84%.
  With the current arithmetic (docs/speedrun-avx2-subtraction, seed-0 SFT model, same protocol): countdown 15 of 200
  right; an operand not on the table 68, missed 41, a fact 34, `left` 22. The operands are mostly numbers nothing
  made (from 8 36 2: `26+9=35`, then `26-9=17` on the next line): of 69 such first errors in a rerun, 11 on the first
  step line, 7 right after `Wait, back to ...`, 51 further into the search, where an invented number, once
  written, is reused.
  Tried and not kept (2026-12-07), each trained on countdown alone (examples/probe_pretraining.py, 2,000 steps,
  seed 0; 100 held-out problems, greedy), with the share of `left` lists right at the first and the second step:
  the list of what is left (these traces) 41% / 47%, greedy accuracy 1%; a table of slots in the question's
  order with the result in the left operand's slot and `_` in the right's (`8-5=3, left 3 _ 10 6.`), so each
  slot copies the slot above it, 4% / 9%, accuracy 0%; both operands' slots blanked and the result appended
  (`8-5=3, left _ _ 10 6 3.`) 0% / 0%, accuracy 0%. Marking or filling an operand's place is harder for this
  model than leaving it out.
  Also tried (2026-12-07), on puzzle24: a check line that builds the answer back from the winning path, latest
  step first (`Check 24 = 24 * 1 = (17 + 7) * 1 = (10 + 7 + 7) * 1. Uses 10 7 7 1.`), instead of recomputing it.
  puzzle24 alone, 2,000 steps, seed 0, 100 of the speedrun's held-out problems, greedy
  (examples/search_errors.py --prompt pretrain --samples 1), new against current: right 14 vs 23, a right path
  composed wrongly 8 vs 18, out of tokens 46 vs 29, first-step `left` lists right 50% vs 82%. Seeds 1 and 2, one
  probe at a time: right 19 vs 18 and 24 vs 15, composed wrongly 21 vs 23 and 12 vs 19. Over the three seeds
  right 57 vs 56, composed wrongly 41 vs 60: a third fewer composition errors and no more right answers; not kept.
  Also tried (2026-12-07): no solver path the model cannot imitate — each row's trace is the first of up to 20
  searches (fresh order and budget each) that finds the answer itself, the solver path only when none does (traces
  18% shorter). countdown alone, 2,000 steps, seed 0, 100 held-out problems, greedy (examples/search_errors.py
  --prompt pretrain --samples 1), new against current: right 2 vs 5; a wrong fact 45 vs 12 — the fact before
  `found` written to equal the target (`57+38=95`) —, out of tokens 35 vs 62, `left` lists right 29% / 23% vs
  48% / 35%. The model still claims a hit after a few tries; the claim moved from `found` into the arithmetic.
  Also tried (2026-12-07), against the commonest error above (`found` after a try that missed): each last step
  written with the target beside its result and then the verdict (`72-48=24 vs 43 no`, `57+38=95 vs 95 yes, found
  95.`; countdown traces 16% longer in characters). countdown alone, 2,000 steps, seed 0, 100 held-out problems,
  greedy (examples/search_errors.py --prompt pretrain --samples 1), new against current: right 0 vs 0, out of
  tokens 61 vs 89, closed without a hit 38 vs 7, `left` lists right 20% / 34% vs 30% / 32%. The verdict followed
  the prior, not the pair (`76-48=43 vs 43 no`: nine tries in ten are misses). Not kept; a countdown-alone probe
  of this length gets no answer right either way, so it can rank countdown formats only by their errors.
- The answer uses every given number once (countdown's scorer requires all of them, puzzle24's too),
  with spaces around operators and parentheses wherever the search's grouping differs from reading left
  to right (`8 * 3 * (9 / 9)`). The check line builds it forward along the winning path: each step's fact,
  then `is` and the expression that fact stands for, an intermediate operand written as the expression of
  the clause that made it (`5*3=15 is 5 * 3, 15+9=24 is 5 * 3 + 9, 24*1=24 is (5 * 3 + 9) * 1`). The last
  expression is the answer, a copy of the text just before it; then the numbers it uses. The check line
  used to write the answer whole and then recompute it (`Check (5 * 3 + 9) * 1 = 24: 5*3=15, 15+9=24,
  24*1=24.`), and a quarter of the speedrun model's puzzle24 samples found 24 on a right path and then
  wrote a wrong expression. puzzle24 alone, 2,000 pretraining steps, seeds 1 and 2, one probe at a time,
  100 of the speedrun's held-out problems, greedy (examples/search_errors.py --prompt pretrain --samples 1),
  forward against the whole-answer line: a right path composed wrongly 8 vs 23 and 5 vs 19, right 16 vs 18
  and 25 vs 15 (2026-12-07). The answers freed from composition errors mostly ran into the search's own
  (out of tokens, a wrong `left` list), which is why right answers rose less than composition errors fell.
  The whole speedrun with it (AVX2 EPYC, seed 0, against the same run with the whole-answer line): the SFT
  model's puzzle24 samples (examples/search_errors.py --task puzzle24, 100 x 2) right 90 vs 53 of 200, composed
  wrongly 14 vs 53, out of tokens 39 vs 78; puzzle24 pass@1 after GRPO 42.1% vs 33.5%, the mean 47.1% vs 47.7%.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any, Union

PRODUCT_LIMIT = 200
BUDGET = (3, 10)  # attempts shown before the solver path, drawn per trace
CHILDREN = (1, 3)  # children an inner node tries before backing up, drawn per node
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}

Expr = Union[int, tuple[str, "Expr", "Expr"]]


@dataclass(frozen=True)
class Rules:
    """Which steps a search may take."""

    product_limit: int | None
    negatives: bool  # also zero and negative results, and both orders of - and /


SEARCH_RULES = Rules(PRODUCT_LIMIT, negatives=False)
RULE_TIERS = (SEARCH_RULES, Rules(None, negatives=False), Rules(None, negatives=True))


@dataclass(frozen=True)
class Item:
    """A number on the table and the expression over the given numbers that made it."""

    value: int
    expr: Expr


@dataclass(frozen=True)
class Step:
    """Combining two items: `left op right = result`; `rest` is what else is on the table."""

    op: str
    left: Item
    right: Item
    result: Item
    rest: tuple[Item, ...]

    @property
    def state(self) -> tuple[Item, ...]:
        return self.rest + (self.result,)

    def text(self) -> str:
        return f"{_num(self.left.value)}{self.op}{_num(self.right.value)}={self.result.value}"


def _num(value: int) -> str:
    return f"({value})" if value < 0 else str(value)


def _moves(x: int, y: int, rules: Rules) -> list[tuple[str, bool, int]]:
    """`(op, swapped, value)` for x op y (y op x when swapped), x >= y, allowed by `rules`."""
    moves = [("+", False, x + y)]
    if x - y > 0 or rules.negatives:
        moves.append(("-", False, x - y))
    if rules.negatives and y - x != x - y:
        moves.append(("-", True, y - x))
    if rules.product_limit is None or x * y <= rules.product_limit:
        moves.append(("*", False, x * y))
    if y != 0 and x % y == 0:
        moves.append(("/", False, x // y))
    if rules.negatives and x != 0 and y % x == 0 and x != y:
        moves.append(("/", True, y // x))
    if not rules.negatives:
        moves = [move for move in moves if move[2] > 0]
    return moves


def _children(state: tuple[Item, ...], rules: Rules) -> list[Step]:
    """Every step from `state`, one per distinct resulting multiset of numbers."""
    steps, seen = [], set()
    for i in range(len(state)):
        for j in range(i + 1, len(state)):
            a, b = (state[i], state[j]) if state[i].value >= state[j].value else (state[j], state[i])
            rest = tuple(item for k, item in enumerate(state) if k not in (i, j))
            for op, swapped, value in _moves(a.value, b.value, rules):
                left, right = (b, a) if swapped else (a, b)
                key = tuple(sorted([item.value for item in rest] + [value]))
                if key not in seen:
                    seen.add(key)
                    steps.append(Step(op, left, right, Item(value, (op, left.expr, right.expr)), rest))
    return steps


@functools.lru_cache(maxsize=1 << 18)
def _solvable(values: tuple[int, ...], target: int, tier: int) -> bool:
    """Whether the sorted `values` can make `target` under `RULE_TIERS[tier]`, using all of them."""
    if len(values) == 1:
        return values[0] == target
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            x, y = max(values[i], values[j]), min(values[i], values[j])
            rest = [v for k, v in enumerate(values) if k not in (i, j)]
            for _, _, value in _moves(x, y, RULE_TIERS[tier]):
                if _solvable(tuple(sorted(rest + [value])), target, tier):
                    return True
    return False


def _key(state: tuple[Item, ...]) -> tuple[int, ...]:
    return tuple(sorted(item.value for item in state))


def _numbers(state: tuple[Item, ...]) -> str:
    return " ".join(_num(item.value) for item in state)


def render(expr: Expr, parent: str | None = None, right: bool = False) -> str:
    """The expression with spaces around operators, parenthesised so that reading it left to right
    with precedence computes exactly the steps of the search: `8 * 3 * (9 / 9)`, not `8 * 3 * 9 / 9`."""
    if isinstance(expr, int):
        return str(expr)
    op, left, right_expr = expr
    text = f"{render(left, op)} {op} {render(right_expr, op, True)}"
    if parent is not None and (_PRECEDENCE[op] < _PRECEDENCE[parent]
                               or (right and _PRECEDENCE[op] == _PRECEDENCE[parent])):
        return f"({text})"
    return text


def _evaluation(expr: Expr) -> tuple[list[str], int]:
    """The steps computing `expr` left subtree first, and its value (exact: divisions divide)."""
    if isinstance(expr, int):
        return [], expr
    op, left, right = expr
    left_steps, a = _evaluation(left)
    right_steps, b = _evaluation(right)
    value = {"+": a + b, "-": a - b, "*": a * b}.get(op)
    if value is None:
        if b == 0 or a % b:
            raise ValueError(f"inexact division {a}/{b}")
        value = a // b
    return left_steps + right_steps + [f"{_num(a)}{op}{_num(b)}={value}"], value


def _leaves(expr: Expr) -> list[int]:
    return [expr] if isinstance(expr, int) else _leaves(expr[1]) + _leaves(expr[2])


class _Search:
    """One trace's depth-first search; `lines` is what gets written."""

    def __init__(self, numbers: list[int], target: int, rng: random.Random) -> None:
        self.root = tuple(Item(n, n) for n in numbers)
        self.target = target
        self.rng = rng
        self.budget = rng.randint(*BUDGET)
        self.greedy = rng.random()
        self.tried_first: set[tuple[int, ...]] = set()
        self.lines = [f"Numbers {_numbers(self.root)}, target {target}."]

    def _ordered(self, steps: list[Step]) -> list[Step]:
        if self.rng.random() < self.greedy:
            noise = 0.2 * self.target
            return sorted(steps, key=lambda s: min(abs(i.value - self.target) for i in s.state)
                          + noise * self.rng.random())
        steps = list(steps)
        self.rng.shuffle(steps)
        return steps

    def _finish(self, step: Step, rules: Rules) -> Step | None:
        """Write `step` leaving two numbers and the tries on them; the final step when one hits."""
        finals = _children(step.state, rules)
        self.rng.shuffle(finals)
        head, tries = f"{step.text()}, left {_numbers(step.state)}: ", []
        for final in finals:
            tries.append(final.text())
            if final.result.value == self.target:
                self.lines.append(f"{head}{', '.join(tries)}, found {self.target}.")
                return final
        self.lines.append(f"{head}{', '.join(tries)}, none is {self.target}.")
        return None

    def explore(self, state: tuple[Item, ...], depth: int) -> list[Step] | None:
        """Search below `state` within the budget; the winning steps, or None after backing out."""
        children = self._ordered(_children(state, SEARCH_RULES))
        if depth:
            children = children[: self.rng.randint(*CHILDREN)]
        for index, step in enumerate(children):
            if self.budget <= 0:
                return None
            self.budget -= 1
            if depth == 0:
                self.tried_first.add(_key(step.state))
            if len(step.state) == 2:
                final = self._finish(step, SEARCH_RULES)
                if final is not None:
                    return [step, final]
                continue
            self.lines.append(f"{step.text()}, left {_numbers(step.state)}.")
            path = self.explore(step.state, depth + 1)
            if path is not None:
                return [step] + path
            if self.budget > 0 and index + 1 < len(children):
                self.lines.append(f"Wait, back to {_numbers(state)}.")
        return None

    def solve(self, tier: int) -> list[Step]:
        """Walk a solution path under `RULE_TIERS[tier]`, written like the search."""
        rules, state, path = RULE_TIERS[tier], self.root, []
        while True:
            good = [s for s in _children(state, rules) if _solvable(_key(s.state), self.target, tier)]
            if not path:
                good = [s for s in good if _key(s.state) not in self.tried_first] or good
            step = self.rng.choice(good)
            path.append(step)
            if len(step.state) == 2:
                final = self._finish(step, rules)
                assert final is not None
                return path + [final]
            self.lines.append(f"{step.text()}, left {_numbers(step.state)}.")
            state = step.state

    def run(self) -> tuple[list[str], str]:
        if len(self.root) == 1:
            raise ValueError("a search needs at least two numbers")
        tier = next((t for t in range(len(RULE_TIERS)) if _solvable(_key(self.root), self.target, t)), None)
        if tier is None:
            raise ValueError(f"{_numbers(self.root)} cannot make {self.target} with integer steps")
        if len(self.root) == 2:
            path = self._two(tier)
        else:
            path = self.explore(self.root, 0)
            if path is None:
                back = f"Wait, back to {_numbers(self.root)}."
                if self.lines[-1] != back and len(self.lines) > 1:
                    self.lines.append(back)
                path = self.solve(tier)
        expr = path[-1].result.expr
        _, value = _evaluation(expr)
        if value != self.target or sorted(_leaves(expr)) != sorted(i.value for i in self.root):
            raise AssertionError(f"search produced a wrong expression {render(expr)}")
        answer = render(expr)
        built = ", ".join(f"{step.text()} is {render(step.result.expr)}" for step in path)
        self.lines.append(f"Check {built}. Uses {' '.join(str(n) for n in _leaves(expr))}.")
        return self.lines, answer

    def _two(self, tier: int) -> list[Step]:
        finals = [s for s in _children(self.root, RULE_TIERS[tier]) if s.result.value == self.target]
        final = self.rng.choice(finals)
        self.lines.append(f"{final.text()}, found {self.target}.")
        return [final]


def search_steps(numbers: list[int], target: int, rng: random.Random) -> tuple[list[str], str]:
    """Trace lines and the answer expression for making `target` from all of `numbers`."""
    return _Search([int(n) for n in numbers], int(target), rng).run()


def countdown_steps(row: dict[str, Any], rng: random.Random) -> tuple[list[str], str]:
    """Trace lines and answer for a countdown row (`metadata` numbers and target)."""
    return search_steps(row["metadata"]["numbers"], row["metadata"]["target"], rng)


def puzzle24_steps(row: dict[str, Any], rng: random.Random) -> tuple[list[str], str]:
    """Trace lines and answer for a puzzle24 row (target from `metadata`, else 24)."""
    return search_steps(row["metadata"]["numbers"], row["metadata"].get("target", 24), rng)
