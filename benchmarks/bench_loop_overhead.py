"""The training loop's own cost: end-to-end `frugal-r1 pretrain` tokens/s against the bare model step.

Anchor: F1's model-only step — forward + backward + AdamW + gate-bias update on a fixed batch, bf16
autocast, the `small` preset, nothing else. Measured: the real pretrain stage on the speedrun's data (five
reasoning-gym tasks, traces, tokenisation, packing with document masks, prefetching, metrics, TensorBoard,
checkpoints every `--save-every` steps, the progress bar), same batch shape. Both run in one process,
alternately, and the loop's overhead is 1 − loop tokens/s ÷ model-only tokens/s (target ≤ 10%).

    .venv/bin/python benchmarks/bench_loop_overhead.py [--steps 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from frugal_r1.model.flops import training_flops_per_token
from frugal_r1.recipe import load_stage
from frugal_r1.train.run import run_lm_stage

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "speedrun.toml"


def model_only(cfg, steps: int) -> float:
    from frugal_r1.model.transformer import DeepSeekV3
    from frugal_r1.train.loop import make_optimizer

    torch.manual_seed(0)
    model_cfg = cfg.model_config(vocab_size=1024)
    model = DeepSeekV3(model_cfg).train()
    optimizer = make_optimizer(model, cfg.train)
    batch, seq = cfg.data.batch_size, cfg.data.seq_len
    ids = torch.randint(9, 1024, (batch, seq + 1))
    doc_ids = (torch.arange(seq) // 300).expand(batch, seq)
    positions = (torch.arange(seq) % 300).expand(batch, seq)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids[:, :-1], ids[:, 1:], position_ids=positions, doc_ids=doc_ids,
                        loss_denominator=float(batch * seq))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_gate_biases()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * seq * steps / (time.perf_counter() - start)


def full_loop(cfg, steps: int, out: Path, save_every: int) -> float:
    cfg.train.steps = steps + 2
    cfg.train.save_every = save_every
    cfg.train.eval_every = 0
    cfg.train.eval_batches = 1
    cfg.train.log_every = 1
    run_lm_stage("pretrain", cfg, out)
    records = [r for r in (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
               if "tokens_per_second" in r][2:]  # drop the warm-up steps
    # wall time between the end of warm-up step 2 and the last step: data, logging and checkpoints included
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    seconds = records[-1]["elapsed_seconds"] - first["elapsed_seconds"]
    return sum(r["tokens"] for r in records) / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=10)
    args = parser.parse_args()
    results = {"model-only": [], "pretrain loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            cfg = load_stage("pretrain", RECIPE, ["ledger.hardware='cpu'"])
            results["model-only"].append(model_only(cfg, args.steps))
            results["pretrain loop"].append(full_loop(cfg, args.steps, Path(tmp) / f"run{round_}", args.save_every))
            print(f"  round {round_}: model-only {results['model-only'][-1]:,.0f} tok/s, "
                  f"loop {results['pretrain loop'][-1]:,.0f} tok/s")
    base, loop = statistics.median(results["model-only"]), statistics.median(results["pretrain loop"])
    cfg = load_stage("pretrain", RECIPE)
    flops = training_flops_per_token(cfg.model_config(vocab_size=1024), cfg.data.seq_len).total
    from frugal_r1.cost.hardware import measure_cpu_peak

    peak = measure_cpu_peak(2.0).flops["bf16"]
    print(f"\nsmall preset, batch {cfg.data.batch_size} × {cfg.data.seq_len}, bf16 autocast, {torch.get_num_threads()} threads")
    print(f"  model-only step   {base:8,.0f} tokens/s   MFU {base * flops / peak:.1%}")
    print(f"  pretrain loop     {loop:8,.0f} tokens/s   MFU {loop * flops / peak:.1%}")
    print(f"  loop overhead     {1 - loop / base:.1%} (target ≤ 10%)")


if __name__ == "__main__":
    main()
