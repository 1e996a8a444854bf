"""Checkpoint pruning survives a kill at any moment (checkpoint.py)."""

from __future__ import annotations

import shutil

import torch

from frugal_r1 import checkpoint
from frugal_r1.checkpoint import checkpoint_dirs, save_checkpoint


def test_pruning_never_deletes_a_checkpoint_in_place(tmp_path, monkeypatch):
    """A kill during rmtree of a step_ directory used to leave it half deleted: no longer a checkpoint, so
    never pruned again (seen in the SIGKILL resume test: step_10 kept beside 14 and 16)."""
    deleted = []
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda path, **kw: (deleted.append(path.name),
                                                                         real_rmtree(path, **kw)))
    model = torch.nn.Linear(2, 2)
    for step in (2, 4, 6, 6):
        save_checkpoint(tmp_path, step, model, {}, keep_last=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000004", "step_00000006"]
    assert all(name.startswith(".tmp-") for name in deleted), deleted
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]


def test_a_half_discarded_checkpoint_is_swept_by_the_next_save(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 2, model, {})
    leftover = tmp_path / "checkpoints" / ".tmp-step_00000000-discard-1"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    save_checkpoint(tmp_path, 4, model, {})
    assert not leftover.exists()
