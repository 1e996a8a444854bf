"""Token sampling: temperature, top-k, top-p, per-row reproducible randomness, and log-probabilities.

Design choices:
- Randomness is counter-based (splitmix64 in int64 tensor arithmetic): row r's uniform for draw `counter`
  on `stream` is mix(key_r + (8·counter + stream + 1)·φ), φ = 0x9E3779B97F4A7C15 — an element of the
  splitmix64 sequence seeded by the row's key, its top 24 bits scaled to [0, 1). One vectorised call
  serves every row, yet each row's numbers depend only on its key, never on which rows share the batch.
  Keys come from (seed, prompt index, sample index).
- A token is drawn by inverting the row's CDF at one uniform (cumsum + searchsorted), so a draw costs
  one random number per row and needs no per-row torch.Generator.
- `filtered_probs` is the sampling distribution (logits / T, then top-k, then top-p); `token_logprobs` is
  the plain log_softmax of the raw logits — the policy's log-probability (see backend.py).
"""

from __future__ import annotations

import numpy as np
import torch

from frugal_r1.generate.backend import SamplingParams

_MASK64 = (1 << 64) - 1


def _int64(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_PHI = _int64(0x9E3779B97F4A7C15)
_M1 = _int64(0xBF58476D1CE4E5B9)
_M2 = _int64(0x94D049BB133111EB)

# Streams: separate random numbers drawn at the same counter.
SAMPLE, DRAFT, ACCEPT, RESIDUAL = 0, 1, 2, 3


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser; int64 multiplication wraps modulo 2^64."""
    x = (x ^ _shift_right(x, 30)) * _M1
    x = (x ^ _shift_right(x, 27)) * _M2
    return x ^ _shift_right(x, 31)


def row_keys(seed: int, num_prompts: int, n: int) -> torch.Tensor:
    """int64 [num_prompts·n]: one key per (prompt, sample), prompt-major."""
    index = torch.arange(num_prompts * n, dtype=torch.long)
    base = _mix(torch.tensor([_int64(seed)], dtype=torch.long) + _PHI)
    prompt, sample = index // n, index % n
    return _mix(_mix(base + (prompt + 1) * _PHI) + (sample + 1) * _PHI)


def uniform(keys: torch.Tensor, counter: int, stream: int) -> torch.Tensor:
    """float32 [B] in [0, 1) on a 2^-24 grid: the row's (counter, stream) draw."""
    z = _mix(keys + _int64((counter * 8 + stream + 1) * 0x9E3779B97F4A7C15))
    return _shift_right(z, 40).float() * 2.0**-24


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[B, V] float32 sampling distribution: softmax(logits / T) restricted to top-k, then top-p. T > 0."""
    scaled = logits.float() / params.temperature
    vocab = scaled.shape[-1]
    if 0 < params.top_k < vocab:
        kth = scaled.topk(params.top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(dim=-1)
    if params.top_p < 1:
        probs = probs.masked_fill(probs < _nucleus_floor(probs, params.top_p), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _nucleus_floor(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """[B, 1]: the smallest probability in each row's nucleus — the top tokens, by probability, taken
    until their mass reaches top_p (the first token always). Tokens tied with it are kept too.

    A row whose top token alone reaches top_p has that token as its whole nucleus, so only the other rows
    are sorted: a trained model is that sure of most of its tokens (at 400 rows x 1,024, sorting every row was
    about a third of a sampling step).
    """
    floor = probs.max(dim=-1, keepdim=True).values
    open_rows = (floor[:, 0] < top_p).nonzero().flatten()
    if len(open_rows) == len(probs):
        return _sorted_floor(probs, top_p)
    if len(open_rows):
        floor[open_rows] = _sorted_floor(probs[open_rows], top_p)
    return floor


def _sorted_floor(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`_nucleus_floor` by sorting each row. Only values are sorted, never indices: numpy's value sort is ~30x
    faster than torch's CPU sort here."""
    if probs.device.type == "cpu":
        ascending = torch.from_numpy(np.sort(probs.numpy(), axis=-1))
    else:
        ascending = probs.sort(dim=-1).values
    descending = ascending.flip(-1)
    mass_above = descending.cumsum(dim=-1) - descending
    kept = (mass_above < top_p).sum(dim=-1, keepdim=True)  # >= 1: the first token has nothing above it
    return descending.gather(-1, kept - 1)


def sample_from(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Invert each row's CDF at u [B] (in [0, 1)); never returns a zero-probability token."""
    cdf = probs.float().cumsum(dim=-1)
    total = cdf[:, -1:]
    target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[token] per row, in float32, for logits [..., V] and tokens [...]."""
    logits = logits.float()
    picked = logits.gather(-1, tokens[..., None]).squeeze(-1)
    return picked - logits.logsumexp(dim=-1)


def pick(logits: torch.Tensor, params: SamplingParams, keys: torch.Tensor, counter: int,
         stream: int = SAMPLE) -> torch.Tensor:
    """logits [B, V] -> tokens [B]: argmax when greedy, else a draw from `filtered_probs`."""
    if params.greedy:
        return logits.argmax(dim=-1)
    return sample_from(filtered_probs(logits, params), uniform(keys, counter, stream))


def sample(logits: torch.Tensor, params: SamplingParams, keys: torch.Tensor, counter: int,
           stream: int = SAMPLE) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (tokens [B], raw log-probs [B])."""
    tokens = pick(logits, params, keys, counter, stream)
    return tokens, token_logprobs(logits, tokens)


__all__ = ["row_keys", "uniform", "filtered_probs", "sample_from", "token_logprobs", "pick", "sample",
           "SAMPLE", "DRAFT", "ACCEPT", "RESIDUAL"]
