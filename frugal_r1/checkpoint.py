"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a directory `checkpoints/step_00000120/` holding
    model.safetensors   the module's state dict (fp32 master weights, gate biases included)
    state.pt            optimizer, scheduler, RNG states, data position, step, ledger, stage extras
It is written to a hidden temp directory, every file fsynced, then renamed into place in one step, so
a crash mid-write (even SIGKILL) leaves the previous checkpoint intact and no half-written one visible.
After a successful save only the newest `keep_last` are kept.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from frugal_r1.atomic import fsync_dir

PREFIX = "step_"


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and (p / "state.pt").exists() and (p / "model.safetensors").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str | Path, step: int, model: torch.nn.Module, state: dict[str, Any],
                    keep_last: int = 2) -> Path:
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    for file in tmp.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_dir(tmp)
    if final.exists():
        _discard(final)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in checkpoint_dirs(out_dir)[:-keep_last] if keep_last > 0 else []:
        _discard(old)
    for stale in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _discard(path: Path) -> None:
    """Delete a checkpoint directory, renamed out of the way first: a process killed halfway through deleting
    it leaves a `.tmp-` directory the next save sweeps up, never a half-deleted `step_` one that no longer
    counts as a checkpoint and so would never be pruned."""
    doomed = path.with_name(f".tmp-{path.name}-discard-{os.getpid()}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into `model` (strict) and return the saved state; RNG states are restored too."""
    path = Path(path)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True)
    # On the CPU first: the optimizer's load_state_dict moves its state to each parameter's device, so a run
    # checkpointed on one device continues on another.
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    set_rng_state(state["rng"])
    return state
