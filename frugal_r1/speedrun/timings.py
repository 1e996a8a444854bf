"""How long each stage of a speedrun took, whichever process ran it (a run may span several with --resume).

`run.py` writes each stage's measured seconds to `DIR/timings.json` as the stage ends; `stage_seconds`
reads a run's five stages back from that file and from the stages' own records.
"""

from __future__ import annotations

import json
from pathlib import Path

TIMINGS = "timings.json"
STAGES = ("pretrain", "sft", "eval_sft", "grpo", "eval_grpo")


def stage_seconds(out: Path, timings: dict[str, float] | None = None,
                  evaluations: dict[str, dict] | None = None) -> dict[str, float]:
    """Each stage's wall seconds, whichever process ran it: the time measured around the stage (setup such as
    the tokenizer included). A training stage resumed after a kill measured only its last process, so it
    counts at least its ledger's time (which resumes with the checkpoint); a stage finished by an older
    frugal-r1, which kept no timings.json, counts its ledger's or its evaluation's own record. `timings` and
    `evaluations` default to the run's files."""
    if timings is None:
        path = out / TIMINGS
        timings = json.loads(path.read_text()) if path.exists() else {}
    evaluations = evaluations or {}
    seconds = {}
    for name in STAGES:
        if name.startswith("eval_"):
            evaluation = evaluations.get(name) or json.loads((out / f"{name}.json").read_text())
            recorded = evaluation.get("wall_seconds", 0.0)
        else:
            recorded = json.loads((out / name / "ledger.json").read_text())["wall_seconds"]
        seconds[name] = max(timings.get(name, 0.0), recorded)
    return seconds
