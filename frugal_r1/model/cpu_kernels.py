"""Where reduced precision on the CPU needs a different path: shapes that change every step.

A bf16 matmul on the CPU runs through oneDNN, which builds (JIT-compiles) a kernel for every new shape and
caches it: about 1.2 ms for an unseen [M, 256] x [256, 256], 20-30x the matmul itself at the speedrun's sizes,
against 0.04-0.08 ms once cached (measured on a 2-vCPU Xeon with AMX, 2026-12-04). SDPA's bf16 CPU kernel
does the same per sequence length. So the two places whose shapes change every step adapt:
- routed experts (moe.py): each expert's rows padded to a multiple of CPU_BUCKET_ROWS, so shapes repeat;
- attention (mla.py): computed in fp32, which at these head sizes is faster on the CPU anyway.
The GRPO training forward of a transformers policy (train/shared_prefix.py) does both: its packed token count,
which every sample changes, is padded to a multiple of CPU_BUCKET_ROWS, and its attention runs in fp32 (bf16
SDPA's backward with a mask was 5.8x slower than fp32's there: 10.4 vs 1.8 ms per layer, 2026-12-05).
"""

from __future__ import annotations

import torch

# Rows per expert are padded to a multiple of this for reduced-precision matmuls on the CPU.
CPU_BUCKET_ROWS = 32


def reduced_precision_on_cpu(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether computing in `dtype` on `device` meets oneDNN's per-shape kernel builds (see the module docstring)."""
    return device.type == "cpu" and dtype != torch.float32


def compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype matmuls on `device` run in for tensors of `dtype`: autocast's, where it is on."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else dtype


def bucketed(rows: int, bucket: int | None = None) -> int:
    """`rows` rounded up to a multiple of `bucket` (default CPU_BUCKET_ROWS)."""
    bucket = bucket or CPU_BUCKET_ROWS
    return -(-rows // bucket) * bucket
