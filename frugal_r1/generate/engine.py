"""Batched generation for frugal-r1's DeepSeek-V3 on its pre-allocated latent cache, and the decode loop
that every in-process backend shares.

The loop (`decode`): left-pad the prompts, prefill, then one token per row per step until every row has
finished. A `Stepper` hides the model: `prefill` returns the last position's logits, `step` feeds one token
per row at explicit positions, `keep` drops batch rows. Rows that finish are compacted out of the batch
(and the cache) once at least `compact_fraction` of the batch has finished — compaction copies the
cache, so doing it every step would cost more than the rows it removes.

`LatentStepper` (our model):
- One `LatentCache` sized prompt + budget, in the model's dtype. Every row writes at the shared slot;
  `cache.valid` masks the left padding, and positions restart at 0 at each row's first real token, so a
  row's output does not depend on its neighbours' lengths.
- Prefill runs in chunks of the time axis (at most `prefill_tokens` tokens per forward), so a long
  batch never materialises a [B, H, P, P] score tensor.
- float32 by default: on this CPU a bf16 decode step is no faster than fp32 (measured in
  benchmarks/bench_generate.py), so `dtype` is a choice, not a default. No torch.compile: the MoE's
  data-dependent expert groups break its graphs, and the decode step is already matmul-bound at batch 64.
- Sampling and bookkeeping run on CPU tensors; a model on another device gets its inputs moved there
  and its logits moved back (one [B, V] copy per step).

`Engine` is the `Backend` for our model; `speculative=True` decodes with the MTP module drafting
(speculative.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch

from frugal_r1.errors import UserError
from frugal_r1.generate.backend import Backend, Completion, Prompt, Rows, SamplingParams, load_local_tokenizer
from frugal_r1.generate.sampling import row_keys, sample
from frugal_r1.model.cache import LatentCache


class Stepper(Protocol):
    """The model side of the decode loop."""

    def prefill(self, ids: torch.Tensor, pad: torch.Tensor, capacity: int) -> torch.Tensor:
        """ids [B, P] left-padded by pad [B]; room for `capacity` more tokens -> last logits [B, V]."""

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions [B] -> logits [B, V]."""

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows."""


@contextmanager
def evaluation(model):
    """Eval mode for the call (no MoE load counting, no dropout), then the caller's mode again."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, P], pad [B]) with each prompt right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
    pad = torch.tensor([width - len(p) for p in prompts], dtype=torch.long)
    return ids, pad


def positions_of(pad: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] positions counted from each row's first real token (0 on the padding)."""
    return (torch.arange(width)[None, :] - pad[:, None]).clamp(min=0)


def compact_now(finished: int, batch: int, fraction: float) -> bool:
    return finished > 0 and finished >= fraction * batch


def decode(stepper: Stepper, rows: Rows, pad_id: int, seed: int, compact_fraction: float) -> None:
    """Run plain decoding for every row of `rows` (filled in place)."""
    params = rows.params
    keys = row_keys(seed, len(rows.prompts), params.n)
    ids, pad = left_pad(rows.row_prompts, pad_id)
    logits = stepper.prefill(ids, pad, rows.max_budget)
    active = torch.arange(rows.num_rows)  # batch row -> row id
    alive = torch.ones(rows.num_rows, dtype=torch.bool)  # batch rows still generating
    finished_in_batch = 0
    start = rows.prompt_lengths  # position of each batch row's first generated token
    for step in range(rows.max_budget):
        tokens, logprobs = sample(logits, params, keys, step)
        if finished_in_batch == 0:
            alive = ~rows.append(active, tokens[:, None], logprobs[:, None])
        else:
            live = alive.nonzero().flatten()
            alive[live[rows.append(active[live], tokens[live, None], logprobs[live, None])]] = False
        finished_in_batch = len(active) - int(alive.sum())
        if finished_in_batch == len(active):
            return
        if compact_now(finished_in_batch, len(active), compact_fraction):
            kept = alive.nonzero().flatten()
            stepper.keep(kept)
            active, tokens, alive, keys, start = (t[kept] for t in (active, tokens, alive, keys, start))
            finished_in_batch = 0
        logits = stepper.step(tokens, start + step)


class LatentStepper:
    """Our model on a `LatentCache`. Inputs move to the model's device; logits come back to the CPU."""

    def __init__(self, model, prefill_tokens: int = 4096):
        self.model = model
        self.prefill_tokens = prefill_tokens
        self.device = next(model.parameters()).device
        self.cache: LatentCache | None = None
        self.hidden: torch.Tensor | None = None  # prefill's last-block outputs, when keep_hidden

    def prefill(self, ids: torch.Tensor, pad: torch.Tensor, capacity: int, keep_hidden: bool = False) -> torch.Tensor:
        batch, width = ids.shape
        dtype = next(self.model.parameters()).dtype
        self.cache = LatentCache(self.model.config, batch, width + capacity, dtype=dtype, device=self.device)
        self.cache.valid[:, :width] = (torch.arange(width)[None, :] >= pad[:, None]).to(self.device)
        ids, positions = ids.to(self.device), positions_of(pad, width).to(self.device)
        chunk = max(1, self.prefill_tokens // batch)
        hidden = []
        for start in range(0, width, chunk):
            end = min(width, start + chunk)
            out = self.model(ids[:, start:end], position_ids=positions[:, start:end], cache=self.cache,
                             logits_to_keep=1)
            if keep_hidden:
                hidden.append(out.hidden)
        self.hidden = torch.cat(hidden, dim=1) if keep_hidden else None
        return out.logits[:, -1].float().cpu()

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(tokens[:, None].to(self.device), position_ids=positions[:, None].to(self.device),
                         cache=self.cache, logits_to_keep=1)
        return out.logits[:, -1].float().cpu()

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.keep_rows(rows.to(self.device))


class Engine(Backend):
    """frugal-r1's DeepSeek-V3 as a generation backend."""

    def __init__(self, model, tokenizer=None, *, speculative: bool = False, compact_fraction: float = 0.25,
                 prefill_tokens: int = 4096):
        if speculative and not model.mtp:
            raise UserError("speculative decoding needs a model with an MTP module (num_nextn_predict_layers >= 1)")
        self.model = model
        self.tokenizer = tokenizer
        self.speculative = speculative
        self.compact_fraction = compact_fraction
        self.prefill_tokens = prefill_tokens

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, **kwargs) -> "Engine":
        from frugal_r1.model.transformer import DeepSeekV3

        return cls(DeepSeekV3.from_pretrained(path, dtype=dtype), load_local_tokenizer(path), **kwargs)

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def config_eos_token_id(self) -> int | None:
        return self.model.config.eos_token_id

    @property
    def pad_id(self) -> int:
        cfg = self.model.config
        return next((i for i in (cfg.pad_token_id, cfg.eos_token_id) if i is not None), 0)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        ids = self.encode_prompts(prompts, params)
        if not ids:
            return []
        rows = Rows(ids, params, self.stop_ids(params), self.context_length, self.tokenizer)
        seed = resolve_seed(params)
        with torch.inference_mode(), evaluation(self.model):
            if self.speculative:
                from frugal_r1.generate.speculative import speculative_decode

                speculative_decode(self.model, rows, self.pad_id, seed, self.compact_fraction, self.prefill_tokens)
            else:
                decode(LatentStepper(self.model, self.prefill_tokens), rows, self.pad_id, seed,
                       self.compact_fraction)
        return rows.completions()


def resolve_seed(params: SamplingParams) -> int:
    if params.seed is not None:
        return params.seed
    return int(torch.randint(0, 2**62, (1,)).item())


__all__ = ["Engine", "Stepper", "LatentStepper", "decode", "evaluation", "left_pad", "positions_of",
           "resolve_seed"]
