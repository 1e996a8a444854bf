"""Training text from tasks: an endless, seeded stream of reasoning traces, as documents or chat examples.

Example i of a stream (seed s) is fully determined by (s, i): the task is drawn with the configured
weights from random.Random(f"{s}:task:{i}"), the problem is row i of that task (reasoning-gym datasets
are generated lazily per index; a JSONL task wraps around), and the trace's search order comes from
random.Random(f"{s}:trace:{i}"). So the data position of a run is one integer (the packer's) and
resuming regenerates exactly the same text.

Two renderings of the same trace:
- pretraining document: "{question}\n<think>\n…</think>\n<answer>…</answer>" between bos and eos;
- SFT example: the chat prompt (render_chat with the generation prompt, which ends in "<think>\n") and
  the completion the model must write after it, with the loss on the completion only.
JSONL rows with a reference answer (e.g. distilled traces) are used verbatim as the completion.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from frugal_r1.chat import THINK_START, render_chat
from frugal_r1.errors import UserError
from frugal_r1.recipe import DataConfig
from frugal_r1.tasks import Task, load_task

STREAM_SIZE = 10**8  # rows per reasoning-gym task: generated lazily, so size costs nothing


def open_tasks(data: DataConfig, seed: int) -> list[Task]:
    if not data.tasks:
        raise UserError("data.tasks is empty: name at least one task (--task NAME)")
    unknown = sorted(set(data.task_config) - set(data.tasks))
    if unknown:
        raise UserError(f"data.task_config has entries for tasks not in data.tasks: {', '.join(unknown)}")
    unsized = sorted(set(data.task_sizes) - set(data.tasks))
    if unsized:
        raise UserError(f"data.task_sizes has entries for tasks not in data.tasks: {', '.join(unsized)}")
    tasks = []
    for name in data.tasks:
        size = None if name.startswith("jsonl:") else data.task_sizes.get(name, STREAM_SIZE)
        tasks.append(load_task(name, size=size, seed=seed, **data.task_config.get(name, {})))
    return tasks


def task_weight_list(tasks: list[Task], weights: dict[str, float], setting: str = "data.task_weights") -> list[float]:
    """Each task's weight from the table (1.0 where unnamed). Raises UserError naming `setting` on a bad table."""
    names = [t.name for t in tasks]
    bad = sorted(set(weights) - set(names))
    if bad:
        raise UserError(f"{setting} names tasks not in data.tasks: {', '.join(bad)}")
    w = [float(weights.get(name, 1.0)) for name in names]
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise UserError(f"{setting} must be non-negative with a positive sum")
    return w


def problem_stream(tasks: list[Task], weights: dict[str, float], seed: int | str,
                   setting: str = "data.task_weights") -> Callable[[int], tuple[Task, dict]]:
    """index -> (task, row), deterministic in (seed, index); `setting` names the weights' table in errors."""
    w = task_weight_list(tasks, weights, setting)

    def problem(index: int) -> tuple[Task, dict]:
        task = random.Random(f"{seed}:task:{index}").choices(tasks, weights=w)[0]
        return task, task[index % len(task)]

    return problem


def completion_for(task: Task, row: dict[str, Any], seed: int, index: int) -> str:
    """The assistant's text after the generation prompt "<think>\\n": a generated trace or the JSONL answer."""
    if task.name.startswith("jsonl:"):
        answer = str(row["answer"])
        return answer.removeprefix(THINK_START + "\n") if answer.startswith(THINK_START) else answer
    from frugal_r1.traces import make_trace

    trace = make_trace(task.name, row, random.Random(f"{seed}:trace:{index}"))
    return trace.removeprefix(THINK_START + "\n")


def question_text(row: dict[str, Any]) -> str:
    prompt = row["prompt"]
    if isinstance(prompt, list):  # JSONL messages: the last user turn
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return users[-1] if users else ""
    return str(prompt)


def chat_prompt(row: dict[str, Any]) -> str:
    prompt = row["prompt"]
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    return render_chat(messages, add_generation_prompt=True)


def pretraining_prompt(row: dict[str, Any]) -> str:
    """The start of a pretraining document, up to where the model's reasoning begins."""
    return f"{question_text(row)}\n{THINK_START}\n"


def pretrain_documents(tasks: list[Task], weights: dict[str, float], seed: int) -> Callable[[int], str]:
    problem = problem_stream(tasks, weights, seed)

    def document(index: int) -> str:
        task, row = problem(index)
        return pretraining_prompt(row) + completion_for(task, row, seed, index)

    return document


def sft_pairs(tasks: list[Task], weights: dict[str, float], seed: int) -> Callable[[int], tuple[str, str]]:
    problem = problem_stream(tasks, weights, seed)

    def pair(index: int) -> tuple[str, str]:
        task, row = problem(index)
        return chat_prompt(row), completion_for(task, row, seed, index)

    return pair
