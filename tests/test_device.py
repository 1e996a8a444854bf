"""train.device: resolving the setting, and batches moved to the model's device."""

from __future__ import annotations

import pytest
import torch

from frugal_r1.device import resolve_device, to_device
from frugal_r1.errors import UserError
from frugal_r1.train.grpo import Rollout


def test_auto_is_the_cpu_without_cuda_and_the_ranks_gpu_with_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)


@pytest.mark.parametrize("setting, cuda, message", [
    ("cuda", False, "torch sees no CUDA device"),
    ("cuda:2", True, "this machine has CUDA devices 0-1"),
    ("cuda:x", True, "this machine has CUDA devices 0-1"),
    ("gpu", True, "train.device must be"),
])
def test_bad_settings_say_what_is_wrong(monkeypatch, setting, cuda, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=message):
        resolve_device(setting)


def test_to_device_moves_every_tensor_of_a_dict_or_dataclass_and_nothing_else():
    meta = torch.device("meta")  # a second device every machine has
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "nested": {"x": torch.zeros(1)}, "name": "b"}
    moved = to_device(batch, meta)
    assert moved["input_ids"].device == meta and moved["input_ids"].dtype == torch.long
    assert moved["nested"]["x"].device == meta and moved["name"] == "b"
    assert batch["input_ids"].device.type == "cpu"  # the original (kept in checkpointed state) stays put

    rollout = Rollout(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 3), torch.zeros(2), None, None,
                      torch.tensor([1, 2]), torch.tensor([4, 4]))
    moved = to_device(rollout, meta)
    assert isinstance(moved, Rollout) and moved.old_logprobs is None and moved.ref_logprobs is None
    assert all(t.device == meta for t in (moved.input_ids, moved.mask, moved.advantages, moved.prompt_lengths,
                                          moved.lengths))
    assert rollout.input_ids.device.type == "cpu"
