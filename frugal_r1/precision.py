"""Whether to compute in bf16: `train.bf16 = "auto"` is resolved here, once per device kind.

bf16 autocast only pays where the hardware multiplies bf16 natively: CUDA devices that support it, and
CPUs with AVX512-BF16 or AMX, where a bf16 matmul runs several times the fp32 rate (932 against 111
GFLOP/s on a 2-core Zen 4 EPYC). Elsewhere torch emulates bf16 matmuls, and they are slower than fp32,
not faster: 0.9 against 105 GFLOP/s on a 2-core AVX2-only EPYC, so a bf16 speedrun there would take
days. "auto" therefore trains in fp32 on such CPUs; `true` forces bf16 anyway (with a warning), `false`
forces fp32.

On x86 the CPU's flags decide (torch reports them); on other CPUs the measured matmul peaks
(cost/hardware.py, which the ledger measures anyway) decide, by the same rule the planner prices with.
"""

from __future__ import annotations

import functools
import platform
import warnings

import torch

SETTINGS = (True, False, "auto")


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether `device_type` ("cpu" or "cuda") multiplies bf16 at least as fast as fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return _cpu_native_bf16()


def use_bf16(setting: bool | str, device_type: str = "cpu") -> bool:
    """Resolve a `train.bf16` setting (true, false or "auto") for a device kind."""
    if setting not in SETTINGS:
        raise ValueError(f"bf16 must be true, false or \"auto\", not {setting!r}")
    if setting == "auto":
        return native_bf16(device_type)
    if setting and device_type == "cpu" and not native_bf16("cpu"):
        _warn_emulated()
    return bool(setting)


def module_uses_bf16(setting: bool | str, module: torch.nn.Module) -> bool:
    """Resolve a `train.bf16` setting for the device `module`'s parameters live on."""
    return use_bf16(setting, next(module.parameters()).device.type)


def planned_precision(setting: bool | str, peak_flops: dict[str, float]) -> str:
    """"bf16" or "fp32" for pricing a run on a device with these peaks ("auto": bf16 where it is the faster)."""
    if setting == "auto":
        return "bf16" if peak_flops.get("bf16", 0.0) >= peak_flops.get("fp32", 0.0) else "fp32"
    return "bf16" if setting else "fp32"


@functools.cache
def _warn_emulated() -> None:
    warnings.warn("bf16 = true on a CPU without native bf16 (no AVX512-BF16 or AMX): bf16 matmuls are emulated "
                  "and run far slower than fp32; set train.bf16 = \"auto\" or false", stacklevel=3)


@functools.cache
def cpu_class() -> str:
    """This CPU by how it multiplies bf16: "amx" (AMX tiles), "native_bf16" (AVX512-BF16, or another
    architecture whose measured bf16 peak beats fp32) or "emulated_bf16" (x86 with neither: AVX2)."""
    if platform.machine().lower() in ("x86_64", "amd64") and hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        if torch.cpu._is_amx_tile_supported():
            return "amx"
        return "native_bf16" if torch.cpu._is_avx512_bf16_supported() else "emulated_bf16"
    from frugal_r1.cost.hardware import measure_cpu_peak

    return "native_bf16" if planned_precision("auto", measure_cpu_peak().flops) == "bf16" else "emulated_bf16"


def _cpu_native_bf16() -> bool:
    return cpu_class() != "emulated_bf16"


__all__ = ["SETTINGS", "cpu_class", "native_bf16", "use_bf16", "module_uses_bf16", "planned_precision"]
