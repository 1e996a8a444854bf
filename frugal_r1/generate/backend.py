"""What every generation backend shares: the request and result types, the `Backend` interface, and the
per-row bookkeeping (budgets, stop tokens, stop strings, assembling `Completion`s).

A backend turns prompts (token ids, or text when it has a tokenizer) into `Completion`s under one
`SamplingParams`. Two live in process and share one decode loop (engine.py): `Engine` for frugal-r1's
DeepSeek-V3 on its latent cache, and `HFBackend` for any transformers causal LM directory. A vLLM backend
for GPUs would implement the same `generate` by translating `SamplingParams` into vLLM's (stop,
stop_token_ids, seed, logprobs=0 with raw log-probs) and reading its outputs into `Completion`s.

Semantics every backend keeps:
- `temperature == 0` is greedy; top-k / top-p then do nothing.
- `Completion.logprobs[i]` is log_softmax(logits)[token_ids[i]] of the *unmodified* model (no temperature,
  no top-k/top-p): the policy log-probability GRPO's importance ratio π/π_old needs.
- A stop token (the eos unless `ignore_eos`, plus `stop_token_ids`) ends a sequence and is kept in
  `token_ids` / `logprobs` (the model chose to stop; training should see that) but not in `text`.
- A stop string ends a sequence at the token that completes it (searched in the generated text only). `token_ids` / `logprobs` keep every token
  through that one; `text` is cut exactly before the stop string's first occurrence (excluded, as in
  OpenAI's API), so `text` may be shorter than decode(token_ids).
- `finish_reason` is "stop" (a stop token or string) or "length" (max_new_tokens, or the context full).
- Randomness is per row: row r (prompt i, sample j) draws from a counter-based generator keyed by
  (seed, i, j), so a completion depends on its prompt, its index and the seed, not on the other rows of
  the batch, on compaction, or on how many rows finished before it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from frugal_r1.errors import UserError

Prompt = Sequence[int] | str


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches top_p; in (0, 1]
    top_k: int = 0  # 0: off
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False  # the eos does not stop (benchmarks; fixed-length rollouts)
    seed: int | None = None  # None: drawn from torch's global generator
    n: int = 1  # completions per prompt (GRPO's group size)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p!r}")
        for name in ("top_k", "max_new_tokens", "n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name} must be an integer, got {value!r}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if self.max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if self.n < 1:
            raise UserError(f"n must be >= 1, got {self.n}")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise UserError(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise UserError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise UserError(f"seed must be an integer or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]  # raw model log-probs of token_ids (see the module docstring)
    finish_reason: Literal["stop", "length"]
    text: str | None = None  # None when the backend has no tokenizer
    stop: int | str | None = None  # the stop token id or stop string that ended it
    prompt_index: int = 0
    sample_index: int = 0
    draft_tokens: int = 0  # speculative decoding: drafts proposed for this sequence
    accepted_draft_tokens: int = 0


def acceptance_rate(completions: Sequence[Completion]) -> float | None:
    """Accepted / proposed MTP drafts over completions (None without speculative decoding)."""
    drafted = sum(c.draft_tokens for c in completions)
    return sum(c.accepted_draft_tokens for c in completions) / drafted if drafted else None


class Backend(ABC):
    """Generates completions for a batch of prompts. Subclasses set `tokenizer` (or None)."""

    tokenizer: Any = None

    @property
    @abstractmethod
    def context_length(self) -> int:
        """The most positions (prompt + completion) the model may use."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def config_eos_token_id(self) -> int | None: ...

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]: ...

    @property
    def eos_token_id(self) -> int | None:
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            return int(self.tokenizer.eos_token_id)
        return self.config_eos_token_id

    def stop_ids(self, params: SamplingParams) -> list[int]:
        ids = set(params.stop_token_ids)
        if not params.ignore_eos and self.eos_token_id is not None:
            ids.add(self.eos_token_id)
        bad = sorted(i for i in ids if i >= self.vocab_size)
        if bad:
            raise UserError(f"stop token ids {bad} are outside the vocabulary of {self.vocab_size}")
        return sorted(ids)

    def encode_prompts(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[int]]:
        """Token ids per prompt, validated against the vocabulary and the context."""
        if isinstance(prompts, (str, torch.Tensor)):
            raise UserError("prompts must be a list of prompts (strings or lists of token ids)")
        if params.stop_strings and self.tokenizer is None:
            raise UserError("stop_strings need a tokenizer; this backend has none")
        out = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                if self.tokenizer is None:
                    raise UserError("text prompts need a tokenizer; pass token ids or load one")
                ids = _encode_text(self.tokenizer, prompt)
            else:
                ids = [int(t) for t in prompt]
            if not ids:
                raise UserError(f"prompt {i} is empty")
            if min(ids) < 0 or max(ids) >= self.vocab_size:
                raise UserError(f"prompt {i} has token ids outside [0, {self.vocab_size})")
            if len(ids) >= self.context_length:
                raise UserError(f"prompt {i} has {len(ids)} tokens; the context holds {self.context_length}, "
                                "which leaves no room to generate")
            out.append(ids)
        return out


def _encode_text(tokenizer, text: str) -> list[int]:
    """bos (when the tokenizer has one and the text does not start with it) + ids of the text."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    """Special tokens are kept: `<think>` and `<answer>` tags are special tokens in frugal-r1's vocabulary."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def load_local_tokenizer(path: str | Path):
    """The tokenizer in a model directory, or None when it holds none. Never touches the network."""
    directory = Path(path)
    if not any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the tokenizer in {directory}: {error}") from None


# ------------------------------------------------------------------------------------------------------
@dataclass
class Rows:
    """Tokens, log-probs and finish state of every row of one `generate` call, kept as tensors.

    Rows are the prompts repeated n times (prompt-major). `append` takes up to K new tokens for a subset
    of rows (the rows still in the batch), stops a row at its first stop token, stop string or budget,
    and returns which of the given rows are now finished.
    """

    prompts: list[list[int]]
    params: SamplingParams
    stop_ids: list[int]
    context_length: int
    tokenizer: Any = None
    tokens: torch.Tensor = field(init=False)
    logprobs: torch.Tensor = field(init=False)
    count: torch.Tensor = field(init=False)
    budget: torch.Tensor = field(init=False)
    finished: torch.Tensor = field(init=False)
    drafted: torch.Tensor = field(init=False)
    accepted: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        n = self.params.n
        self.row_prompts = [p for p in self.prompts for _ in range(n)]
        rows = len(self.row_prompts)
        self.prompt_lengths = torch.tensor([len(p) for p in self.row_prompts], dtype=torch.long)
        self.budget = (self.context_length - self.prompt_lengths).clamp(max=self.params.max_new_tokens)
        width = int(self.budget.max())
        self.tokens = torch.zeros(rows, width, dtype=torch.long)
        self.logprobs = torch.zeros(rows, width, dtype=torch.float32)
        self.count = torch.zeros(rows, dtype=torch.long)
        self.finished = torch.zeros(rows, dtype=torch.bool)
        self.drafted = torch.zeros(rows, dtype=torch.long)
        self.accepted = torch.zeros(rows, dtype=torch.long)
        self.stop_reason: list[int | str | None] = [None] * rows
        self._stop_tensor = torch.tensor(self.stop_ids, dtype=torch.long)
        longest = max((len(s) for s in self.params.stop_strings), default=0)
        # A stop string of L characters spans at most 4L byte-level tokens; a few more give context.
        self._window = 4 * longest + 4

    @property
    def num_rows(self) -> int:
        return len(self.row_prompts)

    @property
    def max_budget(self) -> int:
        return self.tokens.shape[1]

    def append(self, rows: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor,
               num: torch.Tensor | None = None) -> torch.Tensor:
        """rows [b] (row ids, unfinished), tokens / logprobs [b, K], num [b] valid tokens per row (default K).

        Returns finished [b] bool.
        """
        batch, k = tokens.shape
        count, budget = self.count[rows], self.budget[rows]
        if k == 1 and num is None:  # plain decoding: an unfinished row always has room for one more
            stopped = torch.isin(tokens[:, 0], self._stop_tensor)
            self.tokens[rows, count] = tokens[:, 0]
            self.logprobs[rows, count] = logprobs[:, 0].float()
            num = torch.ones_like(count)
        else:
            num = torch.full((batch,), k, dtype=torch.long) if num is None else num.clone()
            slot = torch.arange(k)[None, :]
            is_stop = torch.isin(tokens, self._stop_tensor) & (slot < num[:, None])
            hit_stop = is_stop.any(dim=1)
            num = torch.where(hit_stop, is_stop.float().argmax(dim=1) + 1, num)
            num = torch.minimum(num, budget - count)
            keep = slot < num[:, None]
            columns = (count[:, None] + slot).clamp(max=self.max_budget - 1)
            row_index = rows[:, None].expand(-1, k)
            self.tokens[row_index[keep], columns[keep]] = tokens[keep]
            self.logprobs[row_index[keep], columns[keep]] = logprobs[keep].float()
            stopped = (is_stop & keep).any(dim=1)
        self.count[rows] = count + num
        finished = stopped | (count + num >= budget)
        if stopped.any():
            for i in stopped.nonzero().flatten().tolist():
                row = int(rows[i])
                self.stop_reason[row] = int(self.tokens[row, self.count[row] - 1])
        if self.params.stop_strings:
            finished |= self._check_stop_strings(rows, count, num, stopped)
        self.finished[rows] = finished
        return finished

    def _check_stop_strings(self, rows: torch.Tensor, before: torch.Tensor, num: torch.Tensor,
                            stopped_by_token: torch.Tensor) -> torch.Tensor:
        """Per row and new token (a stop token excluded): does a stop string end at that token?"""
        hits = torch.zeros(len(rows), dtype=torch.bool)
        for i, (row, start, added) in enumerate(zip(rows.tolist(), before.tolist(), num.tolist())):
            last = start + added - (1 if stopped_by_token[i] else 0)
            ids = self.tokens[row]
            for end in range(start + 1, last + 1):
                window = decode_text(self.tokenizer, ids[max(0, end - self._window):end].tolist())
                if not any(s in window for s in self.params.stop_strings):
                    continue
                text = decode_text(self.tokenizer, ids[:end].tolist())  # confirm on the exact text
                if any(s in text for s in self.params.stop_strings):
                    self.count[row] = end
                    self.stop_reason[row] = _first_stop(text, self.params.stop_strings)[1]
                    hits[i] = True
                    break
        return hits

    def record_drafts(self, rows: torch.Tensor, accepted: torch.Tensor) -> None:
        self.drafted[rows] += 1
        self.accepted[rows] += accepted.long()

    def completions(self) -> list[Completion]:
        out = []
        for row, prompt in enumerate(self.row_prompts):
            count = int(self.count[row])
            ids = self.tokens[row, :count].tolist()
            stop = self.stop_reason[row]
            text = None
            if self.tokenizer is not None:
                text = decode_text(self.tokenizer, ids[:-1] if isinstance(stop, int) else ids)
                if isinstance(stop, str):
                    text = text[: _first_stop(text, self.params.stop_strings)[0]]
            out.append(Completion(
                prompt_ids=list(prompt), token_ids=ids, logprobs=self.logprobs[row, :count].tolist(),
                finish_reason="stop" if stop is not None else "length", text=text, stop=stop,
                prompt_index=row // self.params.n, sample_index=row % self.params.n,
                draft_tokens=int(self.drafted[row]), accepted_draft_tokens=int(self.accepted[row]),
            ))
        return out


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, str]:
    """(index, stop string) of the earliest-starting stop string in text."""
    return min((text.find(s), s) for s in stops if s in text)


__all__ = ["SamplingParams", "Completion", "Backend", "Rows", "Prompt", "acceptance_rate", "decode_text",
           "load_local_tokenizer"]
