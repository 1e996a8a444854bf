"""Where reduced precision on the CPU needs a different path: shapes that change every step.

A bf16 matmul on the CPU runs through oneDNN, which builds (JIT-compiles) a kernel for every new shape and
caches it: about 1.2 ms for an unseen [M, 256] x [256, 256], 20-30x the matmul itself at the speedrun's sizes,
against 0.04-0.08 ms once cached (measured on a 2-vCPU Xeon with AMX, 2026-12-04). SDPA's bf16 CPU kernel
does the same per sequence length. So the two places whose shapes change every step adapt:
- routed experts (moe.py): each expert's rows padded to a multiple of CPU_BUCKET_ROWS, so shapes repeat;
- attention over packed documents (mla.py): computed in fp32, which at these head sizes is faster on the CPU
  anyway; plain causal rows take `CausalAttentionBF16` (bf16 forward, fp32 backward), faster than fp32 even
  when every call has a new length (bf16 training step of the small preset 446 -> 423 ms; 30 random lengths
  200-900, never seen before: 46 vs 51 ms a call, 2026-12-05).
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


class CausalAttentionBF16(torch.autograd.Function):
    """Causal fused attention for reduced-precision q, k, v [B, H, T, D] on the CPU.

    The flash kernel's forward runs 2x faster in bf16 than in fp32, but its bf16 backward runs 1.6x slower
    than its fp32 one ([8, 8, 256, 48], 2-vCPU Xeon with AMX, 2026-12-05: forward 2.1 vs 4.1 ms, backward
    18 vs 11.7 ms). So the forward is taken in bf16 and the backward in fp32 from the saved log-sum-exp.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale: float):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out.float(), q.float(), k.float(), v.float(), out.float(), lse, 0.0, True, scale=ctx.scale)
        return grads[0].to(q.dtype), grads[1].to(k.dtype), grads[2].to(v.dtype), None
