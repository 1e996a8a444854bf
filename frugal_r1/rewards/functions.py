"""Reward functions for GRPO, in TRL's interface: `fn(prompts, completions, **columns) -> list[float]`.

`prompts` and `completions` are lists of strings; `columns` holds one list per dataset column, aligned
with them (here: `row`, the task row each completion answers, and `finish_reason`). A user reward is any
callable of that shape, so a TRL reward function plugs in unchanged.

Built in (R1's rule-based rewards, plus DAPO's length shaping):
- accuracy: the task's safe verifier (F2) on the completion, in [0, 1];
- format:   1 when the text is `…</think>` then one `<answer>…</answer>` and nothing after (the chat
            generation prompt already opened `<think>`; an explicit leading `<think>` is accepted too);
- language: the fraction of the reasoning's letters in the target script (R1 stage 2's language
            consistency); digits, symbols and spaces are neutral;
- length:   DAPO's soft overlong penalty: 0 up to max_new_tokens − buffer, then falling linearly to −1 at
            max_new_tokens (the caller passes both).
`combine` weighs them into one reward per completion and keeps every function's values for the metrics.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from frugal_r1.rewards.verifiers import verify

RewardFn = Callable[..., list[float]]

_FORMAT = re.compile(r"\A(?:<think>)?[^<]*(?:<(?!/?think>|/?answer>)[^<]*)*</think>\s*<answer>[^<]*(?:<(?!/?answer>)[^<]*)*</answer>\s*\Z")


def accuracy_reward(prompts: Sequence[str], completions: Sequence[str], row: Sequence[dict], **_: Any) -> list[float]:
    return [verify(completion, r).score for completion, r in zip(completions, row)]


def format_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    return [1.0 if len(c) < 100_000 and _FORMAT.match(c) else 0.0 for c in completions]


def language_reward(prompts: Sequence[str], completions: Sequence[str], script: str = "LATIN", **_: Any) -> list[float]:
    out = []
    for completion in completions:
        reasoning = completion.split("</think>", 1)[0][:100_000]
        letters = [ch for ch in reasoning if ch.isalpha()]
        if not letters:
            out.append(1.0)
            continue
        in_script = sum(1 for ch in letters if unicodedata.name(ch, "").startswith(script))
        out.append(in_script / len(letters))
    return out


def length_penalty(max_new_tokens: int, buffer: int) -> RewardFn:
    """DAPO's soft overlong punishment on the completion's token count (column `num_tokens`)."""

    def length_reward(prompts, completions, num_tokens: Sequence[int], **_: Any) -> list[float]:
        limit = max_new_tokens - buffer
        return [0.0 if n <= limit else max(-1.0, (limit - n) / max(1, buffer)) for n in num_tokens]

    return length_reward


BUILT_IN: dict[str, RewardFn] = {"accuracy": accuracy_reward, "format": format_reward, "language": language_reward}


def combine(functions: dict[str, RewardFn], weights: dict[str, float], prompts: Sequence[str],
            completions: Sequence[str], **columns: Any) -> tuple[list[float], dict[str, list[float]]]:
    """Σ_f weight_f · f(...) per completion, and each function's raw values."""
    values = {}
    for name, fn in functions.items():
        scores = [float(x) for x in fn(list(prompts), list(completions), **columns)]
        if len(scores) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(scores)} values for {len(completions)} completions")
        values[name] = scores
    total = [sum(weights.get(name, 1.0) * values[name][i] for name in functions) for i in range(len(completions))]
    return total, values
