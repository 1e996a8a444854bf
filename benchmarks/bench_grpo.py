"""GRPO step time: frugal-r1's grpo stage against TRL's GRPOTrainer, same tiny Qwen2, same batch, on CPU.

Both train the identical randomly initialised Qwen2 (saved once, loaded by each) on the same chain_sum
prompts with the same settings: P prompts × G completions per step, max completion length L, T = 1,
β = 0, μ = 1, token-level (DAPO) loss, the same accuracy reward, fp32 on CPU (`--bf16`: bf16 autocast for both
sides; generation stays fp32 in ours). Each side runs a few warm-up steps and then the timed steps; the two
are run alternately (ours, TRL, ours, TRL), each run in a fresh process, so machine noise hits both and
neither disturbs the other's heap, and the medians are compared. Completion lengths are printed too: a
random model stops at its eos at random, so the two may generate different amounts — tokens per second is
printed alongside.

    .venv/bin/pip install -e ".[bench]"   # TRL, the anchor; not a frugal-r1 dependency
    .venv/bin/python benchmarks/bench_grpo.py [--prompts 4] [--group 8] [--length 64] [--steps 4] [--threads 1] [--bf16]

On a shared, busy CPU two OpenMP threads spin against other processes and both sides' step times collapse
erratically (a tiny matmul measured 300× slower on two threads than on one); `--threads 1` then gives
stable ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from fresh_process import run_worker


def make_model(path: Path, vocab_texts: list[str]) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from frugal_r1.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(vocab_texts, 512)
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def ours(model_dir: Path, out: Path, args) -> tuple[list[float], float]:
    from frugal_r1.metrics import read_metrics
    from frugal_r1.recipe import load_stage
    from frugal_r1.train.grpo_run import run_grpo

    cfg = load_stage("grpo", None, [
        "data.tasks=['chain_sum']", f"train.steps={args.warmup + args.steps}", "train.lr=1e-5",
        f"train.bf16={str(args.bf16).lower()}", "train.warmup_steps=0", "train.schedule='constant'", "train.eval_every=0", "train.save_every=0",
        f"rl.group_size={args.group}", f"rl.prompts_per_step={args.prompts}", f"rl.max_new_tokens={args.length}",
        "rl.epsilon_high=0.2", "rl.beta=0.0", "rl.aggregation='token'", "rl.eval_n=1", "rl.eval_samples=1",
        "rl.samples_every=0", "rl.rewards={ accuracy = 1.0 }", "ledger.hardware='cpu'"])
    run_grpo(cfg, out, init=str(model_dir))
    records = [r for r in read_metrics(out) if "reward_mean" in r][args.warmup:]
    return [r["step_seconds"] for r in records], statistics.mean(r["completion_length_mean"] for r in records)


def trl(model_dir: Path, out: Path, args) -> tuple[list[float], float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from frugal_r1.rewards import verify
    from frugal_r1.tasks import load_task

    task = load_task("chain_sum", size=1000, seed=0)
    rows = [task[i] for i in range(task.__len__())]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"],
                               "verifier": r["metadata"]["verifier"]} for r in rows])

    def accuracy(prompts, completions, answer, verifier, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [verify(t, {"answer": a, "metadata": {"task": "chain_sum", "verifier": v}}).score
                for t, a, v in zip(texts, answer, verifier)]

    times: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.start)

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    config = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=args.bf16, per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.length, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, beta=0.0, epsilon=0.2, loss_type="dapo", temperature=1.0,
        learning_rate=1e-5, max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no", report_to="none",
        shuffle_dataset=False, seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy], args=config, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Timer()])
    trainer.train()
    return times[args.warmup:], statistics.mean(lengths[args.warmup:]) if lengths else float("nan")


SIDES = {"frugal-r1": ours, "TRL GRPOTrainer": trl}


def measure(name: str, model_dir: Path, out: Path, argv: list[str]) -> tuple[list[float], float]:
    """One side's run in a fresh process (as bench_train_step.py: in one process the two disturb each other
    through the allocator)."""
    record = run_worker(__file__, [*argv, "--worker", name, "--model", str(model_dir), "--out", str(out)])
    return record["times"], record["length"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (fp32 master weights)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args, argv = parser.parse_args(), sys.argv[1:]
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        times, length = SIDES[args.worker](args.model, args.out, args)
        print(json.dumps({"times": times, "length": length}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model", [f"What is {a} + {b}? <answer>{a + b}</answer>" for a in range(60) for b in range(30)])
        results = {name: ([], []) for name in SIDES}
        for round_ in range(args.rounds):
            for name in SIDES:
                times, length = measure(name, tmp / "model", tmp / f"{name[:3]}-{round_}", argv)
                results[name][0].extend(times)
                results[name][1].append(length)
        print(f"\nGRPO step on CPU ({torch.get_num_threads()} threads, each side's run in a fresh process): tiny "
              f"Qwen2, {args.prompts} prompts × {args.group} completions, max {args.length} new tokens, "
              f"{'bf16 autocast' if args.bf16 else 'fp32'}")
        medians = {}
        for name, (times, lengths) in results.items():
            medians[name] = statistics.median(times)
            tokens = args.prompts * args.group * statistics.mean(lengths)
            print(f"  {name:16s} {medians[name]:7.2f} s/step   mean completion {statistics.mean(lengths):5.1f} tokens"
                  f"   {tokens / medians[name]:7.0f} generated tokens/s")
        print(f"  speed-up: {medians['TRL GRPOTrainer'] / medians['frugal-r1']:.2f}×")


if __name__ == "__main__":
    main()
