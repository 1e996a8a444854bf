"""The SwiGLU feed-forward network: FFN(x) = W_down (SiLU(W_gate x) ⊙ W_up x).

Used for the dense layers (intermediate_size), the shared experts (moe_intermediate_size × n_shared_experts)
and, stacked into 3-D weights, the routed experts (moe.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
