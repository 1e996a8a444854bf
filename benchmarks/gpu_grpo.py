"""GRPO on a GPU: a few steps of a small random Qwen2 and of the `small` preset, in bf16 — step time and memory.

The GPU check of the GRPO issue. Each policy is built with random weights and saved locally, then trained
by `frugal-r1 grpo`'s own code (`run_grpo`, `train.device = "cuda"`, `train.bf16 = true`) for a warm-up step
and a few timed ones, at each batch shape asked for. Random weights rarely emit their end token, so nearly
every completion runs to the length limit: the figures are the worst case for that shape. Dynamic sampling
is off (all rewards are 0, so it would drop every group and train nothing): every completion is trained.
Prompts are "What is a + b?" problems written to a JSONL task (numeric verifier), so nothing beyond
frugal-r1's own dependencies is needed. Per shape and policy it prints the median step time and its split
(generation / training), completion length, tokens per second, and the peak GPU memory (allocated and
reserved by torch's caching allocator), and writes them to OUT/gpu_grpo.json.

    python benchmarks/gpu_grpo.py [--device cuda] [--shapes 8x8x128,32x16x256] [--steps 3] [--out DIR]

`--device cpu` runs the same on the CPU (for trying the script where there is no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_problems(path: Path, count: int = 512, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        rows.append({"prompt": f"What is {a} + {b}? Think, then give the answer.", "answer": str(a + b)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"{r['prompt']} <think>{r['prompt']}</think><answer>{r['answer']}</answer>" for r in rows]


def make_frugal_small(path: Path, texts: list[str]) -> None:
    from frugal_r1.model.config import preset
    from frugal_r1.model.transformer import DeepSeekV3
    from frugal_r1.tokenizer import save_tokenizer, train_tokenizer

    tokenizer = train_tokenizer(texts, 1024)
    torch.manual_seed(0)
    model = DeepSeekV3(preset("small", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)


def run_policy(model_dir: Path, out: Path, task_file: Path, shape: tuple[int, int, int], args) -> dict:
    from frugal_r1.metrics import read_metrics
    from frugal_r1.recipe import load_stage
    from frugal_r1.train.grpo_run import run_grpo

    prompts, group, length = shape
    task = f"jsonl:{task_file}"
    cfg = load_stage("grpo", None, [
        f"data.tasks=['{task}']", f'data.task_config={{"{task}" = {{ verifier = "numeric" }}}}',
        f"train.steps={args.warmup + args.steps}", "train.lr=1e-5", "train.warmup_steps=0",
        "train.schedule='constant'", "train.eval_every=0", "train.save_every=0", "train.bf16=true",
        f"train.device='{args.device}'", f"rl.group_size={group}", f"rl.prompts_per_step={prompts}",
        f"rl.max_new_tokens={length}", "rl.temperature=1.0", "rl.beta=0.0", "rl.aggregation='token'",
        "rl.dynamic_sampling=false", "rl.length_floor=0", "rl.eval_n=1", "rl.eval_samples=1", "rl.samples_every=0",
        "rl.rewards={ accuracy = 1.0 }"])
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run_grpo(cfg, out, init=str(model_dir))
    wall = time.perf_counter() - started
    records = [r for r in read_metrics(out) if "reward_mean" in r][args.warmup:]
    step = statistics.median(r["step_seconds"] for r in records)
    completion = statistics.mean(r["completion_length_mean"] for r in records)
    return {
        "step_seconds": step,
        "generation_seconds": statistics.median(r["seconds_generation"] for r in records),
        "training_seconds": statistics.median(r["seconds_training"] for r in records),
        "completion_length_mean": completion,
        "generated_tokens_per_second": prompts * group * completion / step,
        "mfu": statistics.median(r["mfu"] for r in records),
        "precision": result.ledger.get("precision"),
        "hardware": result.ledger.get("hardware"),
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "wall_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="8x8x128,32x16x256", help="prompts x group x max new tokens, comma-separated")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=None, help="where gpu_grpo.json goes (default: the temporary directory)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from bench_grpo import make_model as make_qwen2

    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = write_problems(tmp / "problems.jsonl")
        make_qwen2(tmp / "qwen2", texts)
        make_frugal_small(tmp / "small", texts)
        for shape in shapes:
            for name in ("qwen2", "small"):
                label = f"{name} {'x'.join(map(str, shape))}"
                try:
                    figures = run_policy(tmp / name, tmp / f"run-{label.replace(' ', '-')}", tmp / "problems.jsonl",
                                         shape, args)
                except Exception as error:  # one failing policy must not hide the other's figures
                    import traceback

                    traceback.print_exc()
                    figures = {"error": f"{type(error).__name__}: {error}"}
                results.append({"policy": name, "shape": shape, **figures})
                print(f"[gpu_grpo] {label}: {json.dumps(figures)}", flush=True)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_grpo.json").write_text(json.dumps(results, indent=2))
    print(f"\nGRPO on {args.device}, bf16 autocast, warm-up {args.warmup} + {args.steps} timed steps (medians):")
    print(f"  {'policy':8s} {'prompts x G x tokens':>21s} {'s/step':>7s} {'gen':>6s} {'train':>6s} {'len':>6s} "
          f"{'tok/s':>8s} {'peak GiB':>9s}")
    for r in results:
        shape = "x".join(map(str, r["shape"]))
        if "error" in r:
            print(f"  {r['policy']:8s} {shape:>21s}  failed: {r['error']}")
            continue
        peak = f"{r['peak_allocated_gib']:.2f}" if r["peak_allocated_gib"] is not None else "-"
        print(f"  {r['policy']:8s} {shape:>21s} {r['step_seconds']:7.2f} {r['generation_seconds']:6.2f} "
              f"{r['training_seconds']:6.2f} {r['completion_length_mean']:6.1f} "
              f"{r['generated_tokens_per_second']:8.0f} {peak:>9s}")


if __name__ == "__main__":
    main()
