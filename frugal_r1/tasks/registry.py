"""`load_task` and `Task`: one interface over reasoning-gym datasets and JSONL files.

`load_task("countdown", size=1000, seed=0, min_numbers=3)` builds a reasoning-gym dataset (its config
keys pass through); `load_task("jsonl:data/gsm8k.jsonl", verifier="math")` reads a file. A `Task` is a
sized, indexable sequence of rows `{"prompt", "answer", "metadata"}`; `task.score(completion, row)`
and `task.verify(completion, row)` check a completion with the verifier the row names
(`frugal_r1.rewards.verifiers`), so a row carried elsewhere (a GRPO batch, an eval sample) can still be
scored with `rewards.verify(completion, row)` alone.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator

from frugal_r1.errors import UserError
from frugal_r1.rewards.verifiers import Verdict, verify
from frugal_r1.tasks.gym import gym_rows, unknown_task_error
from frugal_r1.tasks.jsonl import jsonl_rows

JSONL_PREFIX = "jsonl:"


class Task:
    """Rows of one task, by index, and the way to score a completion against one of them."""

    def __init__(self, name: str, size: int, row: Callable[[int], dict[str, Any]]) -> None:
        self.name = name
        self._size = size
        self._row = row

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not isinstance(index, int):
            raise TypeError(f"task indices are integers, not {type(index).__name__}")
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError(f"row {index} of a task with {self._size} rows")
        return self._row(index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.rows()

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every row, in order."""
        return (self._row(i) for i in range(self._size))

    def verify(self, completion: str, row: dict[str, Any]) -> Verdict:
        """Score and whether an answer could be read at all. Never raises."""
        return verify(completion, row)

    def score(self, completion: str, row: dict[str, Any]) -> float:
        """A float in [0, 1] for `completion` (the model's whole text, R1 format). Never raises."""
        return verify(completion, row).score

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self._size} rows)"


def load_task(name: str, size: int | None = None, seed: int = 0, **config: Any) -> Task:
    """A reasoning-gym dataset by name (`size` defaults to its own default, `config` passes through),
    or `jsonl:PATH` (`size` keeps the first rows; the only config key is `verifier`).
    Raises UserError for an unknown name, a bad config, a malformed file or an empty task."""
    if not isinstance(name, str) or not name:
        raise UserError(f"a task name is a reasoning-gym dataset or jsonl:PATH, got {name!r}")
    if name.startswith(JSONL_PREFIX):
        path = name[len(JSONL_PREFIX) :]
        unknown = sorted(set(config) - {"verifier"})
        if unknown:
            raise UserError(f"{name}: unknown config key(s) {', '.join(unknown)}; a JSONL task takes only verifier")
        rows = jsonl_rows(path, size, **config)
        return Task(name, len(rows), lambda index: copy.deepcopy(rows[index]))
    if ":" in name:
        raise unknown_task_error(name)
    count, row = gym_rows(name, size, seed, config)
    return Task(name, count, row)
