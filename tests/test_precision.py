"""train.bf16 = "auto": bf16 only where the device multiplies it natively (frugal_r1/precision.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from frugal_r1 import precision
from frugal_r1.cost import hardware
from frugal_r1.errors import UserError
from frugal_r1.precision import native_bf16, planned_precision, use_bf16
from frugal_r1.recipe import load_stage


def test_auto_follows_the_cpu_and_explicit_settings_win(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_native_bf16", lambda: False)
    assert use_bf16("auto") is False and use_bf16(False) is False
    with pytest.warns(UserWarning, match="emulated"):
        precision._warn_emulated.cache_clear()
        assert use_bf16(True) is True
    monkeypatch.setattr(precision, "_cpu_native_bf16", lambda: True)
    assert use_bf16("auto") is True and use_bf16(False) is False
    with pytest.raises(ValueError, match="auto"):
        use_bf16("yes")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, True, "amx"), (True, False, "native_bf16"),
                                                       (False, False, "emulated_bf16")])
def test_x86_flags_decide_without_timing(monkeypatch, avx512_bf16, amx, expected):
    import torch

    precision.cpu_class.cache_clear()
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(hardware, "measure_cpu_peak", lambda *_: pytest.fail("timed on x86"))
    try:
        assert precision.cpu_class() == expected
        assert native_bf16("cpu") is (expected != "emulated_bf16")
    finally:
        precision.cpu_class.cache_clear()


def test_other_cpus_time_both_precisions(monkeypatch):
    precision.cpu_class.cache_clear()
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    peak = SimpleNamespace(flops={"fp32": 100e9, "bf16": 2e9})
    monkeypatch.setattr(hardware, "measure_cpu_peak", lambda *_: peak)
    try:
        assert precision.cpu_class() == "emulated_bf16" and native_bf16("cpu") is False
    finally:
        precision.cpu_class.cache_clear()


def test_planner_prices_auto_at_the_faster_precision():
    assert planned_precision("auto", {"fp32": 100e9, "bf16": 0.9e9}) == "fp32"
    assert planned_precision("auto", {"fp32": 111e9, "bf16": 932e9}) == "bf16"
    assert planned_precision("auto", {"bf16": 989.5e12, "fp8": 1979e12}) == "bf16"
    assert planned_precision(True, {"fp32": 100e9, "bf16": 1e9}) == "bf16"
    assert planned_precision(False, {"bf16": 1e12}) == "fp32"


def test_recipe_accepts_true_false_auto_only():
    assert load_stage("pretrain", None, []).train.bf16 == "auto"
    assert load_stage("pretrain", None, ["train.bf16=false"]).train.bf16 is False
    with pytest.raises(UserError, match='train.bf16: expected true, false or "auto"'):
        load_stage("pretrain", None, ["train.bf16='fast'"])
