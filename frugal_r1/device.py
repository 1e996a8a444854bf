"""Where a stage computes: `train.device` resolved once per run, and batches moved there.

"auto" is the GPU when torch sees one (under torchrun each rank takes the GPU of its LOCAL_RANK) and
the CPU otherwise; "cpu", "cuda" and "cuda:N" force one. The model, its optimizer state and the forward
and backward live on that device. Data is made on the CPU — packing, tokenizing, rollout bookkeeping,
checkpointed stage state — and each batch moves to the device just before its forward.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from frugal_r1.errors import UserError


def resolve_device(setting: str = "auto", local_rank: int = 0, what: str = "train.device") -> torch.device:
    """A `train.device` setting as a torch device, or a UserError saying what is wrong with it (`what` names the
    setting in the message: a recipe key or a command-line flag)."""
    name = str(setting).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"{what} = {setting!r}, but torch sees no CUDA device; use \"cpu\" or \"auto\"")
        index = local_rank if name == "cuda" else name.removeprefix("cuda:")
        if not str(index).isdigit() or int(index) >= torch.cuda.device_count():
            raise UserError(f"{what} = {setting!r}: this machine has CUDA devices 0-"
                            f"{torch.cuda.device_count() - 1}")
        return torch.device("cuda", int(index))
    raise UserError(f"{what} must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", not {setting!r}")


def device_memory_bytes(device: torch.device) -> int:
    """The device's total memory in bytes: the GPU's, or this machine's RAM for the CPU (0 when unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with its tensors on `device`: a tensor, a dict of them, or a dataclass of them (others unchanged)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    return batch


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


__all__ = ["resolve_device", "to_device", "module_device"]
