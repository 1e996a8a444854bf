"""Data parallelism from outside the model: torchrun environment → process group → DDP wrapper.

`frugal-r1 pretrain` under `torchrun --nproc_per_node=N` runs N ranks (gloo on CPU, nccl on GPU). Each
rank trains on a disjoint shard of the same global batch; DDP averages gradients; rank 0 alone writes
files. MoE expert loads are summed over ranks before the gate-bias update, so every rank moves its
biases identically (DDP's buffer broadcast is off: it would overwrite each rank's load counts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """The process group under torchrun (nothing otherwise): nccl where the ranks train on GPUs, else gloo.
    `device` is the stage's train.device setting."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    gpus = torch.cuda.is_available() and str(device).strip().lower() != "cpu"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if gpus else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if gpus:
        torch.cuda.set_device(local)
    return DistInfo(rank=torch_dist.get_rank(), world_size=world, local_rank=local)


def teardown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def wrap(model: torch.nn.Module, info: DistInfo, find_unused: bool = False) -> torch.nn.Module:
    """DDP around `model` when ranks run; `find_unused` for losses that leave some parameters out (DDP then
    looks for them after each forward instead of waiting for their gradients forever)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=find_unused)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and hasattr(model, "require_backward_grad_sync") else model


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `tensor` over ranks, in place. NCCL reduces GPU tensors only: a CPU tensor (the loop's counters)
    makes the round trip through the rank's GPU."""
    if info.enabled:
        if torch_dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            on_gpu = tensor.cuda()
            torch_dist.all_reduce(on_gpu, op=torch_dist.ReduceOp.SUM)
            tensor.copy_(on_gpu)
        else:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def sum_expert_loads(model: torch.nn.Module, info: DistInfo) -> None:
    """Sum every MoE layer's expert_load over ranks (in place), before update_gate_biases."""
    if not info.enabled or not hasattr(model, "moe_layers"):
        return
    layers = model.moe_layers()
    if not layers:
        return
    flat = torch.cat([m.expert_load for m in layers])
    torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
    for moe, chunk in zip(layers, flat.split([m.expert_load.numel() for m in layers])):
        moe.expert_load.copy_(chunk)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch_dist.barrier()
