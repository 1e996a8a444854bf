"""What more time buys: other finished speedruns set beside this one (`frugal-r1 speedrun --compare DIR`).

Each run is read from its own files — speedrun.json (seed, budget minutes) and report.json (stage ledgers,
pass@1 after SFT and after GRPO) — and becomes one `RunResult`. The report then carries
- a table, one row per run by training minutes: budget, measured minutes, mean pass@1 after SFT and after
  GRPO, and each task's pass@1 after GRPO;
- the accuracy-versus-minutes plot: mean pass@1 against training minutes (pretraining + SFT + GRPO, from the
  ledgers) for every run, after SFT and after GRPO, and each task's pass@1 after GRPO across the runs.

Runs with other seeds or recipes can be compared; the table shows each run's seed and budget so a reader
sees what differs.
"""

from __future__ import annotations

import json
from statistics import fmean
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugal_r1.errors import UserError
from frugal_r1.recipe import STAGES
from frugal_r1.speedrun.timings import stage_seconds


@dataclass(frozen=True)
class RunResult:
    label: str
    seed: int | None
    budget_minutes: float | None  # what --minutes asked for
    sft_minutes: float  # pretraining + SFT, measured (the ledgers): when the after-SFT model existed
    training_minutes: float  # pretraining + SFT + GRPO
    wall_minutes: float  # the whole run, evaluations included (timings.py)
    mean_sft: float
    mean_grpo: float
    tasks_grpo: dict[str, float]  # pass@1 after GRPO per task

    @classmethod
    def of(cls, label: str, plan: dict[str, Any], report: dict[str, Any], wall_minutes: float) -> "RunResult":
        ledgers = report["ledgers"]
        return cls(label=label, seed=plan.get("seed"), budget_minutes=plan.get("minutes"),
                   sft_minutes=sum(ledgers[s]["wall_seconds"] for s in STAGES[:2]) / 60,
                   training_minutes=sum(ledgers[s]["wall_seconds"] for s in STAGES) / 60,
                   wall_minutes=wall_minutes, mean_sft=report["mean_pass_at_1"]["sft"],
                   mean_grpo=report["mean_pass_at_1"]["grpo"],
                   tasks_grpo={name: row["pass_at_1"] for name, row in report["after_grpo"].items()})


def check_runs(directories: list[str | Path]) -> list[Path]:
    """The --compare directories, each a finished speedrun; UserError naming the first that is not."""
    paths = [Path(d) for d in directories]
    for path in paths:
        for name in ("speedrun.json", "report.json"):
            if not (path / name).is_file():
                raise UserError(f"--compare {path}: no {name} there (not a finished speedrun directory)")
    return paths


def load_run(directory: Path) -> RunResult:
    """A finished run from its files; its whole-run minutes recounted from its stages (a report written by an
    older frugal-r1 after a --resume counted only the resumed process)."""
    try:
        plan = json.loads((directory / "speedrun.json").read_text())
        report = json.loads((directory / "report.json").read_text())
        return RunResult.of(directory.name, plan, report, sum(stage_seconds(directory).values()) / 60)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"--compare {directory}: cannot read its results ({error!r})") from None


def table(runs: list[RunResult]) -> list[str]:
    """Markdown lines: one row per run, by training minutes."""
    runs = sorted(runs, key=lambda r: r.training_minutes)
    tasks = _task_names(runs)
    lines = ["| run | seed | budget | training min | whole run min | mean after SFT | mean after GRPO | "
             + " | ".join(tasks) + " |", "|---" * (7 + len(tasks)) + "|"]
    for run in runs:
        budget = f"{run.budget_minutes:g} min" if run.budget_minutes is not None else "?"
        cells = [f"{100 * run.tasks_grpo[t]:.1f}%" if t in run.tasks_grpo else "" for t in tasks]
        lines.append(f"| {run.label} | {run.seed} | {budget} | {run.training_minutes:.1f} | {run.wall_minutes:.1f} | "
                     f"{100 * run.mean_sft:.1f}% | {100 * run.mean_grpo:.1f}% | " + " | ".join(cells) + " |")
    return lines


def _task_names(runs: list[RunResult]) -> list[str]:
    return list(dict.fromkeys(name for run in runs for name in run.tasks_grpo))


def plot(runs: list[RunResult], path: Path) -> None:
    """Mean pass@1 against training minutes, one segment per run (after SFT at pretraining + SFT minutes,
    after GRPO at the end of training), and each task's pass@1 after GRPO across the runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: r.training_minutes)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for i, run in enumerate(runs):
        left.plot([run.sft_minutes, run.training_minutes], [run.mean_sft, run.mean_grpo], "o-", color=f"C{i}",
                  label=f"{run.label} (after SFT → after GRPO)")
    left.set(xlabel="training minutes (pretrain + SFT + GRPO)", ylabel="mean pass@1", title="Mean over tasks")
    left.legend(fontsize=8)
    # Runs of one budget (seeds) are averaged, so the line shows what time buys and the dots how far seeds spread.
    for i, task in enumerate(_task_names(runs)):
        groups = [[r for r in group if task in r.tasks_grpo] for group in _by_budget(runs)]
        groups = [group for group in groups if group]
        right.plot([fmean(r.training_minutes for r in g) for g in groups],
                   [fmean(r.tasks_grpo[task] for r in g) for g in groups], "o-", color=f"C{i}", label=task)
        right.plot([r.training_minutes for g in groups for r in g], [r.tasks_grpo[task] for g in groups for r in g],
                   ".", color=f"C{i}", alpha=0.5)
    right.set(xlabel="training minutes (pretrain + SFT + GRPO)", ylabel="pass@1 after GRPO",
              title="Each task (line: mean over the runs of a budget; dots: runs)")
    right.legend(fontsize=8)
    fig.suptitle("Accuracy vs minutes: what more time buys")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_budget(runs: list[RunResult]) -> list[list[RunResult]]:
    """Runs grouped by their --minutes budget (a run without one stands alone), in order of training time."""
    groups: dict[Any, list[RunResult]] = {}
    for run in sorted(runs, key=lambda r: r.training_minutes):
        groups.setdefault(run.budget_minutes if run.budget_minutes is not None else id(run), []).append(run)
    return list(groups.values())


__all__ = ["RunResult", "check_runs", "load_run", "table", "plot"]
