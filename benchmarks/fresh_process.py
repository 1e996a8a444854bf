"""Run a benchmark script's worker mode in a fresh process and read the JSON record it prints last.

Both benchmarks measure each side in its own process: in one process the two disturb each other through the
allocator (see bench_train_step.py)."""

from __future__ import annotations

import json
import subprocess
import sys


def run_worker(script: str, arguments: list[str]) -> dict:
    result = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])
