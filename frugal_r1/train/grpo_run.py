"""Running the GRPO stage end to end: `frugal-r1 grpo --init MODEL_DIR --task … --out DIR`.

The same run directory as pretrain/SFT (run_config.json, checkpoints/, metrics.jsonl, tensorboard/,
ledger.json, final/) plus samples.md, where a few full completions are appended every
`rl.samples_every` rollouts so a user can watch the reasoning change. The policy is our DeepSeek-V3 or
any transformers causal LM directory with its tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from frugal_r1 import dist
from frugal_r1.atomic import atomic_write_bytes
from frugal_r1.device import resolve_device
from frugal_r1.errors import UserError
from frugal_r1.ledger import Ledger, stage_hardware
from frugal_r1.recipe import StageConfig
from frugal_r1.train.corpus import open_tasks
from frugal_r1.train.grpo import GRPOStage
from frugal_r1.train.loop import RunStopped, Trainer
from frugal_r1.train.policy import Policy
from frugal_r1.train.run import StageResult, check_resume, no_empty_out_on_refusal, prepare_out_dir


@no_empty_out_on_refusal
def run_grpo(cfg: StageConfig, out: str | Path, init: str, resume: bool = False, user_rewards=None) -> StageResult:
    info = dist.setup(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, info.local_rank)
    if not init or not Path(init).is_dir():
        raise UserError(f"--init {init} is not a model directory" if init else "grpo needs --init MODEL_DIR")
    out_dir = prepare_out_dir(out, resume) if info.is_main else Path(out)
    dist.barrier(info)
    if resume:
        check_resume(out_dir, cfg, init)
    seed = cfg.train.seed
    torch.manual_seed(seed)
    policy = Policy.load(init)
    policy.module.to(device)
    reference = None
    if cfg.rl.beta > 0:
        reference = Policy.load(init).module.eval().requires_grad_(False).to(device)
    tasks = open_tasks(cfg.data, seed)
    eval_tasks = open_tasks(cfg.data, seed + cfg.data.eval_seed_offset)
    stage = GRPOStage(policy, cfg.rl, cfg.train.grad_accum, tasks, eval_tasks, seed, out_dir, info, reference,
                      user_rewards, bf16=cfg.train.bf16, task_weights=cfg.data.task_weights)
    hardware = stage_hardware(cfg.ledger, device.type)
    ledger = Ledger(hardware, precision="bf16" if stage.bf16 else "fp32", devices=info.world_size)
    if info.is_main and not resume:
        record = {"stage": "grpo", "init": init, "config": cfg.to_dict(), "policy": policy.kind,
                  "world_size": info.world_size, "threads": torch.get_num_threads()}
        atomic_write_bytes(out_dir / "run_config.json", json.dumps(record, indent=2).encode())
    trainer = Trainer(policy.module, stage, cfg.train, out_dir, ledger, info)
    final_dir = out_dir / "final"
    try:
        try:
            final_eval = trainer.run(resume=resume)
        except RunStopped:
            if info.is_main:  # the weights are the last good ones (rolled back) — keep them usable
                policy.save_pretrained(final_dir)
            raise
        if info.is_main:
            policy.save_pretrained(final_dir)
            ledger.write(out_dir / "ledger.json", "grpo", {"steps": trainer.step, "final_eval": final_eval})
            print(ledger.line("grpo"))
        dist.barrier(info)
    finally:
        dist.teardown()
    return StageResult(out_dir, final_dir, final_eval, ledger.summary())
