"""The speedrun's report card: report.md, report.json and PNG plots, from what the stages wrote.

Reads each stage's ledger.json and metrics.jsonl and the two evaluations; writes
- the task table after SFT and after GRPO (pass@1 with 95% intervals, cons@k, unparsable), each task's
  floor and aim, and the GRPO gain in mean pass@1 with its interval (a paired bootstrap over problems);
- stage times, FLOPs, kWh and dollars from the ledgers, beside the planner's projection (predicted vs
  measured per stage);
- plots: pretraining loss, GRPO reward / held-out accuracy / completion length over steps, and held-out
  accuracy against training minutes (pretraining + SFT + GRPO from the ledgers; evaluations left out);
- the same problems answered before and after GRPO;
- with `--compare DIR…`, this run beside other finished speedruns (compare.py): what more time buys.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

from frugal_r1.atomic import atomic_write_bytes
from frugal_r1.metrics import read_metrics
from frugal_r1.recipe import STAGES

FLOORS = {"chain_sum": 0.80, "leg_counting": 0.70, "basic_arithmetic": 0.60, "countdown": 0.20, "puzzle24": 0.20}
AIMS = {"chain_sum": 0.95, "leg_counting": 0.90, "basic_arithmetic": 0.80, "countdown": 0.50, "puzzle24": 0.50}


def _tasks(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["task"]: t for t in evaluation["tasks"]}


def gain_interval(before: dict[str, Any], after: dict[str, Any], rounds: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean pass@1 gain (macro over tasks) with a 95% paired-bootstrap interval over problems."""
    b, a = _tasks(before), _tasks(after)
    names = [n for n in a if n in b]
    per_task = {n: ([sum(p["scores"]) / len(p["scores"]) for p in b[n]["problems"]],
                    [sum(p["scores"]) / len(p["scores"]) for p in a[n]["problems"]]) for n in names}
    gain = sum(sum(y) / len(y) - sum(x) / len(x) for x, y in per_task.values()) / len(names)
    rng = random.Random(seed)
    draws = []
    for _ in range(rounds):
        total = 0.0
        for x, y in per_task.values():
            idx = [rng.randrange(len(x)) for _ in range(len(x))]
            total += sum(y[i] - x[i] for i in idx) / len(idx)
        draws.append(total / len(names))
    draws.sort()
    return {"gain": gain, "low": draws[int(0.025 * rounds)], "high": draws[int(0.975 * rounds) - 1]}


def projection(out: Path, configs: dict) -> dict[str, dict[str, float]]:
    """The planner's prediction for each stage on this machine (F8), to set beside the ledgers."""
    from frugal_r1.cost.run_recipe import project_run
    from frugal_r1.ledger import resolve_hardware
    from frugal_r1.model.config import ModelConfig

    model_cfg = ModelConfig.from_hf_dict(json.loads((out / "pretrain" / "final" / "config.json").read_text()))
    hardware = resolve_hardware("cpu")
    recorded = json.loads((out / "pretrain" / "ledger.json").read_text()).get("hardware_profile", {})
    if recorded.get("peak_flops"):  # the peaks the run measured, not this moment's (a report rewritten later)
        hardware = dataclasses.replace(hardware, peak_flops=recorded["peak_flops"])
    stages = project_run(configs, model_cfg, hardware, _rollout_shape(out / "grpo", configs["grpo"].rl))
    return {name: {"seconds": s.seconds, "usd": s.usd, "kwh": s.kwh, "flops": float(s.flops)}
            for name, s in stages.items()}


def _rollout_shape(stage_dir: Path, rl) -> dict[str, Any] | None:
    """What the GRPO run's rollouts measured (per-step means): prompt and completion tokens, sampling rounds,
    the fraction of the step's sequences that trained and the padded length they trained at; None when
    nothing was logged."""
    records = [r for r in read_metrics(stage_dir) if "completion_length_mean" in r]
    if not records:
        return None
    per_step = rl.prompts_per_step * rl.group_size

    def mean(value) -> float:
        return sum(value(r) for r in records) / len(records)

    shape = {"mean_new_tokens": round(mean(lambda r: r["completion_length_mean"])),
             "sampling_rounds": mean(lambda r: r.get("sampling_rounds", 1)),
             "trained_fraction": mean(lambda r: min(r.get("kept_completions", per_step), per_step) / per_step)}
    if all("prompt_length_mean" in r for r in records):
        shape["prompt_tokens"] = round(mean(lambda r: r["prompt_length_mean"]))
    padded = [r["train_length_mean"] for r in records if "train_length_mean" in r]  # absent: nothing trained
    if padded:
        shape["train_length"] = round(sum(padded) / len(padded))
    return shape


def write_report(out: Path, configs: dict, settings, eval_sft: dict, eval_grpo: dict, timings: dict[str, float],
                 compared: list[Path] = ()) -> dict[str, Any]:
    """`timings`: every stage's seconds (timings.py); the whole run is their sum."""
    ledgers = {name: json.loads((out / name / "ledger.json").read_text()) for name in STAGES}
    try:
        predicted = projection(out, configs)
    except Exception as error:  # the report must not die on the planner; say why the column is empty
        predicted = {"error": str(error)}
    plots = _plots(out, eval_sft, eval_grpo, ledgers)
    gain = gain_interval(eval_sft, eval_grpo)
    sft_tasks, grpo_tasks = _tasks(eval_sft), _tasks(eval_grpo)
    floors = {name: {"pass_at_1": grpo_tasks[name]["pass_at_1"], "floor": FLOORS[name], "aim": AIMS[name],
                     "meets_floor": grpo_tasks[name]["pass_at_1"] >= FLOORS[name]}
              for name in grpo_tasks if name in FLOORS}
    summary = {
        "wall_minutes": sum(timings.values()) / 60,
        "stage_minutes": {k: v / 60 for k, v in timings.items()},
        "usd": sum(l["usd"] for l in ledgers.values()),
        "kwh": sum(l["kwh"] for l in ledgers.values()),
        "ledgers": ledgers, "predicted": predicted,
        "after_sft": {n: _row(t) for n, t in sft_tasks.items()},
        "after_grpo": {n: _row(t) for n, t in grpo_tasks.items()},
        "mean_pass_at_1": {"sft": eval_sft["pass_at_1"], "grpo": eval_grpo["pass_at_1"]},
        "grpo_gain": gain, "grpo_gain_meets_floor": gain["gain"] >= 0.05 and gain["low"] > 0,
        "floors": floors, "plots": plots,
    }
    if compared:
        _compare(out, summary, compared)
    atomic_write_bytes(out / "report.json", json.dumps(summary, indent=2).encode())
    atomic_write_bytes(out / "report.md", _markdown(summary, eval_sft, eval_grpo, settings).encode())
    return summary


def _compare(out: Path, summary: dict[str, Any], compared: list[Path]) -> None:
    """Set this run beside the --compare runs: summary["compared"] (the table's lines) and a plot."""
    from frugal_r1.speedrun.compare import RunResult, load_run, plot, table

    plan = json.loads((out / "speedrun.json").read_text())
    runs = [RunResult.of(f"{out.name} (this run)", plan, summary, summary["wall_minutes"])]
    runs += [load_run(Path(d)) for d in compared]
    summary["compared"] = table(runs)
    plot(runs, out / "accuracy_vs_minutes_runs.png")
    summary["plots"]["accuracy vs minutes, runs compared"] = "accuracy_vs_minutes_runs.png"


def _row(task: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "samples", "pass_at_1", "ci95", "cons_at_k", "correct", "wrong", "unparsable", "truncated",
            "mean_completion_tokens")
    return {k: task[k] for k in keys}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _budget_text(settings) -> str:
    own = settings.eval_task_max_new_tokens
    if not own:
        return f"{settings.eval_max_new_tokens:,}"
    each = ", ".join(f"{budget:,} for {name}" for name, budget in own.items())
    return f"{settings.eval_max_new_tokens:,} ({each})"


def _markdown(s: dict[str, Any], eval_sft: dict, eval_grpo: dict, settings) -> str:
    lines = ["# frugal-r1 speedrun report", "",
             f"Random weights → reasoning model in **{s['wall_minutes']:.1f} minutes**, "
             f"**${s['usd']:.4f}**, {s['kwh']:.4f} kWh.", "",
             f"Held-out: {settings.eval_n} problems per task (reasoning-gym seed {settings.eval_seed}, disjoint from "
             f"training), {settings.eval_samples} samples each at T = 0.6, top-p 0.95, at most "
             f"{_budget_text(settings)} new tokens; pass@1 = mean over samples, 95% Wilson intervals.", "",
             "## Tasks", "",
             "| task | after SFT | after GRPO | 95% CI | cons@k | unparsable | floor | aim |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in s["after_grpo"].items():
        sft = s["after_sft"].get(name, {})
        floor = s["floors"].get(name, {})
        mark = "✅" if floor.get("meets_floor") else "❌"
        lines.append(f"| {name} | {_pct(sft.get('pass_at_1', 0))} | **{_pct(row['pass_at_1'])}** | "
                     f"{_pct(row['ci95'][0])}–{_pct(row['ci95'][1])} | {_pct(row['cons_at_k'])} | "
                     f"{row['unparsable']} | {_pct(floor.get('floor', 0))} {mark} | {_pct(floor.get('aim', 0))} |")
    gain = s["grpo_gain"]
    lines += ["", f"Mean pass@1: {_pct(s['mean_pass_at_1']['sft'])} after SFT → **{_pct(s['mean_pass_at_1']['grpo'])}** "
              f"after GRPO; gain {100 * gain['gain']:+.1f} points, 95% CI [{100 * gain['low']:+.1f}, "
              f"{100 * gain['high']:+.1f}] (floor: +5 with the interval above zero "
              f"{'✅' if s['grpo_gain_meets_floor'] else '❌'}).", "",
              "## Stages", "", "| stage | minutes | tokens | TFLOP | MFU | kWh | dollars | predicted minutes | predicted $ |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, ledger in s["ledgers"].items():
        predicted = s["predicted"].get(name, {}) if isinstance(s["predicted"], dict) else {}
        lines.append(f"| {name} | {ledger['wall_seconds'] / 60:.1f} | {ledger['tokens']:,} | {ledger['flops'] / 1e12:.1f} | "
                     f"{_pct(ledger['mfu'])} | {ledger['kwh']:.5f} | ${ledger['usd']:.4f} | "
                     f"{predicted.get('seconds', float('nan')) / 60:.1f} | ${predicted.get('usd', float('nan')):.4f} |")
    for name in ("eval_sft", "eval_grpo"):
        if name in s["stage_minutes"]:
            lines.append(f"| {name} | {s['stage_minutes'][name]:.1f} | | | | | | | |")
    if s.get("compared"):
        lines += ["", "## What more time buys", "",
                  "This run beside other speedruns (`--compare`); minutes are measured, pass@1 after GRPO per task.",
                  ""] + s["compared"]
    lines += ["", "## Plots", ""] + [f"![{name}]({path})" for name, path in s["plots"].items()]
    lines += ["", "## Before and after GRPO", ""]
    before_tasks, after_tasks = _tasks(eval_sft), _tasks(eval_grpo)
    for name, after in after_tasks.items():
        before = before_tasks.get(name)
        if not before:
            continue
        for b_ex, a_ex in list(zip(before["examples"], after["examples"]))[: settings.examples]:
            if b_ex["index"] != a_ex["index"]:
                continue
            lines += [f"### {name} #{a_ex['index']} (reference {a_ex['reference']})", "",
                      f"After SFT (score {b_ex['score']:.0f}):", "", "```", b_ex["completion"].strip()[:1500], "```", "",
                      f"After GRPO (score {a_ex['score']:.0f}):", "", "```", a_ex["completion"].strip()[:1500], "```", ""]
            break
    return "\n".join(lines) + "\n"


def _plots(out: Path, eval_sft: dict, eval_grpo: dict, ledgers: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    pre = read_metrics(out / "pretrain")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in pre if "loss" in r]
    ax.plot(steps, [r["lm_loss"] for r in pre if "loss" in r], label="train (next token)")
    evals = [(r["step"], r["eval_loss"]) for r in pre if "eval_loss" in r]
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out")
    ax.set(xlabel="step", ylabel="loss", title="Pretraining loss")
    ax.legend()
    paths["pretrain loss"] = _save(fig, out / "pretrain_loss.png")

    grpo = read_metrics(out / "grpo")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    train = [r for r in grpo if "reward_mean" in r]
    axes[0].plot([r["step"] for r in train], [r["reward_mean"] for r in train], label="reward")
    if train and "accuracy" in train[0]:
        axes[0].plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train accuracy")
    axes[0].set(xlabel="step", title="GRPO reward")
    axes[0].legend()
    held = [(r["step"], r["eval_pass@1"]) for r in grpo if "eval_pass@1" in r]
    last_step = max((r["step"] for r in grpo if "step" in r), default=1)
    # The speedrun's two evaluations (every held-out problem) and GRPO's own small in-run checks are drawn apart:
    # on one line the checks' sampling noise would read as a trend.
    axes[1].plot([0, last_step], [eval_sft["pass_at_1"], eval_grpo["pass_at_1"]], "s-", label="speedrun evaluation")
    if held:
        axes[1].plot(*zip(*held), "o", alpha=0.6, label="in-run check (few problems)")
    axes[1].set(xlabel="step (0 = SFT checkpoint)", ylabel="mean pass@1", title="Held-out accuracy")
    axes[1].legend()
    axes[2].plot([r["step"] for r in train], [r["completion_length_mean"] for r in train])
    axes[2].set(xlabel="step", ylabel="tokens", title="Completion length")
    paths["grpo"] = _save(fig, out / "grpo.png")

    minutes_before_grpo = (ledgers["pretrain"]["wall_seconds"] + ledgers["sft"]["wall_seconds"]) / 60
    per_step = ledgers["grpo"]["wall_seconds"] / 60 / max(1, last_step)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([minutes_before_grpo, minutes_before_grpo + ledgers["grpo"]["wall_seconds"] / 60],
            [eval_sft["pass_at_1"], eval_grpo["pass_at_1"]], "s-", label="speedrun evaluation (after SFT, after GRPO)")
    if held:
        ax.plot([minutes_before_grpo + step * per_step for step, _ in held], [v for _, v in held], "o", alpha=0.6,
                label="GRPO's in-run checks (few problems)")
    ax.legend()
    ax.set(xlabel="training minutes (pretrain + SFT + GRPO)", ylabel="mean pass@1", title="Accuracy vs minutes")
    paths["accuracy vs minutes"] = _save(fig, out / "accuracy_vs_minutes.png")
    return paths


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name
