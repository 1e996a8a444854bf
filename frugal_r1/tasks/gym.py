"""reasoning-gym adapter: any registered dataset as rows `{"prompt", "answer", "metadata"}`.

Rows are generated on demand by index (reasoning-gym datasets are deterministic per `(seed, index)`),
so a task of a million rows costs nothing until it is read; the last `ROW_CACHE_SIZE` are kept.
`metadata` is reasoning-gym's own, plus:

- `task`: the dataset name; `verifier`: which verifier scores it (`rewards.verifiers.verifier_for`);
- `task_config`: `{"size", "seed", "config"}`, enough to rebuild the dataset (the `gym` verifier does,
  in its worker process);
- for countdown and puzzle24: `target` (24 for puzzle24), `operators` (the ones the question allows;
  countdown's questions name none, so all four) and `number_rule`. Every countdown template says
  "using all … numbers", even the one that adds "each number may be used at most once", and
  reasoning-gym's own scorer demands all of them, so the rule is "all" unless a question says "at most
  once" without "all"; puzzle24 is always "all".
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
from typing import Any, Callable

from frugal_r1.errors import UserError
from frugal_r1.rewards.verifiers import verifier_for

ROW_CACHE_SIZE = 100_000


def gym_names() -> list[str]:
    """Every dataset name reasoning-gym registers."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def unknown_task_error(name: str) -> UserError:
    """An error for a name that is neither a reasoning-gym dataset nor `jsonl:PATH`, with close matches."""
    close = difflib.get_close_matches(name, gym_names(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if name.endswith((".jsonl", ".json")):
        hint = f"; did you mean jsonl:{name}?"
    return UserError(f"unknown task {name!r}{hint} (a task is a reasoning-gym dataset name, e.g. countdown, "
                     "or jsonl:PATH for a JSONL file)")


def number_rule(question: str) -> str:
    """How a countdown-style question says the given numbers must be used: "all" or "at_most"."""
    text = " ".join(question.lower().split())
    if "at most once" in text and not re.search(r"\ball\b", text):
        return "at_most"
    return "all"


def _create(name: str, size: int, seed: int, config: dict[str, Any]) -> Any:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    config_cls = DATASETS[name][1]
    known = {field.name for field in dataclasses.fields(config_cls)} - {"size", "seed"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise UserError(f"{name}: unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return reasoning_gym.create_dataset(name, size=size, seed=seed, **config)
    except (TypeError, ValueError, AssertionError) as error:
        raise UserError(f"{name}: invalid config {config}: {error}") from None


def gym_rows(
    name: str, size: int | None, seed: int, config: dict[str, Any]
) -> tuple[int, Callable[[int], dict[str, Any]]]:
    """`(number of rows, row(index))` for reasoning-gym dataset `name`. Raises UserError."""
    if name not in gym_names():
        raise unknown_task_error(name)
    if size is None:
        from reasoning_gym.factory import DATASETS

        size = next(f.default for f in dataclasses.fields(DATASETS[name][1]) if f.name == "size")
    if not isinstance(size, int) or size < 1:
        raise UserError(f"{name}: size must be a positive integer, got {size!r} (an empty task has no rows)")
    dataset = _create(name, size, seed, config)
    verifier = verifier_for(name)
    task_config = {"size": size, "seed": seed, "config": dict(config)}
    operators = "".join(getattr(dataset.config, "operators", "+-*/"))

    # Some datasets are slow to generate (puzzle24: ~50 ms a row), and training reads rows many times.
    generate = functools.lru_cache(maxsize=ROW_CACHE_SIZE)(dataset.__getitem__)

    def row(index: int) -> dict[str, Any]:
        entry = copy.deepcopy(generate(index))  # callers may change their row; the cache must not
        metadata = dict(entry["metadata"], task=name, verifier=verifier, task_config=task_config)
        if name == "puzzle24":
            metadata.update(target=24, operators=operators, number_rule="all")
        elif name == "countdown":
            metadata.update(operators="+-*/", number_rule=number_rule(entry["question"]))
        return {"prompt": entry["question"], "answer": entry["answer"], "metadata": metadata}

    return size, row
