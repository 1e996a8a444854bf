"""The one training loop every stage runs on.

A stage (pretrain, SFT, GRPO) supplies only what differs: the batches and the loss (`Stage` below). The
loop owns the rest:

- AdamW (the fused kernel on the CPU and CUDA; no weight decay on norms, biases and embeddings), warmup +
  cosine / WSD / constant schedule, gradient accumulation, gradient clipping, bf16 autocast with fp32
  master weights;
- batches made on the CPU are moved to the model's device (the CPU, or a GPU: device.py) for the loss;
- the loss of a step is normalised by the target-token count of the whole step — over micro-batches
  and ranks — so accumulation and data parallelism give the same gradient as one big batch;
- DeepSeekMoE's aux-loss-free gate-bias update after every optimizer step (loads summed over ranks);
- a NaN/inf loss skips the step (logged); after `max_bad_steps` in a row the run saves a checkpoint of
  its last good weights and stops with a message;
- periodic held-out evaluation, atomic checkpoints every `save_every` steps (keep the last K), and
  exact resume: weights, optimizer, schedule, RNG states, data position, ledger;
- metrics.jsonl + TensorBoard, a rich progress bar (loss, tokens/s, MFU, ETA, dollars so far), and the
  cost ledger with its closing summary line.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from frugal_r1 import dist
from frugal_r1.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from frugal_r1.device import module_device, to_device
from frugal_r1.errors import UserError
from frugal_r1.ledger import Ledger
from frugal_r1.metrics import MetricsWriter
from frugal_r1.precision import use_bf16
from frugal_r1.recipe import SCHEDULES, TrainConfig


class RunStopped(UserError):
    """The run stopped itself (e.g. repeated NaN losses) after saving a good checkpoint."""


class Stage(Protocol):
    """What a stage supplies. It may also set `uses_every_parameter = False` when its loss leaves some of the
    model's parameters out (DDP must then look for them)."""

    name: str

    def next_batch(self) -> Any: ...
    def count_targets(self, batch: Any) -> int: ...
    def count_tokens(self, batch: Any) -> int: ...
    def loss(self, model: torch.nn.Module, batch: Any, denominator: float) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]: ...
    def flops_per_token(self) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "wsd":
        decay_steps = max(1, int(round(cfg.steps * cfg.decay_fraction)))
        decay_start = cfg.steps - decay_steps
        if step < decay_start:
            return 1.0
        return floor + (1 - floor) * (1 - (step - decay_start) / decay_steps)
    raise UserError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "embed" in name or "norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (what transformers' Trainer picks by default) where torch has one: on the CPU it steps
    # the speedrun's pretraining model 1.6 vs 5.7 ms with foreach, a tiny GRPO policy 1.9 vs 5.9 ms (2026-12-06).
    fused = module_device(model).type in FUSED_ADAMW_DEVICES
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused, foreach=not fused)


class Trainer:
    def __init__(self, model: torch.nn.Module, stage: Stage, cfg: TrainConfig, out_dir: str | Path, ledger: Ledger,
                 info: dist.DistInfo | None = None, on_save=None, extra_state=None):
        self.model, self.stage, self.cfg, self.out_dir, self.ledger = model, stage, cfg, Path(out_dir), ledger
        self.info = info or dist.DistInfo()
        self.device = module_device(model)
        self.device_type = self.device.type
        self.bf16 = use_bf16(cfg.bf16, self.device_type)
        self.wrapped = dist.wrap(model, self.info, find_unused=not getattr(stage, "uses_every_parameter", True))
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.step = 0
        self.bad_steps = 0
        self.on_save = on_save  # called as on_save(step) after each checkpoint (rank 0)
        self.extra_state = extra_state  # (get, set) pair for stage-specific resumable state
        self.last_eval: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------
    def resume(self) -> bool:
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return False
        state = load_checkpoint(path, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stage.load_state_dict(state["stage"])
        self.ledger.load_state_dict(state["ledger"])
        self.step, self.bad_steps = state["step"], state.get("bad_steps", 0)
        self.last_eval = state.get("last_eval", {})
        return True

    def save(self) -> None:
        if self.info.is_main:
            self.ledger.tick()
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "stage": self.stage.state_dict(), "ledger": self.ledger.state_dict(),
                     "bad_steps": self.bad_steps, "last_eval": self.last_eval}
            save_checkpoint(self.out_dir, self.step, self.model, state, keep_last=self.cfg.keep_last)
            if self.on_save:
                self.on_save(self.step)
        dist.barrier(self.info)

    # ------------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, float]:
        cfg = self.cfg
        resumed = self.resume() if resume else False
        metrics = MetricsWriter(self.out_dir, resume_step=self.step if resumed else None) if self.info.is_main else None
        self.ledger.start()
        flops_per_token = self.stage.flops_per_token()
        try:
            with _progress(self.info.is_main, self.stage.name, cfg.steps, self.step, cfg.log_every) as progress:
                while self.step < cfg.steps:
                    record = self._train_step(flops_per_token)
                    if record is None:
                        continue
                    evaluated = bool(cfg.eval_every) and self.step % cfg.eval_every == 0 and self.step < cfg.steps
                    if evaluated:
                        record.update(self._evaluate())
                    if metrics and (evaluated or self.step % cfg.log_every == 0 or self.step == cfg.steps):
                        metrics.write(record)
                    progress.update(record, self.ledger)
                    if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                        self.save()
            final_eval = self._evaluate()
            if metrics:
                metrics.write({"step": self.step, **final_eval})
            self.save()
        finally:
            if metrics:
                metrics.close()
        return final_eval

    def _train_step(self, flops_per_token: float) -> dict[str, Any] | None:
        cfg, model = self.cfg, self.wrapped
        model.train()
        started = time.perf_counter()
        batches = [self.stage.next_batch() for _ in range(cfg.grad_accum)]
        targets = torch.tensor(float(sum(self.stage.count_targets(b) for b in batches)))
        denominator = max(1.0, dist.all_reduce_sum(targets, self.info).item()) / self.info.world_size
        totals: dict[str, float] = {}
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not self.info.enabled
            with _no_sync(model, sync), self._autocast():
                loss, parts = self.stage.loss(model, to_device(batch, self.device), denominator)
            loss.backward()
            loss_sum += loss.detach().float()
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        reduced = dist.all_reduce_sum(torch.tensor([loss_sum.item(), *totals.values()]), self.info) / self.info.world_size
        loss_value, *part_values = reduced.tolist()
        parts = dict(zip(totals, part_values))
        tokens = sum(self.stage.count_tokens(b) for b in batches) * self.info.world_size

        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            for moe in getattr(self.model, "moe_layers", list)():
                moe.expert_load.zero_()
            if cfg.nan_action == "rollback" or (cfg.nan_action == "auto" and self.stage.name == "grpo"):
                self.rollback_and_stop(f"loss is {loss_value} at step {self.step + 1}")
            self.bad_steps += 1
            print(f"[{self.stage.name}] step {self.step + 1}: loss is {loss_value}; step skipped "
                  f"({self.bad_steps}/{cfg.max_bad_steps} in a row)")
            if self.bad_steps >= cfg.max_bad_steps:
                self.save()
                raise RunStopped(f"{self.bad_steps} non-finite losses in a row at step {self.step}; "
                                 f"stopped with the last good weights saved in {self.out_dir / 'checkpoints'}")
            return None
        self.bad_steps = 0

        grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0
                     else _grad_norm(self.model))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        load_stats = _load_stats(self.model)
        if hasattr(self.model, "update_gate_biases"):
            dist.sum_expert_loads(self.model, self.info)
            self.model.update_gate_biases(getattr(self.stage, "gate_bias_speed", None))
        self.step += 1

        seconds = time.perf_counter() - started
        step_flops = tokens * flops_per_token + (self.stage.extra_flops() if hasattr(self.stage, "extra_flops") else 0)
        self.ledger.add(tokens, step_flops)
        record = {"step": self.step, "elapsed_seconds": self.ledger.elapsed(), "loss": loss_value, **parts, "lr": lr,
                  "grad_norm": float(grad_norm),
                  "tokens": tokens, "tokens_per_second": tokens / seconds, "step_seconds": seconds,
                  "mfu": step_flops / seconds / self.ledger.peak, "usd": self.ledger.dollars_so_far(), **load_stats}
        if hasattr(self.stage, "step_metrics"):
            record.update(self.stage.step_metrics(record))
        if hasattr(self.stage, "health"):
            problem = self.stage.health(record)
            if problem:
                if self.stage.on_collapse == "rollback":
                    self.rollback_and_stop(problem)
                self.save()
                raise RunStopped(f"{problem}; stopped at step {self.step} (checkpoint saved)")
        return record

    def _autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)

    def rollback_and_stop(self, problem: str) -> None:
        """Restore the newest checkpoint's weights (or keep the current ones if none) and stop the run."""
        path = latest_checkpoint(self.out_dir)
        if path is not None:
            state = load_checkpoint(path, self.model)
            self.step = state["step"]
            raise RunStopped(f"{problem}; rolled back to checkpoint {path.name} and stopped")
        raise RunStopped(f"{problem}; no checkpoint to roll back to, stopped")

    def _evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            result = self.stage.evaluate(self.model)
        self.model.train()
        self.last_eval = result
        return result


# ----------------------------------------------------------------------------------------------------
def _no_sync(model: torch.nn.Module, sync: bool):
    return contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()


def _grad_norm(model: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


def _load_stats(model: torch.nn.Module) -> dict[str, float]:
    """Max / mean expert load over MoE layers: 1.0 is perfectly balanced."""
    layers = getattr(model, "moe_layers", list)()
    ratios = [float(m.expert_load.max() / m.expert_load.mean()) for m in layers if m.expert_load.sum() > 0]
    return {"expert_load_max_over_mean": max(ratios)} if ratios else {}


class _progress:
    """A rich progress bar on rank 0 (plain lines when stdout is not a terminal)."""

    def __init__(self, enabled: bool, name: str, total: int, start: int, plain_every: int = 10):
        self.enabled, self.name, self.total, self.start = enabled, name, total, start
        self._progress = None
        self._plain = False
        self._plain_every = plain_every
        self._started = time.perf_counter()

    def __enter__(self) -> "_progress":
        import sys

        if self.enabled and not sys.stdout.isatty():
            self._plain = True  # logs and CI: a line every few steps instead of a redrawn bar
        elif self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._progress = Progress(
                TextColumn(f"[bold]{self.name}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
                TextColumn("MFU {task.fields[mfu]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("${task.fields[usd]}"), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.name, total=self.total, completed=self.start,
                                                 loss="-", rate="-", mfu="-", usd="0")
        return self

    def update(self, record: dict[str, Any], ledger: Ledger) -> None:
        step = record["step"]
        if self._plain and (step % self._plain_every == 0 or step == self.total):
            elapsed = time.perf_counter() - self._started
            eta = elapsed / max(1, step - self.start) * (self.total - step)
            print(f"[{self.name}] step {step}/{self.total} loss {record['loss']:.4f} "
                  f"{record['tokens_per_second']:,.0f} tok/s MFU {record['mfu']:.1%} "
                  f"ETA {eta / 60:.1f} min ${ledger.dollars_so_far():.4f}", flush=True)
        if self._progress is None:
            return
        self._progress.update(self._task, completed=record["step"], loss=f"{record['loss']:.3f}",
                              rate=f"{record['tokens_per_second']:,.0f}", mfu=f"{record['mfu']:.1%}",
                              usd=f"{ledger.dollars_so_far():.4f}")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
