"""The cost ledger: what a run cost in FLOPs, hours, kWh and dollars.

Every stage keeps one. It adds up wall seconds, tokens and model FLOPs (F1's analytical counters, so
the figure means the same on every machine), and prices them with a hardware profile
(`frugal_r1.cost.hardware`: this CPU measured at start, or a named GPU):

    achieved FLOP/s = FLOPs / wall seconds          MFU = achieved / (devices × peak at the precision)
    kWh = devices × power W × hours / 1000          dollars = devices × price per hour × hours

Wall time is the whole stage (data, evaluation, checkpoints included), since that is what is paid for.
The state survives resume, so an interrupted run's ledger sums all of its pieces.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugal_r1.atomic import atomic_write_bytes
from frugal_r1.cost.hardware import Hardware, get_hardware


def resolve_hardware(name: str = "auto", price_per_hour: float | None = None, power_watts: float | None = None,
                     measure_seconds: float = 1.0, device_type: str | None = None) -> Hardware:
    """A profile by name; "auto" is the visible GPU's profile when the run computes there (device_type "cuda",
    or None and CUDA available), else this CPU measured."""
    if name == "auto":
        import torch

        name = "cpu"
        if device_type in (None, "cuda") and torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0).upper()
            for candidate in ("H800", "H200", "H100", "A100"):
                if candidate in gpu:
                    name = candidate
                    break
    hardware = get_hardware(name, measure_seconds=measure_seconds).with_price(price_per_hour)
    if power_watts is not None:
        from dataclasses import replace

        hardware = replace(hardware, power_w=power_watts)
    return hardware


def stage_hardware(ledger, device_type: str) -> Hardware:
    """The profile a stage's [ledger] table (recipe.LedgerConfig) names, with its price and power overrides,
    for a run on `device_type`."""
    return resolve_hardware(ledger.hardware, ledger.price_per_hour, ledger.power_watts, device_type=device_type)


@dataclass
class Ledger:
    hardware: Hardware
    precision: str = "bf16"
    devices: int = 1
    wall_seconds: float = 0.0
    tokens: int = 0
    flops: float = 0.0
    _started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def tick(self) -> None:
        """Fold the time since start()/the last tick into wall_seconds."""
        now = time.perf_counter()
        if self._started is not None:
            self.wall_seconds += now - self._started
        self._started = now

    def add(self, tokens: int, flops: float) -> None:
        self.tokens += tokens
        self.flops += flops

    @property
    def peak(self) -> float:
        return self.hardware.peak(self.precision) * self.devices

    def summary(self) -> dict[str, Any]:
        hours = self.wall_seconds / 3600
        achieved = self.flops / self.wall_seconds if self.wall_seconds else 0.0
        return {
            "wall_seconds": round(self.wall_seconds, 3),
            "device": self.hardware.source or self.hardware.name,
            "hardware": self.hardware.name,
            "devices": self.devices,
            "precision": self.precision,
            "tokens": self.tokens,
            "flops": self.flops,
            "achieved_flops_per_second": achieved,
            "peak_flops_per_second": self.peak,
            "mfu": achieved / self.peak if self.peak else 0.0,
            "power_watts": self.hardware.power_w * self.devices,
            "kwh": self.hardware.power_w * self.devices * hours / 1000,
            "usd_per_hour": self.hardware.usd_per_hour * self.devices,
            "usd": self.hardware.usd_per_hour * self.devices * hours,
            "device_hours": hours * self.devices,
        }

    def elapsed(self) -> float:
        """Wall seconds so far, across resumes."""
        return self.wall_seconds + (time.perf_counter() - self._started if self._started else 0.0)

    def dollars_so_far(self) -> float:
        return self.hardware.usd_per_hour * self.devices * self.elapsed() / 3600

    def line(self, stage: str) -> str:
        s = self.summary()
        return (f"{stage} cost: {s['tokens']:,} tokens, {s['flops'] / 1e12:,.2f} TFLOP in {_duration(s['wall_seconds'])} "
                f"on {self.devices} × {self.hardware.name} — MFU {s['mfu']:.1%}, {s['kwh']:.4f} kWh, ${s['usd']:.4f}")

    def state_dict(self) -> dict[str, Any]:
        return {"wall_seconds": self.wall_seconds, "tokens": self.tokens, "flops": self.flops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wall_seconds, self.tokens, self.flops = state["wall_seconds"], state["tokens"], state["flops"]

    def write(self, path: str | Path, stage: str, extra: dict[str, Any] | None = None) -> None:
        record = {"stage": stage, **self.summary(), "hardware_profile": self.hardware.to_dict(), **(extra or {})}
        atomic_write_bytes(path, json.dumps(record, indent=2).encode())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
