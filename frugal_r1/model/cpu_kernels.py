"""Where reduced precision on the CPU needs a different path: shapes that change every step.

A bf16 matmul on the CPU runs through oneDNN, which builds (JIT-compiles) a kernel for every new shape and
caches it: about 1.2 ms for an unseen [M, 256] x [256, 256], 20-30x the matmul itself at the speedrun's sizes,
against 0.04-0.08 ms once cached (measured on a 2-vCPU Xeon with AMX, 2026-12-04). SDPA's bf16 CPU kernel
does the same per sequence length. So the two places whose shapes change every step adapt:
- routed experts (moe.py): each expert's rows padded to a multiple of CPU_BUCKET_ROWS, so shapes repeat;
- attention (mla.py): computed in fp32, which at these head sizes is faster on the CPU anyway.
"""

from __future__ import annotations

import torch

# Rows per expert are padded to a multiple of this for reduced-precision matmuls on the CPU.
CPU_BUCKET_ROWS = 32


def reduced_precision_on_cpu(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether computing in `dtype` on `device` meets oneDNN's per-shape kernel builds (see the module docstring)."""
    return device.type == "cpu" and dtype != torch.float32
