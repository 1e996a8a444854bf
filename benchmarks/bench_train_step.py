"""Training-step throughput: frugal-r1's DeepSeekV3 against transformers' DeepseekV3ForCausalLM.

Identical config and weights (transformers loads our saved directory), the same batches, forward +
backward + AdamW, in fp32 and in bf16 autocast, interleaved (ours, theirs, ours, theirs, …) so machine
noise hits both. MTP is off for the comparison (transformers has no MTP module); our MTP-on figure is
printed too. MFU is against this machine's measured bf16 (or fp32) matmul peak.

    .venv/bin/python benchmarks/bench_train_step.py [--preset small] [--batch 8] [--seq 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from transformers import AutoModelForCausalLM

from frugal_r1.cost.hardware import measure_cpu_peak
from frugal_r1.model import preset
from frugal_r1.model.flops import training_flops_per_token
from frugal_r1.model.transformer import DeepSeekV3
from frugal_r1.precision import native_bf16


def make_step(model, optimizer, ids, labels, bf16: bool, ours: bool):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(ids, labels).loss if ours else model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ours:
            model.update_gate_biases()
    return step


def timed(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = preset(args.preset, num_nextn_predict_layers=0)
    ours = DeepSeekV3(cfg)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.save_pretrained(tmp)
        theirs = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    ours_mtp = DeepSeekV3(preset(args.preset))
    ids = torch.randint(3, cfg.vocab_size, (args.batch, args.seq + 1))
    inputs, labels = ids[:, :-1], ids[:, 1:]
    tokens = args.batch * args.seq
    measured = measure_cpu_peak(seconds=4.0).flops
    peaks = {False: measured["fp32"], True: measured["bf16"]}
    flops_per_token = training_flops_per_token(cfg, args.seq).total

    print(f"preset {args.preset} (MTP off for the comparison), batch {args.batch} × {args.seq} tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"measured matmul peak: fp32 {peaks[False] / 1e9:.0f} GFLOP/s, bf16 {peaks[True] / 1e9:.0f} GFLOP/s")
    for bf16 in (False, True):
        if bf16 and not native_bf16("cpu"):
            print("  bf16 autocast   skipped: this CPU has no AVX512-BF16 or AMX, so bf16 matmuls are emulated "
                  f"({peaks[True] / 1e9:.1f} GFLOP/s) and frugal-r1 trains in fp32 here (train.bf16 = \"auto\")")
            continue
        models = {
            "frugal-r1": (ours, True), "transformers": (theirs, False), "frugal-r1 +MTP": (ours_mtp, True),
        }
        steps = {}
        for name, (model, is_ours) in models.items():
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            steps[name] = make_step(model, optimizer, inputs, labels if is_ours else None, bf16, is_ours)
            steps[name]()  # warm-up
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name].append(timed(step, args.steps))
        median = {name: statistics.median(t) for name, t in times.items()}
        label = "bf16 autocast" if bf16 else "fp32"
        for name, seconds in median.items():
            mfu = flops_per_token * tokens / seconds / peaks[bf16]
            print(f"  {label:13s} {name:15s} {tokens / seconds:9.0f} tokens/s   MFU {mfu:6.1%}")
        ratio = median["transformers"] / median["frugal-r1"]
        print(f"  {label:13s} speed-up over transformers: {ratio:.2f}×")


if __name__ == "__main__":
    main()
