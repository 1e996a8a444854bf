"""Evidence that GRPO learns: a tiny model that solves 20–60% of a task, then GRPO, then held-out accuracy.

    .venv/bin/python examples/grpo_learns.py [--out runs/grpo_learns] [--grpo-steps 200] [--grpo-lr 1e-4]

1. pretrain the `tiny` DeepSeek-V3 on chain_sum traces (two or three 1–2 digit terms), ~3 minutes;
2. SFT it in the chat format just long enough (20 steps) to land between 20% and 60% held-out pass@1;
3. GRPO with the accuracy + format rewards (200 steps, lr 1e-4: ~3 CPU minutes; 5e-4 destroys the policy);
4. evaluate before and after on the same 100 held-out problems (T = 0.6, top-p 0.95, 4 samples).
It prints the two pass@1 figures, their 95% intervals and the gain. Measured 2026-11-28 on 2 cores:
37.8% (30.0–46.2) after SFT → 51.5% (42.7–60.3) after 2.6 minutes of GRPO, +13.8 points.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from frugal_r1.eval import evaluate
from frugal_r1.generate import load_backend
from frugal_r1.recipe import load_stage
from frugal_r1.tasks import load_task
from frugal_r1.train.grpo_run import run_grpo
from frugal_r1.train.run import run_lm_stage

TASK = ["data.tasks=['chain_sum']", "data.task_config.chain_sum={ min_terms = 2, max_terms = 3, max_digits = 2 }"]


def held_out(model_dir: Path, n: int) -> tuple[float, tuple[float, float]]:
    task = load_task("chain_sum", size=n, seed=777_777, min_terms=2, max_terms=3, max_digits=2)
    report = evaluate(load_backend(model_dir), [task], n=n, samples=4, temperature=0.6, top_p=0.95,
                      max_new_tokens=160, seed=1, batch_size=50, progress=False)
    return report.tasks[0].pass_at_1, report.tasks[0].ci95


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/grpo_learns")
    parser.add_argument("--pretrain-steps", type=int, default=800)
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--grpo-steps", type=int, default=200)
    parser.add_argument("--eval-n", type=int, default=100)
    parser.add_argument("--grpo-lr", type=float, default=1e-4)
    parser.add_argument("--pretrained", help="reuse this pretrained model directory instead of pretraining")
    args = parser.parse_args()
    out = Path(args.out)

    common = [*TASK, "model.preset='tiny'", "data.vocab_size=512", "data.tokenizer_documents=1000",
              "data.seq_len=256", "data.batch_size=16", "train.log_every=10", "train.eval_batches=2"]
    pretrained = Path(args.pretrained) if args.pretrained else out / "pretrain" / "final"
    if not args.pretrained:
        pretrain = load_stage("pretrain", None, [*common, f"train.steps={args.pretrain_steps}", "train.lr=3e-3"])
        run_lm_stage("pretrain", pretrain, out / "pretrain")
    sft = load_stage("sft", None, [*common, f"train.steps={args.sft_steps}", "train.lr=1e-3", "data.drop_long=true"])
    run_lm_stage("sft", sft, out / "sft", init=str(pretrained))
    before, before_ci = held_out(out / "sft" / "final", args.eval_n)
    print(f"after SFT: pass@1 {before:.1%} (95% CI {before_ci[0]:.1%}–{before_ci[1]:.1%})")

    grpo = load_stage("grpo", None, [
        *TASK, f"train.steps={args.grpo_steps}", f"train.lr={args.grpo_lr}", "train.weight_decay=0.0",
        "train.warmup_steps=2", "train.schedule='constant'",
        "train.save_every=10", "train.log_every=1", "rl.group_size=8", "rl.prompts_per_step=16", "rl.max_new_tokens=160",
        "rl.temperature=1.0", "rl.dynamic_sampling=true", "rl.eval_n=30", "rl.eval_samples=2", "train.eval_every=10"])
    started = time.perf_counter()
    run_grpo(grpo, out / "grpo", init=str(out / "sft" / "final"))
    minutes = (time.perf_counter() - started) / 60
    after, after_ci = held_out(out / "grpo" / "final", args.eval_n)
    print(f"after SFT:  pass@1 {before:.1%} (95% CI {before_ci[0]:.1%}–{before_ci[1]:.1%})")
    print(f"after GRPO: pass@1 {after:.1%} (95% CI {after_ci[0]:.1%}–{after_ci[1]:.1%}) "
          f"after {minutes:.1f} minutes of GRPO — gain {100 * (after - before):+.1f} points")


if __name__ == "__main__":
    main()
