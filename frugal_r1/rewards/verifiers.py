"""Verifiers: score a completion against a task row, safely.

`verify(completion, row) -> Verdict(score, parsed, reason)`; `score(completion, row) -> float`. The row
says which verifier applies in `row["metadata"]["verifier"]` (the task loaders set it; `verifier_for`
picks it for a reasoning-gym dataset):

- `numeric`   chain_sum, basic_arithmetic, leg_counting. Exact rational comparison, never float: an
              optional sign, ASCII digits (thousands separators allowed only as well-formed `,ddd`
              groups), an optional `.digits` part and an optional `/digits` denominator. No exponents,
              no unicode digits, no surrounding text; whitespace around the answer is ignored.
- `expression` countdown, puzzle24: `expression.evaluate` (an `ast` walk over integer literals and
              `+ - * /`, exact fractions, bounded), then the row's `numbers` used by its `number_rule`
              and the value equal to its `target`. The loader sets the rule from the question text;
              every countdown and puzzle24 question says to use all the numbers, each once.
- `math`      JSONL math sets (GSM8K …): both sides plain numbers → compared exactly here; otherwise
              math-verify's `parse`/`verify` on answers of at most `MAX_MATH_CHARS` characters, in a
              worker process (below).
- `gym`       any other reasoning-gym dataset whose own `score_answer` reads as safe (see
              `gym_scorer_problem`): it runs in the worker process on the extracted answer.
- `exact`     reasoning-gym datasets whose scorer is *not* safe, and JSONL sets that ask for it: the
              answer equals the reference after collapsing whitespace.

Safety. No verifier evals, execs or sympifies model text in this process. reasoning-gym's own scorer is
refused, statically, when the module that defines it (or a reasoning-gym module it uses) calls a
code-running builtin, sympy's parsers, math_verify, subprocess, `os.system`, pickle or `import_module`
(the list is `_UNSAFE_SOURCE`): in 0.1.25 that is countdown, puzzle24 (sympy's expression parser),
polynomial_*, *_integration, advanced_geometry, propositional_logic (sympy), codeio (a code-running
builtin), number_sorting, spiral_matrix, binary_matrix, n_queens, string_insertion, bitwise_arithmetic
(`eval`) and composite (it delegates). Those score by exact match instead.

Time. math-verify calls sympy, which can run for hours (`9^{9^{9^{9}}}`), and its own timeout uses
`signal.alarm`, which only works in the main thread. So math and gym scoring run in worker processes
(one per concurrent caller), each answer under a wall-clock deadline (`WORKER_TIMEOUT_S`) that works
from any thread: a worker that overruns is killed. Workers are forks of one "zygote" process that has
imported math-verify and reasoning-gym, so a replacement is ready in milliseconds. Workers cap their own
memory and CPU time per job, so one left behind by a dead parent cannot run away. The first call starts
the zygote (about a second; `warm_up()` does it ahead), and the first gym call of a dataset in a worker
builds the dataset there; neither depends on model text. Every verifier catches everything and returns
a Verdict: a broken answer scores 0.0, it never raises.

The worker bounds time and memory; it is not a security sandbox. What runs there on model text is
math-verify (LaTeX through an ANTLR parser; plain expressions through sympy's expression parser only
after its regex has limited them to digits, operators and parentheses) and the reasoning-gym scorers that pass
the scan above.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import re
import sys
import types
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from frugal_r1.rewards.expression import ALL_OPERATORS, Unparsable, evaluate, uses_numbers
from frugal_r1.rewards.extract import answer_tag, math_answer
from frugal_r1.rewards.sandbox import POOL

log = logging.getLogger(__name__)

MAX_NUMBER_CHARS = 100
MAX_MATH_CHARS = 1_000
MAX_GYM_ANSWER_CHARS = 20_000
WORKER_TIMEOUT_S = 0.8  # per answer; leaves room for extraction and the kill inside 1 s

NUMERIC_TASKS = frozenset({"chain_sum", "basic_arithmetic", "leg_counting"})
EXPRESSION_TASKS = frozenset({"countdown", "puzzle24"})
VERIFIER_NAMES = ("numeric", "expression", "math", "exact", "gym")


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one completion. `score` is in [0, 1]; `parsed` is False when no answer
    could be read at all (no `<answer>` pair, not a number, not an expression), which the eval counts
    apart from a wrong answer; `reason` says why, for people reading samples."""

    score: float
    parsed: bool
    reason: str = ""


# --- numeric --------------------------------------------------------------------------------------

_NUMBER = re.compile(r"([+-]?)([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?(?:/([0-9]+))?")


def parse_number(text: str | None) -> Fraction | None:
    """An exact number from `text` ("-12", "+1,234", "3.50", "7/2"), or None if it is not one."""
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS:
        return None
    match = _NUMBER.fullmatch(text.strip().replace("\u2212", "-"))
    if match is None:
        return None
    sign, whole, decimals, denominator = match.groups()
    value = Fraction(int(whole.replace(",", "")))
    if decimals:
        value += Fraction(int(decimals), 10 ** len(decimals))
    if denominator:
        if int(denominator) == 0:
            return None
        value /= int(denominator)
    return -value if sign == "-" else value


def check_numeric(answer: str | None, reference: str) -> Verdict:
    """Exact comparison of two numbers."""
    if answer is None:
        return Verdict(0.0, False, "no <answer>…</answer>")
    value = parse_number(answer)
    if value is None:
        return Verdict(0.0, False, "answer is not a number")
    expected = parse_number(str(reference))
    if expected is None:
        return Verdict(0.0, True, f"reference {str(reference)[:40]!r} is not a number")
    return Verdict(1.0, True) if value == expected else Verdict(0.0, True, "wrong number")


# --- expression -----------------------------------------------------------------------------------


def check_expression(
    answer: str | None,
    numbers: list[int],
    target: int,
    rule: str = "all",
    operators: str = ALL_OPERATORS,
) -> Verdict:
    """An arithmetic expression that uses `numbers` by `rule` and equals `target` exactly."""
    if answer is None:
        return Verdict(0.0, False, "no <answer>…</answer>")
    try:
        result = evaluate(answer, operators)
    except Unparsable as error:
        return Verdict(0.0, False, f"not an allowed expression: {error}")
    if not uses_numbers(result.literals, list(numbers), rule):
        how = "each exactly once" if rule == "all" else "each at most once"
        return Verdict(0.0, True, f"uses {sorted(result.literals)}, not {sorted(numbers)} {how}")
    if result.value is None:
        return Verdict(0.0, True, result.error or "no value")
    if result.value != Fraction(target):
        return Verdict(0.0, True, f"equals {result.value}, not {target}")
    return Verdict(1.0, True)


# --- exact ----------------------------------------------------------------------------------------


def check_exact(answer: str | None, reference: str) -> Verdict:
    """Equal to the reference after collapsing runs of whitespace."""
    if answer is None:
        return Verdict(0.0, False, "no <answer>…</answer>")
    same = " ".join(answer.split()) == " ".join(str(reference).split())
    return Verdict(1.0, True) if same else Verdict(0.0, True, "not the reference answer")


# --- math -----------------------------------------------------------------------------------------


def check_math(answer: str | None, reference: str, timeout: float = WORKER_TIMEOUT_S) -> Verdict:
    """Plain numbers compared exactly; anything else by math-verify in a worker under `timeout`."""
    if answer is None:
        return Verdict(0.0, False, "no <answer>…</answer> or \\boxed{}")
    if len(answer) > MAX_MATH_CHARS:
        return Verdict(0.0, False, f"answer longer than {MAX_MATH_CHARS} characters")
    reference = str(reference)
    value, expected = parse_number(answer), parse_number(reference)
    if value is not None and expected is not None:
        return Verdict(1.0, True) if value == expected else Verdict(0.0, True, "wrong number")
    if len(reference) > MAX_MATH_CHARS:
        return Verdict(0.0, True, "reference too long for math-verify")
    reply = POOL.run(("math", reference, answer), timeout)
    if "error" in reply:
        return Verdict(0.0, True, reply["error"])
    if not reply.get("parsed"):
        return Verdict(0.0, False, "math-verify could not parse the answer")
    return Verdict(1.0, True) if reply.get("equal") else Verdict(0.0, True, "not equal (math-verify)")


# --- reasoning-gym's own scorers ------------------------------------------------------------------

_UNSAFE_SOURCE = re.compile(  # safe: patterns searched for in reasoning-gym's source; nothing is run
    r"(?<![\w.])(?:eval|exec|compile|__import__)\s*\(|parse_expr|sympify|parse_latex|\bsympy\b|\bsp\."  # safe: same
    r"|math_verify|subprocess|os\.system|\bpickle\b|import_module"
)
_REFUSED = {"composite": "it delegates to other datasets' scorers"}
_NOT_SCANNED = ("reasoning_gym.factory", "reasoning_gym.dataset", "reasoning_gym.coaching")


def _gym_modules(module: types.ModuleType, depth: int = 2) -> set[types.ModuleType]:
    """`module` and the reasoning-gym modules whose names it imports, `depth` levels down."""
    found = {module}
    if depth == 0:
        return found
    for value in list(vars(module).values()):
        inner = value if isinstance(value, types.ModuleType) else inspect.getmodule(value)
        name = getattr(inner, "__name__", "")
        if inner is not None and inner not in found and name.startswith("reasoning_gym."):
            if not name.startswith(_NOT_SCANNED):
                found |= _gym_modules(inner, depth - 1)
    return found


@functools.lru_cache(maxsize=None)
def gym_scorer_problem(name: str) -> str | None:
    """Why reasoning-gym's own `score_answer` for `name` must not see model text, or None if it may."""
    if name in _REFUSED:
        return _REFUSED[name]
    from reasoning_gym.dataset import ProceduralDataset
    from reasoning_gym.factory import DATASETS

    dataset_cls = DATASETS[name][0]
    owner = next(cls for cls in dataset_cls.__mro__ if "score_answer" in vars(cls))
    if owner is ProceduralDataset:
        return None  # the base class: plain string comparison
    for module in sorted(_gym_modules(sys.modules[owner.__module__]), key=lambda m: m.__name__):
        try:
            match = _UNSAFE_SOURCE.search(inspect.getsource(module))
        except (OSError, TypeError):
            return f"cannot read the source of {module.__name__}"
        if match:
            return f"{module.__name__} uses {match.group(0).strip()!r}"
    return None


def check_gym(answer: str | None, row: dict[str, Any], timeout: float = WORKER_TIMEOUT_S) -> Verdict:
    """reasoning-gym's own scorer, in a worker under `timeout`; only for datasets it is safe for."""
    if answer is None:
        return Verdict(0.0, False, "no <answer>…</answer>")
    if len(answer) > MAX_GYM_ANSWER_CHARS:
        return Verdict(0.0, True, f"answer longer than {MAX_GYM_ANSWER_CHARS} characters")
    metadata = row["metadata"]
    problem = gym_scorer_problem(metadata["task"])
    if problem is not None:
        return Verdict(0.0, True, f"reasoning-gym's scorer refused: {problem}")
    spec = metadata["task_config"]
    key = (metadata["task"], spec["size"], spec["seed"], json.dumps(spec["config"], sort_keys=True, default=str))
    entry = {"question": row["prompt"], "answer": row["answer"], "metadata": metadata}
    reply = POOL.run(("gym", key, answer, entry), timeout, setup=(key, ("gym_setup", key, spec)))
    if "error" in reply:
        return Verdict(0.0, True, reply["error"])
    value = reply.get("score")
    value = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0
    value = min(1.0, max(0.0, value))
    return Verdict(value, True, "" if value == 1.0 else "reasoning-gym score")


# --- choosing and calling -------------------------------------------------------------------------


def verifier_for(task_name: str) -> str:
    """The verifier for a reasoning-gym dataset (see the module docstring)."""
    if task_name in NUMERIC_TASKS:
        return "numeric"
    if task_name in EXPRESSION_TASKS:
        return "expression"
    return "gym" if gym_scorer_problem(task_name) is None else "exact"


def _by_verifier(name: str, completion: str, row: dict[str, Any]) -> Verdict:
    metadata = row["metadata"]
    if name == "numeric":
        return check_numeric(answer_tag(completion), row["answer"])
    if name == "expression":
        return check_expression(
            answer_tag(completion),
            metadata["numbers"],
            metadata["target"],
            metadata.get("number_rule", "all"),
            metadata.get("operators", ALL_OPERATORS),
        )
    if name == "math":
        return check_math(math_answer(completion), row["answer"])
    if name == "exact":
        return check_exact(answer_tag(completion), row["answer"])
    if name == "gym":
        return check_gym(answer_tag(completion), row)
    raise ValueError(f"unknown verifier {name!r}; expected one of {VERIFIER_NAMES}")


def verify(completion: str, row: dict[str, Any]) -> Verdict:
    """Check `completion` (the model's whole text, R1 format) against `row`. Never raises."""
    if not isinstance(completion, str):
        return Verdict(0.0, False, "completion is not text")
    try:
        metadata = row["metadata"]
        name = metadata.get("verifier") or verifier_for(metadata["task"])
        return _by_verifier(name, completion, row)
    except Exception as error:  # a bug or a malformed row: log it, never take a training run down
        log.warning("verifier failed: %s: %s", type(error).__name__, error)
        return Verdict(0.0, False, f"verifier error: {type(error).__name__}: {error}"[:300])


def score(completion: str, row: dict[str, Any]) -> float:
    """`verify(completion, row).score`."""
    return verify(completion, row).score


def warm_up() -> None:
    """Start a worker now, so the first math or gym answer does not wait for one."""
    POOL.warm_up()
