"""The model side of the server's scheduler: a decode batch that requests can join, and per-row sampling.

`LatentBatch` (frugal-r1's DeepSeek-V3) runs continuous batching on the latent cache. All rows write at
one shared slot (cache.length) and each row's tokens sit right-aligned before it, masked by
`cache.valid`, with positions counted from the row's own first token (engine.py's layout). To let rows
join a running decode, `add` rebuilds the cache:
  1. slots before the first one any row still uses are dropped (rows that left freed them);
  2. the new length is max(span of the old rows, longest new prompt); old rows are copied right-aligned;
  3. the new prompts are prefilled in their own cache (chunked, as in engine.py) and copied in beside them;
  4. capacity = new length + the largest token budget any row still has.
A join costs one cache copy and the new rows' prefill; the rows already running lose one step's time,
not their place. `keep` drops finished or cancelled rows (the scheduler batches those drops, as the
engine does, because each one copies the cache).

`HFBatch` (any transformers causal LM) uses the engine's HF stepper on a `DynamicCache`, which has no
such layout to splice into, so rows join only when the batch is empty: everything waiting when the
model is free runs together.

`sample_rows` samples a batch whose rows have different sampling parameters and different step
counters, with exactly the engine's arithmetic: rows are grouped by (temperature, top_p, top_k) and each
group goes through `sampling.filtered_probs`; the uniform of row r at its step c is
`uniform(key_r + c·8φ, 0)`, which equals `uniform(key_r, c)` because the counter enters splitmix64 only
as key + (8c + stream + 1)·φ (mod 2^64). So a request with a seed gets the tokens `Engine.generate`
gives it alone, whatever else shares its batch (up to floating-point differences between batch shapes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from frugal_r1.generate.backend import SamplingParams
from frugal_r1.generate.engine import LatentStepper, left_pad
from frugal_r1.generate.sampling import SAMPLE, filtered_probs, sample_from, token_logprobs, uniform
from frugal_r1.model.cache import LatentCache

_EIGHT_PHI = ((8 * 0x9E3779B97F4A7C15) + (1 << 63)) % (1 << 64) - (1 << 63)  # 8φ as a wrapped int64


def sample_rows(logits: torch.Tensor, params: Sequence[SamplingParams], keys: torch.Tensor,
                counters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V], one SamplingParams, key and counter per row -> (tokens [B], raw log-probs [B])."""
    tokens = logits.argmax(dim=-1)
    groups: dict[tuple[float, float, int], list[int]] = {}
    for row, p in enumerate(params):
        if not p.greedy:
            groups.setdefault((p.temperature, p.top_p, p.top_k), []).append(row)
    if groups:
        u = uniform(keys + counters * _EIGHT_PHI, 0, SAMPLE)
        for rows in groups.values():
            index = torch.tensor(rows, dtype=torch.long)
            probs = filtered_probs(logits[index], params[rows[0]])
            tokens[index] = sample_from(probs, u[index])
    return tokens, token_logprobs(logits, tokens)


class Batch:
    """A decode batch: rows join with `add`, advance with `step`, leave with `keep`."""

    rows: int = 0

    def can_join(self) -> bool:
        raise NotImplementedError

    def add(self, prompts: list[list[int]], budgets: list[int], remaining: Sequence[int]) -> torch.Tensor:
        """Append rows for `prompts` (each may generate up to budgets[i] tokens); `remaining` is the token
        budget still left to each current row. Returns the new rows' next-token logits [b, V]."""
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def keep(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class LatentBatch(Batch):
    def __init__(self, model, prefill_tokens: int = 4096):
        self.model = model
        self.prefill_tokens = prefill_tokens
        self.cache: LatentCache | None = None

    @property
    def rows(self) -> int:
        return 0 if self.cache is None else self.cache.batch_size

    def can_join(self) -> bool:
        return True

    def add(self, prompts: list[list[int]], budgets: list[int], remaining: Sequence[int]) -> torch.Tensor:
        stepper = LatentStepper(self.model, self.prefill_tokens)
        ids, pad = left_pad(prompts, 0)
        logits = stepper.prefill(ids, pad, 0)
        new = stepper.cache
        if self.cache is None or self.rows == 0:
            span = 0
        else:
            used = self.cache.valid[:, :self.cache.length].any(dim=0).nonzero()
            first = int(used[0]) if len(used) else self.cache.length
            span = self.cache.length - first
        length = max(span, new.length)
        capacity = length + max([*budgets, *remaining, 1])
        old_rows = self.rows
        merged = LatentCache(self.model.config, old_rows + len(prompts), capacity, dtype=new.ckv.dtype,
                             device=new.ckv.device)
        merged.valid[:, :length] = False  # slots from `length` on hold the tokens still to come
        if old_rows:
            source = slice(self.cache.length - span, self.cache.length)
            target = slice(length - span, length)
            merged.ckv[:, :old_rows, target] = self.cache.ckv[:, :, source]
            merged.kpe[:, :old_rows, target] = self.cache.kpe[:, :, source]
            merged.valid[:old_rows, target] = self.cache.valid[:, source]
        target = slice(length - new.length, length)
        merged.ckv[:, old_rows:, target] = new.ckv[:, :, :new.length]
        merged.kpe[:, old_rows:, target] = new.kpe[:, :, :new.length]
        merged.valid[old_rows:, target] = new.valid[:, :new.length]
        merged.length = length
        self.cache = merged
        return logits

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(tokens[:, None], position_ids=positions[:, None], cache=self.cache, logits_to_keep=1)
        return out.logits[:, -1].float()

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.keep_rows(rows)

    def reset(self) -> None:
        self.cache = None


class HFBatch(Batch):
    def __init__(self, model, pad_id: int):
        from frugal_r1.generate.hf_backend import HFStepper

        self.stepper = HFStepper(model)
        self.pad_id = pad_id
        self._rows = 0

    @property
    def rows(self) -> int:
        return self._rows

    def can_join(self) -> bool:
        return self._rows == 0

    def add(self, prompts: list[list[int]], budgets: list[int], remaining: Sequence[int]) -> torch.Tensor:
        if self._rows:
            raise RuntimeError("HFBatch: rows can only join an empty batch")
        ids, pad = left_pad(prompts, self.pad_id)
        self._rows = len(prompts)
        return self.stepper.prefill(ids, pad, max(budgets))

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.stepper.step(tokens, positions)

    def keep(self, rows: torch.Tensor) -> None:
        self.stepper.keep(rows)
        self._rows = len(rows)

    def reset(self) -> None:
        self._rows = 0
        self.stepper.cache = None


def batch_for(backend) -> Batch:
    """The decode batch for a backend: continuous batching for ours, join-when-empty for transformers."""
    from frugal_r1.generate.engine import Engine
    from frugal_r1.generate.hf_backend import HFBackend

    if isinstance(backend, Engine):
        return LatentBatch(backend.model, backend.prefill_tokens)
    if isinstance(backend, HFBackend):
        return HFBatch(backend.model, backend.pad_id)
    raise TypeError(f"cannot serve a {type(backend).__name__}; serve needs an Engine or an HFBackend")


__all__ = ["sample_rows", "Batch", "LatentBatch", "HFBatch", "batch_for"]
