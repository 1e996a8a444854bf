"""Hardware profiles: peak FLOP/s by precision, memory, power and price of the devices we price runs on.

The GPU profiles (H800, H100, H200, A100) live in `hardware.toml` beside this file, each with its source.
Users add or replace profiles with a TOML file of the same shape (`load_profiles(user_file)`, the CLI's
`--hardware-file`). Names match case-insensitively; an unknown name is a `UserError` with close matches.

The profile "cpu" is this machine, measured at run time by `measure_cpu_peak`: the best FLOP/s of large
square matmuls in fp32 and bf16 over a few seconds (torch.matmul on the CPU; bf16 uses AVX512-BF16/AMX
where the CPU has them, several times the fp32 rate). The result is cached per process, so the trainer
can call it again for free. Assumptions for "cpu", stated here because no datasheet gives them:

- power: 4 W per core — an AMD EPYC 9755 (Zen 5, 128 cores, 500 W TDP) is 3.9 W per core. Package power
  only: memory, disks and the host's share are not counted.
- price: $0.05 per core-hour, i.e. ~$0.10/hour for a 2-vCPU Zen 5 cloud machine (the on-demand price
  class of AWS m8a.large or GCP c4d-standard-2 in 2025; an assumption, not a quote). Override with
  `--price-per-hour`.
- memory: the machine's MemTotal; memory bandwidth is not measured (None).
- MFU: by CPU class (AMX; AVX512-BF16 without AMX; AVX2 only: `precision.cpu_class`), calibrated from the
  speedrun's ledgers on a 2-vCPU machine of each class, for training per precision and for generation (the
  decoder runs fp32 on a CPU, so its figure is against the fp32 peak); see CPU_CALIBRATION. They describe the
  speedrun's small model: a larger one reaches a larger fraction of the peak.
  Other tenants on the same cores can cut the real figure tenfold; a projection assumes the machine to
  itself.
- A CPU without native bf16 (AVX2 only) emulates bf16 matmuls ~100x slower than fp32; the measurement
  shrinks its bf16 matmul there so it still takes about `seconds`, and `train.bf16 = "auto"` trains fp32.
"""

from __future__ import annotations

import difflib
import time
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from frugal_r1.errors import UserError

DEFAULT_MFU = 0.4
DEFAULT_GENERATION_MFU = 0.1
CPU_WATTS_PER_CORE = 4.0
CPU_USD_PER_CORE_HOUR = 0.05


@dataclass(frozen=True)
class CpuCalibration:
    training: dict[str, float]  # MFU by precision, against the measured peak of that precision
    generation: float  # against the fp32 peak
    source: str


# By precision.cpu_class(): the planner's FLOPs for each stage of a finished speedrun, at the shapes the run
# measured, over the stage's measured seconds and the peak its ledger measured
# (benchmarks/cpu_mfu_from_speedruns.py RUN_DIR...).
CPU_CALIBRATION = {
    "amx": CpuCalibration(
        {"fp32": 0.20, "bf16": 0.04}, 0.045,
        "2-vCPU Xeon with AMX, speedrun of 2026-12-04 (width-128 model), three runs: pretraining in fp32 "
        "0.198-0.201; SFT in bf16 0.042-0.049 and GRPO's training passes 0.025-0.029 (0.04 kept for both); "
        "rollouts and evaluations 0.044-0.047 of the fp32 peak"),
    "native_bf16": CpuCalibration(
        {"fp32": 0.30, "bf16": 0.19}, 0.07,
        "2-vCPU Zen 4 EPYC with AVX512-BF16 (peaks fp32 194, bf16 419 GFLOP/s), speedruns of 2026-12-08 (width-128 "
        "model), seeds 0 and 1: pretraining in fp32 0.281-0.328; SFT in bf16 0.233-0.242 and GRPO's training passes "
        "0.137-0.149 (0.19 kept for both); rollouts and evaluations 0.060-0.076 of the fp32 peak. The figures of "
        "2026-11-28 (width-256 model, another host: fp32 0.45, bf16 0.13, generation 0.31) had predicted this "
        "speedrun's pretraining at 15-17 min against 23-24 measured"),
    "emulated_bf16": CpuCalibration(
        {"fp32": 0.30, "bf16": 0.13}, 0.10,
        "2-core AVX2-only EPYC, 2026-11-29 (width-128 model): pretraining in fp32 at 3,760 tokens/s, 0.29-0.30 "
        "of the fp32 peak (105-111 GFLOP/s); GRPO rollouts 0.10 of it; bf16 is emulated there, never chosen"),
}
CPU_GENERATION_PRECISION = "fp32"
BYTES_PER_ELEMENT = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}

_FIELDS = {"peak_tflops", "memory_gb", "memory_bandwidth_gbs", "interconnect_gbs", "power_w", "usd_per_hour",
           "source", "mfu", "generation_mfu"}


@dataclass(frozen=True)
class Hardware:
    """One device. Rates in SI units: FLOP/s, bytes, bytes/s, watts, dollars per device-hour."""

    name: str
    peak_flops: dict[str, float]  # dense matrix-unit peak by precision ("fp32", "tf32", "bf16", "fp8")
    memory_bytes: int
    power_w: float
    usd_per_hour: float
    memory_bandwidth: float | None = None
    interconnect: float | None = None
    mfu: float = DEFAULT_MFU  # training, any precision not in mfu_by_precision
    generation_mfu: float = DEFAULT_GENERATION_MFU
    generation_precision: str | None = None  # the peak rollouts are priced against (None: the stage's)
    mfu_by_precision: dict[str, float] = field(default_factory=dict)
    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the CPU model and thread count

    def peak(self, precision: str) -> float:
        if precision not in self.peak_flops:
            raise UserError(f"{self.name} has no {precision} peak; it has {', '.join(self.peak_flops)}")
        return self.peak_flops[precision]

    def training_mfu(self, precision: str) -> float:
        return self.mfu_by_precision.get(precision, self.mfu)

    def with_price(self, usd_per_hour: float | None) -> "Hardware":
        return self if usd_per_hour is None else replace(self, usd_per_hour=usd_per_hour)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "peak_flops": dict(self.peak_flops), "memory_bytes": self.memory_bytes,
                "memory_bandwidth": self.memory_bandwidth, "interconnect": self.interconnect,
                "power_w": self.power_w, "usd_per_hour": self.usd_per_hour, "mfu": self.mfu,
                "mfu_by_precision": dict(self.mfu_by_precision), "generation_mfu": self.generation_mfu,
                "generation_precision": self.generation_precision,
                "source": self.source, **self.details}


def _from_toml(name: str, entry: Any, origin: str) -> Hardware:
    where = f"{origin}: [{name}]"
    if not isinstance(entry, dict):
        raise UserError(f"{where} must be a table of settings, got {entry!r}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    missing = [key for key in ("peak_tflops", "memory_gb", "power_w", "usd_per_hour") if key not in entry]
    if missing:
        raise UserError(f"{where} is missing {', '.join(missing)}")

    def number(key: str, value: Any, *, zero: bool = False, most: float | None = None) -> float:
        """`value` as a float: a number above 0 (or at least 0 with `zero`), and at most `most` if given."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (value >= 0 if zero else value > 0) and (most is None or value <= most)
        if not ok:
            bound = (">= 0" if zero else "> 0") + (f" and <= {most:g}" if most is not None else "")
            raise UserError(f"{where} {key} must be a number {bound}, got {value!r}")
        return float(value)

    def table(key: str, value: Any, most: float | None = None) -> dict[str, float]:
        if not isinstance(value, dict) or not value:
            raise UserError(f"{where} {key} must be a table by precision, e.g. {{ bf16 = 989, fp32 = 67 }}")
        return {str(k): number(f"{key}.{k}", v, most=most) for k, v in value.items()}

    optional = {key: number(key, entry[key]) * 1e9 for key in ("memory_bandwidth_gbs", "interconnect_gbs")
                if key in entry}
    mfu = entry.get("mfu", DEFAULT_MFU)
    by_precision = table("mfu", mfu, most=1) if isinstance(mfu, dict) else {}
    return Hardware(
        name=name,
        peak_flops={precision: tflops * 1e12 for precision, tflops in table("peak_tflops", entry["peak_tflops"]).items()},
        memory_bytes=int(number("memory_gb", entry["memory_gb"]) * 10**9),
        power_w=number("power_w", entry["power_w"]),
        usd_per_hour=number("usd_per_hour", entry["usd_per_hour"], zero=True),
        memory_bandwidth=optional.get("memory_bandwidth_gbs"),
        interconnect=optional.get("interconnect_gbs"),
        mfu=DEFAULT_MFU if by_precision else number("mfu", mfu, most=1),
        mfu_by_precision=by_precision,
        generation_mfu=number("generation_mfu", entry.get("generation_mfu", DEFAULT_GENERATION_MFU), most=1),
        source=str(entry.get("source", origin)),
    )


def _parse(text: str, origin: str) -> dict[str, Hardware]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{origin}: not valid TOML: {error}") from None
    return {name: _from_toml(name, entry, origin) for name, entry in data.items()}


def load_profiles(user_file: str | Path | None = None) -> dict[str, Hardware]:
    """The built-in GPU profiles, plus (adding or replacing by name) those of `user_file`."""
    text = resources.files("frugal_r1.cost").joinpath("hardware.toml").read_text(encoding="utf-8")
    profiles = _parse(text, "hardware.toml")
    if user_file is not None:
        path = Path(user_file)
        if not path.is_file():
            raise UserError(f"hardware file not found: {path}")
        profiles.update(_parse(path.read_text(encoding="utf-8"), str(path)))
    return profiles


def get_hardware(name: str, user_file: str | Path | None = None, *, measure_seconds: float = 2.0) -> Hardware:
    """The profile called `name` (case-insensitive); "cpu" measures this machine."""
    profiles = load_profiles(user_file)
    by_lower = {key.lower(): key for key in profiles}
    if name.lower() in by_lower:
        return profiles[by_lower[name.lower()]]
    if name.lower() == "cpu":
        return cpu_profile(measure_seconds)
    choices = [*profiles, "cpu"]
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(by_lower.get(c, c) for c in close)}?" if close else ""
    raise UserError(f"unknown hardware {name!r}{hint} (known: {', '.join(choices)})")


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuPeak:
    model_name: str
    threads: int
    flops: dict[str, float]  # best measured FLOP/s by precision
    seconds: float  # how long the measurement took


_cpu_peak: CpuPeak | None = None


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def measure_cpu_peak(seconds: float = 2.0, size: int = 2048, refresh: bool = False) -> CpuPeak:
    """Best-of-n FLOP/s of size×size matmuls in fp32 and bf16, spending about `seconds` in all.

    Cached for the process: later calls return the first measurement unless `refresh`.
    """
    global _cpu_peak
    if _cpu_peak is not None and not refresh:
        return _cpu_peak
    import torch

    start = time.perf_counter()
    flops: dict[str, float] = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = _affordable_size(dtype, size, seconds / 8)
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        deadline = time.perf_counter() + seconds / 2
        best = float("inf")
        with torch.inference_mode():
            torch.matmul(a, b)  # warm-up: thread pool, kernel selection
            while True:
                tick = time.perf_counter()
                torch.matmul(a, b)
                best = min(best, time.perf_counter() - tick)
                if time.perf_counter() >= deadline:
                    break
        flops[precision] = 2 * n**3 / best
    _cpu_peak = CpuPeak(cpu_model_name(), torch.get_num_threads(), flops, time.perf_counter() - start)
    return _cpu_peak


def _affordable_size(dtype, largest: int, budget: float, smallest: int = 256) -> int:
    """The largest power-of-two multiple of `smallest` up to `largest` whose matmul takes under `budget`
    seconds (a CPU emulating bf16 would spend minutes on one 2048² matmul)."""
    import torch

    n = smallest
    with torch.inference_mode():
        a = torch.randn(n, n, dtype=dtype)
        torch.matmul(a, a)
        tick = time.perf_counter()
        torch.matmul(a, a)
        seconds = time.perf_counter() - tick
    while n * 2 <= largest and seconds * 8 < budget:
        n, seconds = n * 2, seconds * 8
    return min(n, largest)


def cpu_profile(seconds: float = 2.0) -> Hardware:
    """This machine as a `Hardware` profile (see the module docstring for the power and price figures)."""
    import torch

    from frugal_r1.device import device_memory_bytes
    from frugal_r1.precision import cpu_class

    peak = measure_cpu_peak(seconds)
    calibration = CPU_CALIBRATION[cpu_class()]
    return Hardware(
        name="cpu",
        peak_flops=dict(peak.flops),
        memory_bytes=device_memory_bytes(torch.device("cpu")),
        power_w=CPU_WATTS_PER_CORE * peak.threads,
        usd_per_hour=CPU_USD_PER_CORE_HOUR * peak.threads,
        mfu=min(calibration.training.values()),
        mfu_by_precision=dict(calibration.training),
        generation_mfu=calibration.generation,
        generation_precision=CPU_GENERATION_PRECISION,
        source=f"measured: {peak.threads} threads of {peak.model_name}, best {_describe(peak)}",
        details={"cpu_model": peak.model_name, "threads": peak.threads},
    )


def _describe(peak: CpuPeak) -> str:
    return ", ".join(f"{p} {f / 1e9:.0f} GFLOP/s" for p, f in peak.flops.items()) + f" in {peak.seconds:.1f}s"


__all__ = ["BYTES_PER_ELEMENT", "CpuPeak", "Hardware", "cpu_profile", "get_hardware", "load_profiles",
           "measure_cpu_peak"]
