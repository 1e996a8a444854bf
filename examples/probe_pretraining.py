"""A quick pretraining experiment: pretrain on a few tasks for N steps, then measure what the model can do.

    .venv/bin/python examples/probe_pretraining.py --task chain_sum --steps 800 --set data.batch_size=2 \
        --out runs/probe_bs2

It runs the recipe's pretraining stage (default recipes/speedrun.toml; `--set` overrides as in
`frugal-r1 pretrain`, `--task` replaces the recipe's tasks), then, per task, on held-out rows (the trainer's
own held-out seed, disjoint from training):
- trace loss and next-token accuracy: teacher-forced over the trace of `--traces` problems, the question as
  context; this moves long before whole answers do, so it ranks trace formats and schedules in minutes;
- greedy accuracy: `--n` problems answered from "{question}\\n<think>\\n" (the pretraining format, no chat
  template), scored by the task's verifier; `samples_<task>.md` keeps the first few completions.
It is the experiment behind the speedrun recipe's pretraining batch size (see the comment there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from frugal_r1.chat import THINK_START
from frugal_r1.generate import load_backend
from frugal_r1.generate.backend import Backend, SamplingParams
from frugal_r1.recipe import load_stage
from frugal_r1.tasks import Task
from frugal_r1.train.corpus import completion_for, open_tasks, pretraining_prompt
from frugal_r1.train.run import apply_common_flags, run_lm_stage


def teacher_forced(backend: Backend, task: Task, count: int, seed: int) -> tuple[float, float]:
    """Mean per-token loss and argmax accuracy on the traces of the first `count` rows of `task`."""
    model, tokenizer = backend.model.eval(), backend.tokenizer
    losses, hits, tokens = 0.0, 0, 0
    for index in range(count):
        row = task[index]
        prompt = backend.encode_prompts([pretraining_prompt(row)], SamplingParams())[0]
        trace = tokenizer.encode(completion_for(task, row, seed, index), add_special_tokens=False)
        ids = torch.tensor([prompt + trace])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:-1].float(), dim=-1)
        target = ids[0, len(prompt):]
        losses -= float(logprobs.gather(1, target[:, None]).sum())
        hits += int((logprobs.argmax(-1) == target).sum())
        tokens += len(target)
    return losses / tokens, hits / tokens


def greedy(backend: Backend, task: Task, n: int, max_new_tokens: int, out: Path) -> float:
    rows = [task[i] for i in range(n)]
    prompts = [pretraining_prompt(row) for row in rows]
    completions = backend.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
    texts = [f"{THINK_START}\n{c.text}" for c in completions]
    scores = [task.score(text, row) for text, row in zip(texts, rows)]
    shown = [f"### {row['prompt']}\n\nreference {row['answer']}, score {score}\n\n```\n{text}\n```"
             for row, text, score in list(zip(rows, texts, scores))[:8]]
    (out / f"samples_{task.name}.md").write_text("\n\n".join(shown) + "\n")
    return sum(scores) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="recipes/speedrun.toml")
    parser.add_argument("--task", action="append", help="task to pretrain on (repeatable; default: the recipe's)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=100, help="held-out problems answered greedily per task")
    parser.add_argument("--traces", type=int, default=40, help="held-out traces scored teacher-forced per task")
    parser.add_argument("--max-new-tokens", type=int, default=768)
    args = parser.parse_args()

    cfg = apply_common_flags(load_stage("pretrain", args.config, args.set), args)
    cfg.train.eval_every = cfg.train.save_every = 0
    out = Path(args.out)
    if not (out / "final").exists():
        run_lm_stage("pretrain", cfg, out)
    backend = load_backend(out / "final")
    seed = cfg.train.seed + cfg.data.eval_seed_offset
    result: dict[str, dict[str, float]] = {}
    for task in open_tasks(cfg.data, seed):
        loss, accuracy = teacher_forced(backend, task, args.traces, seed)
        result[task.name] = {"trace_loss": round(loss, 4), "next_token_accuracy": round(accuracy, 4),
                        "greedy_accuracy": greedy(backend, task, args.n, args.max_new_tokens, out)}
    (out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
