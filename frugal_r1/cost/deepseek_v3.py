"""DeepSeek-V3's reported training cost, and the same cost from first principles.

Reported (DeepSeek-V3 Technical Report, arXiv:2412.19437, Table 1), H800 GPU-hours at $2 per GPU-hour:

    pre-training 2,664K + context extension 119K + post-training 5K = 2,788K GPU-hours = $5.576M

stored as integers so the totals are exact. The report's caveat applies: this is the official training
run only, not research, ablations, data or salaries.

First principles: training FLOPs per token of the 671B preset (frugal_r1.model.flops: 6 × active matmul
parameters, the causal attention term and the one MTP module, each shown separately) × tokens, against
the H800's dense peak (989.5 TFLOP/s bf16, 1979 TFLOP/s fp8 — see hardware.toml):

- pre-training: 14.8T tokens at 4K sequence length (report §4.2);
- context extension (report §4.3): 1000 steps of 1920 × 32K-token sequences, then 1000 steps of
  480 × 128K-token sequences;
- post-training (SFT on 1.5M instances plus RL): the report gives no token counts, so no FLOPs.

MFU implied by the reported hours = FLOPs / (GPU-hours × 3600 × peak), against both peaks (DeepSeek ran
its GEMMs in fp8 and attention in bf16, so the truth lies between them). GPU-hours at a chosen MFU =
FLOPs / (MFU × peak × 3600). Energy = GPU-hours × the hardware profile's power (700 W for the H800: the
GPUs' TDP only, no host, network or cooling).
"""

from __future__ import annotations

from typing import Any

from frugal_r1.cost.hardware import Hardware, load_profiles
from frugal_r1.model.config import ModelConfig, preset
from frugal_r1.model.flops import FlopCounts, count_parameters, training_flops_per_token

REPORTED_GPU_HOURS: dict[str, int] = {"pre-training": 2_664_000, "context extension": 119_000,
                                      "post-training": 5_000}
USD_PER_GPU_HOUR = 2
PRETRAIN_TOKENS = 14_800_000_000_000
PRETRAIN_SEQ_LEN = 4096
CONTEXT_EXTENSION_PHASES = ((32_768, 1920, 1000), (131_072, 480, 1000))  # (seq_len, batch, steps)
GPUS = 2048
REPORTED_PARAMETERS = {"total": 671_000_000_000, "active": 37_000_000_000}


def reported(hardware: Hardware | None = None) -> dict[str, Any]:
    """The report's table; kWh at the H800's power (700 W) unless another profile is given."""
    hardware = hardware or load_profiles()["H800"]
    stages = [{"name": name, "gpu_hours": hours, "usd": hours * USD_PER_GPU_HOUR,
               "kwh": hours * hardware.power_w / 1000} for name, hours in REPORTED_GPU_HOURS.items()]
    return {"stages": stages, "gpu_hours": sum(REPORTED_GPU_HOURS.values()),
            "usd": sum(REPORTED_GPU_HOURS.values()) * USD_PER_GPU_HOUR,
            "kwh": sum(s["kwh"] for s in stages), "usd_per_gpu_hour": USD_PER_GPU_HOUR}


def stage_flops(cfg: ModelConfig) -> dict[str, tuple[int, FlopCounts]]:
    """Tokens and training FLOPs of the stages the report sizes: name -> (tokens, FLOPs)."""
    pretrain = training_flops_per_token(cfg, PRETRAIN_SEQ_LEN) * PRETRAIN_TOKENS
    context_tokens, context = 0, FlopCounts(0, 0)
    for seq_len, batch, steps in CONTEXT_EXTENSION_PHASES:
        tokens = seq_len * batch * steps
        context_tokens += tokens
        context = context + training_flops_per_token(cfg, seq_len) * tokens
    return {"pre-training": (PRETRAIN_TOKENS, pretrain), "context extension": (context_tokens, context)}


def first_principles(hardware: Hardware, mfu: float, cfg: ModelConfig | None = None) -> dict[str, Any]:
    """FLOPs, implied MFU and GPU-hours at `mfu` for each stage with known tokens, on `hardware`."""
    cfg = cfg or preset("deepseek-v3-671b")
    counts = count_parameters(cfg)
    peaks = {p: hardware.peak_flops[p] for p in ("bf16", "fp8") if p in hardware.peak_flops}
    stages = []
    for name, (tokens, flops) in stage_flops(cfg).items():
        hours = REPORTED_GPU_HOURS[name]
        at_mfu = {p: flops.total / (mfu * peak * 3600) for p, peak in peaks.items()}
        stages.append({
            "name": name, "tokens": tokens, "flops": flops.total, "flops_breakdown": flops.to_dict(),
            "flops_per_token": flops.total / tokens,
            "reported_gpu_hours": hours,
            "implied_mfu": {p: flops.total / (hours * 3600 * peak) for p, peak in peaks.items()},
            "gpu_hours": at_mfu,
            "usd": {p: h * hardware.usd_per_hour for p, h in at_mfu.items()},
            "kwh": {p: h * hardware.power_w / 1000 for p, h in at_mfu.items()},
        })
    per_token = training_flops_per_token(cfg, PRETRAIN_SEQ_LEN)
    total_flops = sum(s["flops"] for s in stages)
    hours_total = {p: sum(s["gpu_hours"][p] for s in stages) for p in peaks}
    return {
        "parameters": counts.to_dict(),
        "pretrain_flops_per_token": {**per_token.to_dict(), "seq_len": PRETRAIN_SEQ_LEN},
        "six_n_check": {"six_active_tokens": 6 * counts.active * PRETRAIN_TOKENS,
                        "six_37b_tokens": 6 * REPORTED_PARAMETERS["active"] * PRETRAIN_TOKENS},
        "hardware": hardware.name, "peak_flops": peaks, "mfu": mfu, "stages": stages, "flops": total_flops,
        "gpu_hours": hours_total,
        "usd": {p: h * hardware.usd_per_hour for p, h in hours_total.items()},
        "kwh": {p: h * hardware.power_w / 1000 for p, h in hours_total.items()},
        "note": "post-training has no published token count, so it has no first-principles row",
    }


def report(hardware: Hardware, mfu: float) -> dict[str, Any]:
    """Everything `frugal-r1 cost deepseek-v3` shows; top-level keys are the reported (H800) totals and
    `first_principles` holds the derivation on `hardware`."""
    table = reported()
    derived = first_principles(hardware, mfu)
    flops_by_stage = {s["name"]: s["flops"] for s in derived["stages"]}
    stages = [{**s, "flops": flops_by_stage.get(s["name"])} for s in table["stages"]]
    return {"model": "deepseek-v3-671b", "hardware": hardware.name, "gpus": GPUS,
            "gpu_hours": table["gpu_hours"], "usd": table["usd"], "kwh": table["kwh"], "flops": derived["flops"],
            "usd_per_gpu_hour": USD_PER_GPU_HOUR, "stages": stages, "first_principles": derived}


__all__ = ["CONTEXT_EXTENSION_PHASES", "PRETRAIN_SEQ_LEN", "PRETRAIN_TOKENS", "REPORTED_GPU_HOURS",
           "USD_PER_GPU_HOUR", "first_principles", "report", "reported", "stage_flops"]
