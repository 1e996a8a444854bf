"""GRPO's objective: group-relative advantages, the clipped surrogate, the k3 KL, and loss aggregation.

For a prompt with G sampled completions o_1…o_G and rewards r_1…r_G:

    A_i = (r_i − mean(r)) / (std(r) + ε)          advantage_scale = "group"   (GRPO, DeepSeekMath)
    A_i = (r_i − mean(r)) / (std over the batch)   advantage_scale = "batch"
    A_i =  r_i − mean(r)                            advantage_scale = "none"    (Dr. GRPO)

and then A_i ← λ·A_i where A_i < 0 (negative_weight λ, W-REINFORCE's weighting of negative samples; 1 is GRPO):
λ < 1 reinforces the group's successes more than it pushes down its failures.

Per completion token t, with ρ = π_θ(o_t | ·) / π_old(o_t | ·):

    ℓ_t = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β·(π_ref/π_θ − log(π_ref/π_θ) − 1)

(ε_high > ε_low is DAPO's clip-higher; the KL term is Schulman's k3 estimator, β = 0 drops it.)
Aggregation over the batch's completion tokens (mask m):

    "sequence" (GRPO):      mean_i [ Σ_t m·ℓ / Σ_t m ]
    "token"    (DAPO):      Σ_i Σ_t m·ℓ / Σ_i Σ_t m
    "constant" (Dr. GRPO):  Σ_i Σ_t m·ℓ / (number of completions × max_new_tokens)

The functions below are pure tensor math, tested against a hand-computed example; `loss_sum` returns the
numerator of each mode so micro-batches and ranks can be added up and divided once (see grpo.py).
std is the population std (unbiased=False); groups with one completion get A = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from frugal_r1.recipe import ADVANTAGE_SCALES, AGGREGATIONS


def advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4,
               negative_weight: float = 1.0) -> torch.Tensor:
    """rewards [N·G] laid out group by group -> advantages [N·G]."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"advantage scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    grouped = rewards.view(-1, group_size).float()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.float().std(unbiased=False) + eps)
    if negative_weight != 1.0:
        centred = torch.where(centred < 0, negative_weight * centred, centred)
    return centred.reshape(-1)


@dataclass
class TokenLoss:
    loss: torch.Tensor  # [B, T] per-token loss ℓ_t (0 where masked)
    kl: torch.Tensor  # [B, T] per-token k3 KL (0 where masked or β = 0)
    clipped_low: torch.Tensor  # [B, T] bool: ρ < 1 − ε_low with A < 0 (the clip is active)
    clipped_high: torch.Tensor  # [B, T] bool: ρ > 1 + ε_high with A > 0


def token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages_: torch.Tensor, mask: torch.Tensor,
               epsilon_low: float, epsilon_high: float, beta: float = 0.0,
               ref_logprobs: torch.Tensor | None = None) -> TokenLoss:
    """All [B, T] except advantages_ [B]; mask is 1.0 on completion tokens that count."""
    adv = advantages_[:, None]
    ratio = torch.exp(logprobs - old_logprobs)
    clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped_ratio * adv)
    kl = torch.zeros_like(loss)
    if beta:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs reference log-probs")
        log_ratio = ref_logprobs - logprobs
        kl = torch.exp(log_ratio) - log_ratio - 1
        loss = loss + beta * kl
    return TokenLoss(loss=loss * mask, kl=kl * mask, clipped_low=(ratio < 1 - epsilon_low) & (adv < 0) & (mask > 0),
                     clipped_high=(ratio > 1 + epsilon_high) & (adv > 0) & (mask > 0))


def loss_sum(token: TokenLoss, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """The numerator of the aggregation: divide by `normaliser` summed over the whole step."""
    if aggregation == "sequence":
        return (token.loss.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum()
    if aggregation in ("token", "constant"):
        return token.loss.sum()
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def normaliser(mask: torch.Tensor, aggregation: str, max_new_tokens: int) -> float:
    """The denominator's share of this micro-batch: completions, tokens, or completions × max_new_tokens."""
    if aggregation == "sequence":
        return float(mask.shape[0])
    if aggregation == "token":
        return float(mask.sum())
    if aggregation == "constant":
        return float(mask.shape[0] * max_new_tokens)
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def grpo_loss(logprobs, old_logprobs, advantages_, mask, *, epsilon_low: float, epsilon_high: float,
              beta: float = 0.0, ref_logprobs=None, aggregation: str = "sequence", max_new_tokens: int = 1) -> torch.Tensor:
    """The whole-batch loss in one call (what the hand-computed test checks)."""
    token = token_loss(logprobs, old_logprobs, advantages_, mask, epsilon_low, epsilon_high, beta, ref_logprobs)
    return loss_sum(token, mask, aggregation) / normaliser(mask, aggregation, max_new_tokens)
