"""Training-step throughput: frugal-r1's DeepSeekV3 against transformers' DeepseekV3ForCausalLM.

Identical config and weights (transformers loads our saved directory), the same batch, forward +
backward + AdamW (the fused kernel, as transformers' Trainer and frugal-r1's loop use), in fp32 and in
bf16 autocast. Each measurement runs in a fresh process, and the processes alternate (ours, theirs, ours,
theirs, …) so machine noise hits both. Fresh processes because the two models in one process disturb each
other through the allocator: what one frees, glibc keeps or returns to the system, and the other's next
allocations then page-fault or not. In one process transformers' bf16 step measured 665-740 ms after ours,
against 520 ms alone (2026-12-05), which had inflated the ratio this benchmark reported (1.68-1.79x, against
~1.3x measured this way).

MTP is off for the comparison (transformers has no MTP module); our MTP-on figure is printed too. MFU is
against this machine's measured bf16 (or fp32) matmul peak.

    .venv/bin/python benchmarks/bench_train_step.py [--preset small] [--batch 8] [--seq 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from fresh_process import run_worker

MODELS = ("frugal-r1", "transformers", "frugal-r1 +MTP")
WARMUP_STEPS = 3


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


def worker(name: str, work: Path, bf16: bool, steps: int) -> None:
    """One measurement: load `name`'s model from `work`, warm-up steps, then the mean of `steps` steps."""
    from transformers import AutoModelForCausalLM

    from frugal_r1.model.transformer import DeepSeekV3

    ids = torch.load(work / "batch.pt")
    inputs, labels = ids[:, :-1], ids[:, 1:]
    if name == "transformers":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    else:
        model = DeepSeekV3.from_pretrained(work / ("model_mtp" if name.endswith("MTP") else "model"))
    model.train()
    ours = name != "transformers"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step = make_step(model, optimizer, inputs, labels if ours else None, bf16, ours)
    for _ in range(WARMUP_STEPS):  # the first steps of a process fault in its heap and build kernels
        step()
    print(json.dumps({"seconds": timed(step, steps)}))


def measure(name: str, work: Path, bf16: bool, steps: int) -> float:
    arguments = ["--worker", name, "--work", str(work), "--steps", str(steps)] + (["--bf16"] if bf16 else [])
    return run_worker(__file__, arguments)["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.work, args.bf16, args.steps)
        return

    from frugal_r1.cost.hardware import measure_cpu_peak
    from frugal_r1.model import preset
    from frugal_r1.model.flops import training_flops_per_token
    from frugal_r1.model.transformer import DeepSeekV3
    from frugal_r1.precision import native_bf16

    torch.manual_seed(0)
    cfg = preset(args.preset, num_nextn_predict_layers=0)
    tokens = args.batch * args.seq
    measured = measure_cpu_peak(seconds=4.0).flops
    peaks = {False: measured["fp32"], True: measured["bf16"]}
    flops_per_token = training_flops_per_token(cfg, args.seq).total
    print(f"preset {args.preset} (MTP off for the comparison), batch {args.batch} × {args.seq} tokens, "
          f"{torch.get_num_threads()} threads, each measurement in a fresh process")
    print(f"measured matmul peak: fp32 {peaks[False] / 1e9:.0f} GFLOP/s, bf16 {peaks[True] / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        work = Path(tmp)
        DeepSeekV3(cfg).save_pretrained(work / "model")
        DeepSeekV3(preset(args.preset)).save_pretrained(work / "model_mtp")
        torch.save(torch.randint(3, cfg.vocab_size, (args.batch, args.seq + 1)), work / "batch.pt")
        for bf16 in (False, True):
            if bf16 and not native_bf16("cpu"):
                print("  bf16 autocast   skipped: this CPU has no AVX512-BF16 or AMX, so bf16 matmuls are emulated "
                      f"({peaks[True] / 1e9:.1f} GFLOP/s) and frugal-r1 trains in fp32 here (train.bf16 = \"auto\")")
                continue
            times = {name: [] for name in MODELS}
            for _ in range(args.rounds):
                for name in MODELS:
                    times[name].append(measure(name, work, bf16, args.steps))
            median = {name: statistics.median(t) for name, t in times.items()}
            label = "bf16 autocast" if bf16 else "fp32"
            for name, seconds in median.items():
                mfu = flops_per_token * tokens / seconds / peaks[bf16]
                print(f"  {label:13s} {name:15s} {tokens / seconds:9.0f} tokens/s   MFU {mfu:6.1%}")
            ratio = median["transformers"] / median["frugal-r1"]
            print(f"  {label:13s} speed-up over transformers: {ratio:.2f}×")


if __name__ == "__main__":
    main()
