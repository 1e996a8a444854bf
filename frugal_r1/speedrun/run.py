"""`frugal-r1 speedrun`: random weights → a model that reasons, on a CPU, with a report card.

The stages, each a normal run directory under --out, each rerunnable alone from the same recipe
(`frugal-r1 pretrain --config recipes/speedrun.toml --out …`, `sft --init …`, `grpo --init …`):

    pretrain/   tokenizer + a DeepSeek-V3-style model (MLA + MoE + MTP; the `small` preset narrowed by the
                recipe to 4 layers of width 128, 2.5M parameters) on reasoning traces
    sft/        cold-start SFT in the chat format (init: pretrain/final)
    eval_sft.json   held-out evaluation, R1 protocol (T 0.6, top-p 0.95, k samples, pass@1, cons@k)
    grpo/       GRPO with verifiable rewards (init: sft/final)
    eval_grpo.json
    report.md, report.json, *.png, final/ (model + tokenizer, loadable by transformers)

`--minutes M` scales every stage's step count by M / 30 (the recipe's counts are the 30-minute budget).
`--compare DIR` (repeatable) sets other finished speedruns beside this one in the report (compare.py); a
finished run resumed with it only rewrites its report.
`--resume` continues: finished stages (those with final/ and ledger.json) are kept, the stage in
progress resumes from its last checkpoint. Settings may change only for stages not yet started, so removing
grpo/ and resuming with another [grpo] reruns GRPO (and its evaluation) from the same SFT model. An existing
non-empty --out is never overwritten silently.
Held-out problems come from reasoning-gym seeds disjoint from every training seed (seed + eval offset).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frugal_r1.atomic import atomic_write_bytes
from frugal_r1.errors import UserError
from frugal_r1.recipe import StageConfig, config_differences, load_stage, parse_recipe, update_section
from frugal_r1.speedrun.compare import check_runs
from frugal_r1.speedrun import timings

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "speedrun.toml"
BUDGET_MINUTES = 30.0
EVALUATIONS = {"sft": "eval_sft.json", "grpo": "eval_grpo.json"}  # the held-out evaluation of each stage's model


@dataclass
class SpeedrunConfig:
    eval_n: int = 200  # held-out problems per task
    eval_samples: int = 4
    eval_max_new_tokens: int = 768
    eval_task_max_new_tokens: dict[str, int] = field(default_factory=dict)  # tasks with their own budget
    eval_seed: int = 20_251_127  # reasoning-gym seed of the held-out set, far from the training seeds
    eval_batch_size: int = 100  # problems per generation call (times eval_samples rows)
    examples: int = 3  # problems shown before/after GRPO in the report


def load_speedrun_config(path: Path) -> SpeedrunConfig:
    """The recipe's [speedrun] table, each value checked before hours of training, not after."""
    table = parse_recipe(path).get("speedrun", {})
    try:
        settings = update_section(SpeedrunConfig(), table, "speedrun")
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    budgets = settings.eval_task_max_new_tokens
    checks = [(settings.eval_n >= 1 and settings.eval_samples >= 1 and settings.eval_batch_size >= 1,
               "eval_n, eval_samples and eval_batch_size must be >= 1"),
              (settings.eval_max_new_tokens >= 1 and all(isinstance(n, int) and n >= 1 for n in budgets.values()),
               "eval_max_new_tokens and every eval_task_max_new_tokens must be whole numbers >= 1"),
              (settings.examples >= 0, "examples must be >= 0")]
    for ok, message in checks:
        if not ok:
            raise UserError(f"{path}: [speedrun] {message}")
    return settings


def scaled(cfg: StageConfig, factor: float) -> StageConfig:
    cfg.train.steps = max(1, int(round(cfg.train.steps * factor)))
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(0, cfg.train.steps // 5))
    if cfg.train.save_every:
        cfg.train.save_every = max(1, int(round(cfg.train.save_every * factor)))
    if cfg.train.eval_every:
        cfg.train.eval_every = max(1, int(round(cfg.train.eval_every * factor)))
    return cfg


def stage_configs(recipe: Path, seed: int, minutes: float, overrides: list[str]) -> dict[str, StageConfig]:
    factor = minutes / BUDGET_MINUTES
    configs = {}
    for stage in ("pretrain", "sft", "grpo"):
        try:
            cfg = load_stage(stage, recipe, [o.split(":", 1)[1] for o in overrides if o.startswith(stage + ":")])
        except UserError as error:
            raise UserError(f"{stage}: {error}") from None
        cfg.train.seed = seed
        configs[stage] = scaled(cfg, factor)
    return configs


def predicted_line(configs: dict[str, StageConfig], minutes: float, done: tuple[str, ...] = ()) -> str:
    """The planner's time for each training stage still to run (not in `done`) on this machine, said before the
    run starts (the report sets the same projection beside the ledgers after it); the evaluations are not priced."""
    from frugal_r1.cost.run_recipe import project_run
    from frugal_r1.device import resolve_device
    from frugal_r1.ledger import stage_hardware

    cfg = configs["pretrain"]
    try:
        hardware = stage_hardware(cfg.ledger, resolve_device(cfg.train.device).type)
        stages = project_run({name: c for name, c in configs.items() if name not in done},
                             cfg.model_config(vocab_size=cfg.data.vocab_size), hardware)
    except Exception as error:  # a prediction must never stop the run
        return f"[speedrun] no time prediction: {error}"
    total = sum(s.seconds for s in stages.values()) / 60
    parts = ", ".join(f"{name} {s.seconds / 60:.1f}" for name, s in stages.items())
    left = f" still to run ({', '.join(done)} finished)" if done else ""
    return (f"[speedrun] predicted on {hardware.name}: training{left} {total:.1f} min ({parts}) plus two held-out "
            f"evaluations, against a budget of {minutes:g} min for everything")


def _finished(stage_dir: Path) -> bool:
    return (stage_dir / "final" / "config.json").exists() and (stage_dir / "ledger.json").exists()


def run_speedrun(out: str | Path, seed: int = 0, minutes: float = BUDGET_MINUTES, resume: bool = False,
                 recipe: str | Path | None = None, overrides: list[str] = (),
                 compare: list[str | Path] = ()) -> dict[str, Any]:
    from frugal_r1.train.grpo_run import run_grpo
    from frugal_r1.train.run import run_lm_stage

    recipe = Path(recipe) if recipe else DEFAULT_RECIPE
    settings = load_speedrun_config(recipe)
    if minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {minutes}")
    compared = check_runs(list(compare))  # before hours of training, not after
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"--out {out} exists and is not empty; pass --resume to continue it or choose another --out")
    configs = stage_configs(recipe, seed, minutes, list(overrides))
    out.mkdir(parents=True, exist_ok=True)
    plan = {"seed": seed, "minutes": minutes, "recipe": str(recipe), "overrides": list(overrides),
            "speedrun": dataclasses.asdict(settings), "stages": {k: v.to_dict() for k, v in configs.items()}}
    plan_path = out / "speedrun.json"
    if resume and plan_path.exists():
        _check_continuable(out, configs)
        changed = _changed_settings(out, json.loads(plan_path.read_text()), plan, configs)
        if changed:
            raise UserError(f"--resume: {out} was started with other settings: {', '.join(changed)} (see {plan_path}; "
                            f"remove a stage's directory to rerun it with new settings)")
    atomic_write_bytes(plan_path, json.dumps(plan, indent=2).encode())
    done = tuple(name for name in configs if _finished(out / name))
    if len(done) < len(configs):
        print(predicted_line(configs, minutes, done))
    names = list(configs)

    def stage(name: str, fn) -> None:
        directory = out / name
        if _finished(directory):
            print(f"[speedrun] {name}: already finished, kept")
            return
        for later in names[names.index(name):]:  # evaluations of the models about to change
            if later in EVALUATIONS:
                (out / EVALUATIONS[later]).unlink(missing_ok=True)
        tick = time.perf_counter()
        fn(directory, resume and _started(directory))
        timings.record(out, name, time.perf_counter() - tick)  # kept in timings.json across --resume

    stage("pretrain", lambda d, r: run_lm_stage("pretrain", configs["pretrain"], d, resume=r))
    stage("sft", lambda d, r: run_lm_stage("sft", configs["sft"], d, resume=r, init=str(out / "pretrain" / "final")))
    eval_sft = _evaluate_once(out / EVALUATIONS["sft"], out / "sft" / "final", configs["sft"], settings)
    stage("grpo", lambda d, r: run_grpo(configs["grpo"], d, init=str(out / "sft" / "final"), resume=r))
    eval_grpo = _evaluate_once(out / EVALUATIONS["grpo"], out / "grpo" / "final", configs["grpo"], settings)

    final = out / "final"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(out / "grpo" / "final", final)
    from frugal_r1.speedrun.report import write_report

    seconds = timings.stage_seconds(out, {"eval_sft": eval_sft, "eval_grpo": eval_grpo})
    summary = write_report(out, configs, settings, eval_sft, eval_grpo, seconds, compared)
    print(f"[speedrun] done in {summary['wall_minutes']:.1f} min: report {out / 'report.md'}")
    return summary


def _started(stage_dir: Path) -> bool:
    return stage_dir.is_dir() and any(stage_dir.iterdir())


def _check_continuable(out: Path, configs: dict[str, StageConfig]) -> None:
    """A stage that is not finished must have no later stage started: that one was built on the missing one."""
    names = list(configs)
    for i, name in enumerate(names):
        if _finished(out / name):
            continue
        later = [n for n in names[i + 1:] if _started(out / n)]
        if later:
            raise UserError(f"--resume: {out / later[0]} was built on {out / name}, which is not finished; "
                            f"remove {out / later[0]} too")


def _changed_settings(out: Path, recorded: dict[str, Any], plan: dict[str, Any],
                      configs: dict[str, StageConfig]) -> list[str]:
    """What keeps a run from continuing under `plan` (empty: nothing): every stage up to the last one started must
    resolve to the settings recorded for it (a setting the record lacks, added by a later version of frugal-r1,
    counting as its default), and the evaluation settings must be equal once an evaluation exists. Stages not
    started may change. The recipe's path is recorded, not compared, so a run continues from another checkout of
    the same recipe."""
    stages, names = recorded.get("stages", {}), list(configs)
    last = max((i for i, name in enumerate(names) if _started(out / name)), default=-1)
    changed = [f"{name}: {setting}" for name in names[: last + 1]
               for setting in config_differences(stages.get(name), configs[name])]
    if any((out / evaluation).exists() for evaluation in EVALUATIONS.values()):
        speedrun = {**dataclasses.asdict(SpeedrunConfig()), **recorded.get("speedrun", {})}
        changed += [f"speedrun.{key}" for key, value in plan["speedrun"].items() if speedrun.get(key) != value]
    return changed


def _evaluate_once(path: Path, model_dir: Path, cfg: StageConfig, settings: SpeedrunConfig) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    from frugal_r1.eval import evaluate
    from frugal_r1.generate import load_backend
    from frugal_r1.tasks import load_task

    tick = time.perf_counter()
    tasks = [load_task(t, size=settings.eval_n, seed=settings.eval_seed, **cfg.data.task_config.get(t, {}))
             for t in cfg.data.tasks]
    report = evaluate(load_backend(model_dir, device=cfg.train.device), tasks, n=settings.eval_n, samples=settings.eval_samples,
                      temperature=0.6, top_p=0.95, max_new_tokens=settings.eval_max_new_tokens,
                      seed=settings.eval_seed, batch_size=settings.eval_batch_size, progress=True,
                      task_max_new_tokens=settings.eval_task_max_new_tokens)
    result = report.to_dict()
    result["wall_seconds"] = time.perf_counter() - tick
    atomic_write_bytes(path, json.dumps(result, indent=2).encode())
    timings.record(path.parent, path.stem, result["wall_seconds"])
    return result
