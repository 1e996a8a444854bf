"""MTP speculative decoding on a model trained by frugal-r1 (e.g. a speedrun's pretrain/final).

Reports the draft acceptance rate, the wall time against plain decoding, and whether greedy output is
token-identical (it must be), on chain_sum and leg_counting prompts in the chat format.

    .venv/bin/python benchmarks/bench_mtp_acceptance.py runs/speedrun/pretrain/final
"""

from __future__ import annotations

import sys
import time

from frugal_r1.eval import task_prompt
from frugal_r1.generate import Engine, SamplingParams, acceptance_rate
from frugal_r1.generate.backend import load_local_tokenizer
from frugal_r1.model.transformer import DeepSeekV3
from frugal_r1.tasks import load_task


def main(path: str) -> None:
    model, tokenizer = DeepSeekV3.from_pretrained(path), load_local_tokenizer(path)
    rows = [load_task(name, size=8, seed=99)[i] for name in ("chain_sum", "leg_counting") for i in range(8)]
    prompts = [task_prompt(tokenizer, row["prompt"], "chat") for row in rows]
    for temperature in (0.0, 0.6):
        params = SamplingParams(temperature=temperature, max_new_tokens=200, seed=0)
        start = time.perf_counter()
        plain = Engine(model, tokenizer).generate(prompts, params)
        plain_seconds = time.perf_counter() - start
        start = time.perf_counter()
        drafted = Engine(model, tokenizer, speculative=True).generate(prompts, params)
        drafted_seconds = time.perf_counter() - start
        same = sum(a.token_ids == b.token_ids for a, b in zip(plain, drafted))
        print(f"T={temperature}: MTP acceptance {acceptance_rate(drafted):.3f}; plain {plain_seconds:.1f}s, "
              f"speculative {drafted_seconds:.1f}s ({plain_seconds / drafted_seconds:.2f}×); "
              f"identical outputs {same}/{len(plain)}" + (" (greedy: must be all)" if temperature == 0 else ""))


if __name__ == "__main__":
    main(sys.argv[1])
