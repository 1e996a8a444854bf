"""The CPU calibration of the cost planner, measured: MFU per stage of finished speedruns.

For each run directory, each stage's FLOPs as the planner counts them (at the shapes the run measured: its
rollouts' prompt and completion lengths, sampling rounds and trained fraction) over the stage's measured
seconds and the peak its ledger measured. GRPO is split into its training passes (the logged
`seconds_training`) and the rest — rollouts, held-out evaluations, checkpoints — which the planner prices as
generation against the fp32 peak. These figures are what `CPU_CALIBRATION` in frugal_r1/cost/hardware.py
holds for each CPU class (`frugal_r1.precision.cpu_class()`: this machine is printed first).

    .venv/bin/python benchmarks/cpu_mfu_from_speedruns.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from frugal_r1.cost.hardware import Hardware
from frugal_r1.cost.planner import project_stage
from frugal_r1.cost.run_recipe import planner_stage
from frugal_r1.metrics import read_metrics
from frugal_r1.model.config import ModelConfig
from frugal_r1.precision import cpu_class
from frugal_r1.speedrun.report import _rollout_shape
from frugal_r1.speedrun.run import stage_configs


def run_mfus(run: Path) -> dict[str, float]:
    plan = json.loads((run / "speedrun.json").read_text())
    configs = stage_configs(Path(plan["recipe"]), plan["seed"], plan["minutes"], plan["overrides"])
    model_cfg = ModelConfig.from_hf_dict(json.loads((run / "pretrain" / "final" / "config.json").read_text()))
    out = {}
    for name in ("pretrain", "sft", "grpo"):
        ledger = json.loads((run / name / "ledger.json").read_text())
        peaks = ledger["hardware_profile"]["peak_flops"]
        unit = Hardware(name="cpu", peak_flops=peaks, memory_bytes=10**12, power_w=1.0, usd_per_hour=1.0, mfu=1.0,
                        generation_mfu=1.0, generation_precision="fp32")
        rollouts = _rollout_shape(run / name, configs[name].rl) if name == "grpo" else None
        stage = planner_stage(name, configs[name], unit, rollouts)
        projected = project_stage(stage, model_cfg, unit)
        seconds = ledger["wall_seconds"]
        if name == "grpo":
            training = sum(r["seconds_training"] for r in read_metrics(run / name) if "seconds_training" in r)
            out[f"grpo training ({stage.precision})"] = projected.train_flops.total / peaks[stage.precision] / training
            out["grpo generation (fp32 peak)"] = projected.generation_flops.total / peaks["fp32"] / (seconds - training)
        else:
            out[f"{name} ({stage.precision})"] = projected.train_flops.total / peaks[stage.precision] / seconds
    return out


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(f"this machine's CPU class: {cpu_class()}")
    for run in map(Path, sys.argv[1:]):
        print(f"{run}: " + ", ".join(f"{k} {v:.3f}" for k, v in run_mfus(run).items()))


if __name__ == "__main__":
    main()
