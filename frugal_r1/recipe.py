"""Run configuration: dataclasses loaded from a TOML recipe and overridden from the command line.

A stage (pretrain, sft, grpo) is configured by five sections:

    [model]   preset = "small" plus any ModelConfig field (num_hidden_layers = 4, …)
    [data]    tasks, per-task reasoning-gym config, sequence length, batch size, tokenizer
    [train]   optimizer, schedule, precision, steps, checkpoints, evaluation
    [ledger]  hardware profile and price used for the cost ledger
    [rl]      GRPO only: group size, clipping, KL, aggregation, rewards, health checks

A recipe file either holds those sections at its top level (one stage) or one table per stage —
`[pretrain.train]`, `[sft.data]`, … — optionally with shared `[model]`/`[data]`/`[ledger]` defaults at the
top. `--set section.key=value` overrides any field; the value is read as TOML (`3e-4`, `true`,
`["a", "b"]`) and falls back to a plain string. Unknown sections and keys are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from frugal_r1.errors import UserError
from frugal_r1.model.config import PRESETS, ModelConfig, preset


@dataclass
class DataConfig:
    tasks: list[str] = field(default_factory=lambda: ["chain_sum"])
    task_config: dict[str, dict[str, Any]] = field(default_factory=dict)  # reasoning-gym kwargs per task
    task_weights: dict[str, float] = field(default_factory=dict)  # sampling weight per task (default 1)
    task_sizes: dict[str, int] = field(default_factory=dict)  # rows per task (default: an endless stream);
    # a finite pool is reused with fresh traces, for generators too slow to draw a new problem every time
    prefetch: int = 4  # batches made ahead on a background thread (0: none)
    seq_len: int = 256
    batch_size: int = 16
    drop_long: bool = False  # SFT: skip (and count) examples longer than seq_len instead of failing
    split_documents: bool = True  # pretraining: cut documents across rows (no padding); false pads the
    # row instead, so no document is ever seen without its beginning (the question a trace works from)
    tokenizer: str | None = None  # a tokenizer directory; None: train one (pretrain) or use --init's
    vocab_size: int = 2048  # for a tokenizer trained by pretrain
    tokenizer_documents: int = 4000  # documents the tokenizer is trained on
    eval_seed_offset: int = 1_000_003  # held-out rows come from reasoning-gym seed (seed + offset)


@dataclass
class TrainConfig:
    steps: int = 100
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the schedule ends at lr × min_lr_ratio
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    decay_fraction: float = 0.2  # wsd: the final fraction of steps that decays
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # 0 disables
    grad_accum: int = 1
    bf16: bool | str = "auto"  # bf16 autocast with fp32 master weights: true, false, or auto (where the device
    # multiplies bf16 natively; see frugal_r1/precision.py)
    seed: int = 0
    save_every: int = 0  # steps between checkpoints (0: only the final one)
    keep_last: int = 2
    eval_every: int = 0  # steps between held-out evaluations (0: only at the end)
    eval_batches: int = 4
    log_every: int = 1
    max_bad_steps: int = 5  # consecutive NaN/inf losses before the run stops
    nan_action: str = "auto"  # skip (up to max_bad_steps) | rollback (to the last checkpoint, stop) | auto:
    # skip for pretrain/SFT, rollback for GRPO
    threads: int = 0  # torch threads (0: torch's default)
    device: str = "auto"  # auto (the GPU when torch sees one, else the CPU), cpu, cuda or cuda:N; see device.py


@dataclass
class LedgerConfig:
    hardware: str = "auto"  # a profile name from the hardware table, or auto (this machine)
    price_per_hour: float | None = None  # overrides the profile's price
    power_watts: float | None = None  # overrides the profile's power


@dataclass
class RLConfig:
    """GRPO (the `grpo` stage's [rl] section); see frugal_r1/train/grpo_loss.py for the math."""

    group_size: int = 8  # G completions per prompt
    prompts_per_step: int = 8  # prompts per rollout batch (per rank)
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28  # > epsilon_low: DAPO's clip-higher
    beta: float = 0.0  # k3 KL weight; 0 loads no reference model
    aggregation: str = "token"  # sequence (GRPO) | token (DAPO) | constant (Dr. GRPO)
    advantage_scale: str = "group"  # group (GRPO) | batch | none (Dr. GRPO)
    negative_weight: float = 1.0  # λ on negative advantages (W-REINFORCE; 1: GRPO, 0: successes only)
    updates: int = 1  # μ optimizer steps per rollout batch
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal (DAPO)
    max_sampling_rounds: int = 3  # dynamic sampling: rollout rounds tried to fill a batch
    overlong: str = "none"  # none | mask (truncated completions get no loss) | penalty (soft length reward)
    overlong_buffer: int = 64  # penalty: tokens before max_new_tokens where the penalty ramps to -1
    rewards: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.1})
    language_script: str = "LATIN"  # target script of the language-consistency reward
    prompt_format: str = "chat"  # chat | r1_zero
    eval_n: int = 50  # held-out problems per task at each evaluation
    eval_samples: int = 4
    samples_every: int = 10  # rollouts between samples.md entries (0: never)
    samples_count: int = 2
    entropy_floor: float = 0.0  # stop when mean token entropy falls below (0: off)
    length_floor: float = 0.0  # stop when mean completion length (tokens) falls below (0: off)
    on_collapse: str = "stop"  # stop | rollback (to the last checkpoint, then stop)
    # aux-loss-free balancing during RL: γ for the MoE gate biases (0: they stay as the init checkpoint left them).
    # A rollout batch is a handful of prompts, not the pretraining mix: in the speedrun (2026-11-29) γ = 0.01 moved
    # the biases by up to 0.1 in 12 steps and chain_sum fell from 37.2% to 28.7%; the same GRPO weights with the
    # SFT biases put back scored 39.0%.
    gate_bias_speed: float = 0.0
    # Replay of the SFT traces during RL (InstructGPT's PPO-ptx): the loss adds sft_weight × the token-mean NLL
    # of sft_rows trace completions per rollout batch (each of its rl.updates steps trains on them), drawn by
    # sft_task_weights (empty: data.task_weights).
    sft_weight: float = 0.0
    sft_rows: int = 0
    sft_task_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class StageConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def model_config(self, **fixed: Any) -> ModelConfig:
        """The ModelConfig this stage describes; `fixed` (e.g. vocab_size) wins over the recipe."""
        values = dict(self.model)
        name = values.pop("preset", "tiny")
        if name not in PRESETS:
            raise UserError(f"model.preset: unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown model key(s): {_suggest(unknown, known)}")
        try:
            return preset(name, **{**values, **fixed})
        except ValueError as error:
            raise UserError(f"model.{error}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": None, "data": DataConfig, "train": TrainConfig, "ledger": LedgerConfig, "rl": RLConfig}
STAGES = ("pretrain", "sft", "grpo")


def load_stage(stage: str, path: str | Path | None = None, overrides: list[str] = (),
               section_types: dict[str, type] | None = None) -> StageConfig:
    """The config of `stage` from an optional recipe file, then `--set` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_recipe(path, stage)
    for item in overrides:
        key, value = parse_override(item)
        section, _, name = key.partition(".")
        if not name:
            raise UserError(f"--set {item}: use section.key=value (e.g. train.lr=3e-4)")
        raw.setdefault(section, {})
        _set_dotted(raw[section], name, value)
    return build_stage(raw, section_types)


def parse_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file's TOML tables; a one-line UserError when it is missing or not TOML."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"recipe {path} is a directory, not a TOML file")
    if not path.is_file():
        raise UserError(f"recipe {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: invalid TOML: {error}") from None


def read_recipe(path: str | Path, stage: str) -> dict[str, Any]:
    path = Path(path)
    recipe = parse_recipe(path)
    shared = {k: v for k, v in recipe.items() if k not in STAGES}
    merged = {section: dict(values) for section, values in shared.items() if isinstance(values, dict)}
    for key, values in shared.items():
        if key not in SECTIONS and key not in ("speedrun",):
            raise UserError(f"{path}: unknown section [{key}]; expected {_names(list(SECTIONS) + list(STAGES))}")
        if not isinstance(values, dict):
            raise UserError(f"{path}: [{key}] must be a table of settings, got {key} = {values!r}")
    for section, values in recipe.get(stage, {}).items():
        if not isinstance(values, dict):
            raise UserError(f"{path}: [{stage}] must contain tables like [{stage}.train], got key {section!r}")
        merged[section] = {**merged.get(section, {}), **values}
    merged.pop("speedrun", None)
    return merged


def build_stage(raw: dict[str, Any], section_types: dict[str, type] | None = None) -> StageConfig:
    types = {**SECTIONS, **(section_types or {})}
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise UserError(f"unknown config section(s): {_suggest(unknown, types)}")
    cfg = StageConfig()
    for section, values in raw.items():
        if section == "model":
            if not isinstance(values, dict):
                raise UserError(f"[model] must be a table of settings, got {values!r}")
            cfg.model = {**cfg.model, **values}
            cfg.model_config()  # validate now: a bad model key fails before any work
            continue
        current = getattr(cfg, section, None) or types[section]()
        setattr(cfg, section, update_section(current, values, section))
    check_train(cfg.train)
    check_rl(cfg.rl)
    check_ledger(cfg.ledger)
    return cfg


SCHEDULES = ("cosine", "wsd", "constant")
ADVANTAGE_SCALES = ("group", "batch", "none")  # [rl] advantage_scale; grpo_loss.py computes each
AGGREGATIONS = ("sequence", "token", "constant")  # [rl] aggregation
NAN_ACTIONS = ("auto", "skip", "rollback")


def check_train(train: TrainConfig) -> None:
    """Out-of-range [train] values fail when the config is read, not steps into a run."""
    betas = train.betas
    checks = [
        ("steps", train.steps >= 1, ">= 1"),
        ("lr", math.isfinite(train.lr) and train.lr >= 0, "a finite number >= 0"),
        ("min_lr_ratio", 0 <= train.min_lr_ratio <= 1, "in [0, 1]"),
        ("warmup_steps", train.warmup_steps >= 0, ">= 0"),
        ("schedule", train.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        ("decay_fraction", 0 <= train.decay_fraction <= 1, "in [0, 1]"),
        ("weight_decay", train.weight_decay >= 0, ">= 0"),
        ("betas", len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
         "two numbers in [0, 1)"),
        ("grad_clip", math.isfinite(train.grad_clip) and train.grad_clip >= 0, "a finite number >= 0 (0: no clipping)"),
        ("grad_accum", train.grad_accum >= 1, ">= 1"),
        ("save_every", train.save_every >= 0, ">= 0 (0: only the final checkpoint)"),
        ("keep_last", train.keep_last >= 0, ">= 0 (0: keep every checkpoint)"),
        ("eval_every", train.eval_every >= 0, ">= 0 (0: only at the end)"),
        ("eval_batches", train.eval_batches >= 0, ">= 0 (0: no held-out loss)"),
        ("log_every", train.log_every >= 1, ">= 1"),
        ("max_bad_steps", train.max_bad_steps >= 1, ">= 1"),
        ("nan_action", train.nan_action in NAN_ACTIONS, f"one of {', '.join(NAN_ACTIONS)}"),
        ("threads", train.threads >= 0, ">= 0 (0: torch's default)"),
    ]
    for name, ok, requirement in checks:
        if not ok:
            raise UserError(f"train.{name} must be {requirement}, got {getattr(train, name)!r}")


def check_rl(rl: RLConfig) -> None:
    """Out-of-range [rl] values fail when the config is read, before any model loads."""
    checks = [
        (rl.aggregation in AGGREGATIONS, f"rl.aggregation must be one of {', '.join(AGGREGATIONS)}"),
        (rl.advantage_scale in ADVANTAGE_SCALES, f"rl.advantage_scale must be one of {', '.join(ADVANTAGE_SCALES)}"),
        (rl.overlong in ("none", "mask", "penalty"), "rl.overlong must be none, mask or penalty"),
        (0.0 <= rl.negative_weight <= 1.0, "rl.negative_weight must be between 0 and 1"),
        (rl.on_collapse in ("stop", "rollback"), "rl.on_collapse must be stop or rollback"),
        (rl.group_size >= 2, "rl.group_size must be >= 2 (advantages compare completions of one prompt)"),
        (rl.prompts_per_step >= 1 and rl.updates >= 1, "rl.prompts_per_step and rl.updates must be >= 1"),
        (rl.beta >= 0 and 0 <= rl.epsilon_low < 1 and rl.epsilon_high >= 0, "rl.beta and rl.epsilon_* out of range"),
        (rl.max_new_tokens >= 1 and rl.max_sampling_rounds >= 1, "rl.max_new_tokens and rl.max_sampling_rounds must be >= 1"),
        (rl.temperature > 0 and 0 < rl.top_p <= 1, "rl.temperature must be > 0 and rl.top_p in (0, 1]"),
        (rl.prompt_format in ("chat", "r1_zero"), "rl.prompt_format must be chat or r1_zero"),
        (rl.eval_n >= 1 and rl.eval_samples >= 1, "rl.eval_n and rl.eval_samples must be >= 1"),
        (min(rl.samples_every, rl.samples_count, rl.overlong_buffer) >= 0, "rl.samples_every, rl.samples_count and "
         "rl.overlong_buffer must be >= 0"),
        (min(rl.entropy_floor, rl.length_floor, rl.gate_bias_speed) >= 0, "rl.entropy_floor, rl.length_floor and "
         "rl.gate_bias_speed must be >= 0"),
        (rl.sft_weight >= 0 and rl.sft_rows >= 0, "rl.sft_weight and rl.sft_rows must be >= 0"),
        (rl.sft_weight == 0 or rl.sft_rows >= 1, "rl.sft_weight > 0 needs rl.sft_rows >= 1 (traces per step)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def check_ledger(ledger: LedgerConfig) -> None:
    for name in ("price_per_hour", "power_watts"):
        value = getattr(ledger, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"ledger.{name} must be a finite number >= 0, got {value!r}")


def same_config(recorded: dict[str, Any] | None, cfg: StageConfig) -> bool:
    """Whether a run recorded with `recorded` (a `to_dict()`) may continue under `cfg`: every setting equal, a
    setting the record lacks (added by a later version of frugal-r1) counting as its default."""
    return not config_differences(recorded, cfg)


def config_differences(recorded: dict[str, Any] | None, cfg: StageConfig) -> list[str]:
    """The settings (`section.key`) in which `cfg` differs from a recorded `to_dict()`; see `same_config`."""
    if not isinstance(recorded, dict):
        return ["the whole config (none recorded)"]
    try:
        before = build_stage(recorded).to_dict()
    except UserError as error:  # a setting this version no longer knows
        return [f"a setting this version cannot read ({error})"]
    changed = []
    for section, values in cfg.to_dict().items():
        old = before.get(section) or {}
        changed += [f"{section}.{key}" for key in sorted(set(values) | set(old)) if values.get(key) != old.get(key)]
    return changed


def update_section(obj: Any, values: dict[str, Any], section: str) -> Any:
    """The dataclass `obj` with the recipe table `values` applied, each value checked against its field's type;
    unknown keys are errors."""
    if not isinstance(values, dict):
        raise UserError(f"[{section}] must be a table of settings, got {values!r}")
    hints = get_type_hints(type(obj))
    known = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown key(s) in [{section}]: {_suggest(unknown, known, prefix=section + '.')}")
    changes = {}
    for name, value in values.items():
        changes[name] = _coerce(value, hints[name], f"{section}.{name}")
    return dataclasses.replace(obj, **changes)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    if text in ("float", "float | None"):
        if value is None and "None" in text:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif text in ("int", "int | None"):
        if value is None and "None" in text:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif text == "bool":
        if isinstance(value, bool):
            return value
    elif text == "bool | str":  # a switch with an "auto" setting
        if isinstance(value, bool) or value == "auto":
            return value
        text = 'true, false or "auto"'
    elif text in ("str", "str | None"):
        if value is None and "None" in text:
            return None
        if isinstance(value, str):
            return value
    elif text.startswith("list"):
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [value]
    elif text.startswith("dict"):
        if isinstance(value, dict):
            return value
    else:
        return value
    raise UserError(f"{name}: expected {text}, got {value!r}")


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip(), value


def _set_dotted(target: dict[str, Any], name: str, value: Any) -> None:
    *parents, last = name.split(".")
    for parent in parents:
        target = target.setdefault(parent, {})
    target[last] = value


def _suggest(unknown: list[str], known, prefix: str = "") -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(known), n=1)
        parts.append(f"{prefix}{name}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
    return ", ".join(parts)


def _names(names) -> str:
    return ", ".join(f"[{n}]" for n in names)
