"""DeepSeekMoE: shared experts plus fine-grained routed experts, with auxiliary-loss-free balancing.

    s_i      = sigmoid(u · e_i)                                   affinity of token u to expert i
    choose   top-k of s_i + b_i, within the topk_group groups whose score (sum of the group's
             top-2 biased affinities) is highest                 (b = e_score_correction_bias)
    g_i      = s_i / Σ_chosen s_j (when norm_topk_prob) × routed_scaling_factor
    MoE(u)   = Σ_shared FFN(u) + Σ_chosen g_i FFN_i(u)

The bias only steers selection; the weights use the unbiased s. After every optimizer step the trainer
calls `update_bias`: b_i += γ · sign(mean load − load_i) (overloaded experts get less attractive),
outside autograd. A small sequence-wise balance loss complements it (DeepSeek-V3 eq. 17–20):

    L_bal = α Σ_i f_i P_i,   f_i = E/(K·T) Σ_t 1[i chosen for t],   P_i = 1/T Σ_t s_i,t / Σ_j s_j,t

Routed experts run as two grouped matmuls over the tokens sorted by expert (torch's grouped_mm; a loop
over experts — never over tokens — where its alignment rules are not met).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from frugal_r1.model import cpu_kernels
from frugal_r1.model.config import ModelConfig
from frugal_r1.model.mlp import MLP


class Gate(nn.Module):
    """Sigmoid router with group-limited top-k; computed in float32, outside autocast."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.n_group, self.topk_group = cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
        self.norm_topk_prob, self.routed_scaling_factor = cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, d] -> (weights [N, K], expert indices [N, K], affinities s [N, E])."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            scores = F.linear(x.float(), self.weight.float()).sigmoid()
        biased = scores.detach() + self.e_score_correction_bias
        if self.n_group > 1:
            grouped = biased.view(x.shape[0], self.n_group, -1)
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            keep = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            biased = biased.masked_fill(~group_mask.repeat_interleave(grouped.shape[-1], dim=1), float("-inf"))
        indices = biased.topk(self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, indices, scores


class RoutedExperts(nn.Module):
    """E SwiGLU experts stored as 3-D weights (transformers' fused layout)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        experts, d, inter = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(experts, 2 * inter, d))
        self.down_proj = nn.Parameter(torch.empty(experts, d, inter))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x [N, d], weights/indices [N, K] -> Σ_k weight_k · expert_{index_k}(x)  [N, d]."""
        num_experts, top_k = self.gate_up_proj.shape[0], indices.shape[1]
        flat = indices.reshape(-1)
        order = flat.argsort(stable=True)
        token = order // top_k
        counts = torch.bincount(flat, minlength=num_experts)
        dtype = cpu_kernels.compute_dtype(x.device, x.dtype)
        # index_select, not x[token]: its backward is index_add_, ~5x faster on the CPU than indexing's index_put_.
        rows = x.index_select(0, token).to(dtype)
        slots = None
        if cpu_kernels.reduced_precision_on_cpu(x.device, dtype):
            slots, counts = _bucketed_slots(counts, cpu_kernels.CPU_BUCKET_ROWS)
            rows = rows.new_zeros(int(counts.sum()), rows.shape[1]).index_copy(0, slots, rows)
        hidden = _grouped_matmul(rows, self.gate_up_proj.to(dtype).transpose(1, 2), counts)
        gate, up = hidden.chunk(2, dim=-1)
        out = _grouped_matmul(F.silu(gate) * up, self.down_proj.to(dtype).transpose(1, 2), counts)
        if slots is not None:
            out = out.index_select(0, slots)
        out = out * weights.reshape(-1).index_select(0, order)[:, None].to(out.dtype)
        return torch.zeros_like(x, dtype=out.dtype).index_add_(0, token, out)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.aux_loss_alpha = cfg.aux_loss_alpha
        self.gate = Gate(cfg)
        self.experts = RoutedExperts(cfg)
        self.shared_experts = (MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)
                               if cfg.n_shared_experts else None)
        self.register_buffer("expert_load", torch.zeros(cfg.n_routed_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d = x.shape
        flat = x.reshape(-1, d)
        weights, indices, scores = self.gate(flat)
        out = self.experts(flat, weights, indices).view(batch, seq, d)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        if self.training:
            with torch.no_grad():
                self.expert_load += torch.bincount(indices.reshape(-1), minlength=self.expert_load.numel())
            self.aux_loss = self._balance_loss(scores.view(batch, seq, -1), indices.view(batch, seq, -1))
        return out.to(x.dtype)

    def _balance_loss(self, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        if self.aux_loss_alpha == 0:
            return None
        batch, seq, experts = scores.shape
        top_k = indices.shape[-1]
        chosen = torch.zeros(batch, experts, device=scores.device).scatter_add_(
            1, indices.reshape(batch, -1), torch.ones(batch, seq * top_k, device=scores.device))
        fraction = chosen * experts / (top_k * seq)
        probability = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)
        return self.aux_loss_alpha * (fraction * probability).sum(dim=-1).mean()

    @torch.no_grad()
    def update_bias(self, speed: float) -> None:
        """Aux-loss-free balancing: b_i += γ·sign(mean load − load_i); then reset the load counts."""
        load = self.expert_load
        if speed > 0 and load.sum() > 0:
            self.gate.e_score_correction_bias += speed * torch.sign(load.mean() - load)
        load.zero_()


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (grouped_mm needs real strides)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _bucketed_slots(counts: torch.Tensor, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert's rows padded to a multiple of `bucket`: (the padded position of each row, sorted by
    expert, [N]; the padded counts [E]). Expert loads change every step; padded, the matmul shapes repeat
    and oneDNN takes its kernels from its cache (cpu_kernels.py)."""
    padded = (counts + bucket - 1) // bucket * bucket
    shift = (padded.cumsum(0) - padded) - (counts.cumsum(0) - counts)  # padded start - packed start, per expert
    return torch.arange(int(counts.sum()), device=counts.device) + shift.repeat_interleave(counts), padded


def _grouped_matmul(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of x sorted by group, w [G, k, n], counts [G] -> [N, n] with rows of group g times w[g]."""
    element = x.element_size()
    aligned = all(size * element % 16 == 0 for size in (x.shape[1], w.shape[2]))
    if hasattr(F, "grouped_mm") and aligned and x.shape[0] > 0:
        offsets = counts.cumsum(0).to(torch.int32)
        return _ContiguousGrad.apply(F.grouped_mm(x.contiguous(), w, offs=offsets))
    chunks = x.split(counts.tolist())
    return torch.cat([chunk @ w[g] for g, chunk in enumerate(chunks)]) if chunks else x.new_zeros(0, w.shape[2])
