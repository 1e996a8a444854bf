"""Planner stages from run configs: what `frugal-r1 cost --recipe recipes/speedrun.toml` prices before a run,
and what the speedrun report sets beside its ledgers after one.

`planner_stage(name, cfg, hardware, rollouts=None)` turns one stage's `StageConfig` (frugal_r1.recipe) into a planner
`Stage`: pretrain and SFT are steps × batch × grad_accum sequences of seq_len tokens; GRPO is ⌈steps / μ⌉
rollout batches of prompts_per_step × G, plus its held-out evaluations (eval_n × eval_samples per task, at
every `train.eval_every` steps before the last and once at the end). `rollouts` is what a run measured about its rollouts
(prompt and completion lengths, sampling rounds, trained fraction, padded training length); without it the
stage assumes `UNMEASURED_PROMPT_TOKENS` of prompt, every completion at max_new_tokens, one round, all trained.

`project_run(configs, model_cfg, hardware, rollouts=None)` projects every stage of a run at once (the speedrun
prints it before it starts and sets it beside its ledgers after).

`recipe_stages(path, recipe, hardware)` reads a run recipe (the stages it has tables for, in pretrain → sft → grpo order) and
the model it describes, with the tokenizer's vocab_size as the vocabulary (the trained tokenizer may come
out smaller, so this is an upper bound).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frugal_r1.cost.hardware import Hardware
from frugal_r1.cost.planner import Stage, StageProjection, project
from frugal_r1.errors import UserError
from frugal_r1.model.config import ModelConfig
from frugal_r1.precision import planned_precision
from frugal_r1.recipe import STAGES, StageConfig, load_stage

UNMEASURED_PROMPT_TOKENS = 64


def planner_stage(name: str, cfg: StageConfig, hardware: Hardware, rollouts: dict[str, Any] | None = None) -> Stage:
    """One stage of a run on `hardware` (whose peaks settle `train.bf16 = "auto"`)."""
    precision = planned_precision(cfg.train.bf16, hardware.peak_flops)
    if name != "grpo":
        return Stage(kind=name, steps=cfg.train.steps, batch_size=cfg.data.batch_size * cfg.train.grad_accum,
                     seq_len=cfg.data.seq_len, precision=precision)
    rl = cfg.rl
    steps, every = cfg.train.steps, cfg.train.eval_every
    evaluations = ((steps - 1) // every if every else 0) + 1  # the loop's periodic ones (before the last step)
    shape = {"prompt_tokens": UNMEASURED_PROMPT_TOKENS, **(rollouts or {})}
    return Stage(kind="grpo", steps=-(-steps // max(1, rl.updates)), prompts_per_step=rl.prompts_per_step,
                 group_size=rl.group_size, max_new_tokens=rl.max_new_tokens, updates=rl.updates,
                 reference=rl.beta > 0, precision=precision, replay_sequences=rl.sft_rows if rl.sft_weight > 0 else 0,
                 eval_sequences=evaluations * rl.eval_n * rl.eval_samples * len(cfg.data.tasks), **shape)


def project_run(configs: dict[str, StageConfig], model_cfg: ModelConfig, hardware: Hardware,
                rollouts: dict[str, Any] | None = None) -> dict[str, StageProjection]:
    """Each stage of a run (`configs` by stage name) projected on `hardware`, in pretrain → sft → grpo order;
    `rollouts`: what the GRPO stage measured, if it ran."""
    names = [name for name in STAGES if name in configs]
    stages = [planner_stage(name, configs[name], hardware, rollouts if name == "grpo" else None) for name in names]
    return dict(zip(names, project(stages, model_cfg, hardware).stages))


def recipe_stages(path: Path, recipe: dict[str, Any], hardware: Hardware) -> tuple[ModelConfig, list[Stage]]:
    """The model and the stages of the run recipe at `path` (`recipe`: its parsed tables) on `hardware`."""
    names = [name for name in STAGES if name in recipe]
    if not names:
        raise UserError(f"{path}: no [[stage]] tables (a planner recipe) and no [pretrain.*] / [sft.*] / [grpo.*] "
                        "tables (a run recipe)")
    configs = {name: load_stage(name, path) for name in names}
    first = configs[names[0]]
    return first.model_config(vocab_size=first.data.vocab_size), [planner_stage(n, c, hardware) for n, c in configs.items()]


__all__ = ["UNMEASURED_PROMPT_TOKENS", "planner_stage", "project_run", "recipe_stages"]
