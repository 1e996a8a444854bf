"""Reasoning traces: worked solutions for SFT and pretraining, written from a task row's metadata.

`make_trace(task_name, row, rng)` returns the completion text
`<think>\\n{steps}\\n</think>\\n<answer>{answer}</answer>` for a reasoning-gym row
`{"prompt", "answer", "metadata"}` (the prompt is added by whoever builds the example). The answer is
formatted as reasoning-gym formats its own (`-4`, `292`, `45 - 29 + 18`) and always scores 1.0 under
`frugal_r1.rewards` (tests/test_traces.py checks thousands). One family per module: `arithmetic`
(column arithmetic shared by the rest), `chain_sum`, `basic_arithmetic`, `leg_counting`, `search`
(countdown and puzzle24). `python -m frugal_r1.traces --demo` prints one trace per task.

The arithmetic traces are deterministic; `rng` varies the search traces only (their order of attempts
and how much of the search is shown), so several traces of one row differ.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from frugal_r1.errors import UserError
from frugal_r1.traces.basic_arithmetic import basic_arithmetic_steps
from frugal_r1.traces.chain_sum import chain_sum_steps
from frugal_r1.traces.leg_counting import leg_counting_steps
from frugal_r1.traces.search import countdown_steps, puzzle24_steps

Steps = Callable[[dict[str, Any], random.Random], tuple[list[str], str]]

_GENERATORS: dict[str, Steps] = {
    "chain_sum": chain_sum_steps,
    "basic_arithmetic": basic_arithmetic_steps,
    "leg_counting": leg_counting_steps,
    "countdown": countdown_steps,
    "puzzle24": puzzle24_steps,
}
TRACE_TASKS: tuple[str, ...] = tuple(_GENERATORS)


def make_trace(task_name: str, row: dict[str, Any], rng: random.Random) -> str:
    """The completion `<think>\\n...\\n</think>\\n<answer>...</answer>` for `row` of `task_name`.

    Raises UserError for a task without a trace generator or a row it cannot solve."""
    generator = _GENERATORS.get(task_name)
    if generator is None:
        raise UserError(f"no reasoning traces for task {task_name!r}; traces exist for {', '.join(TRACE_TASKS)}")
    try:
        lines, answer = generator(row, rng)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        raise UserError(f"{task_name}: cannot write a trace for this row ({type(error).__name__}: {error}); "
                        "its metadata must be what reasoning-gym writes") from None
    return "<think>\n" + "\n".join(lines) + "\n</think>\n<answer>" + answer + "</answer>"


__all__ = ["TRACE_TASKS", "make_trace"]
