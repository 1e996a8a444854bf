"""How long each stage of a speedrun took, whichever process ran it (a run may span several with --resume).

`run.py` writes each stage's measured seconds to `DIR/timings.json` as the stage ends; `stage_seconds`
reads a run's five stages back from that file and from the stages' own records.
"""

from __future__ import annotations

import json
from pathlib import Path

from frugal_r1.atomic import atomic_write_bytes

TIMINGS = "timings.json"
STAGES = ("pretrain", "sft", "eval_sft", "grpo", "eval_grpo")


def recorded(out: Path) -> dict[str, float]:
    """The seconds timings.json holds, by stage ({} before the first stage ends)."""
    path = out / TIMINGS
    return json.loads(path.read_text()) if path.exists() else {}


def record(out: Path, name: str, seconds: float) -> None:
    """Keep one stage's measured seconds in timings.json (atomically: a kill never loses the others)."""
    atomic_write_bytes(out / TIMINGS, json.dumps({**recorded(out), name: seconds}, indent=2).encode())


def stage_seconds(out: Path, evaluations: dict[str, dict] | None = None) -> dict[str, float]:
    """Each stage's wall seconds, whichever process ran it: the time measured around the stage (setup such as
    the tokenizer included). A training stage resumed after a kill measured only its last process, so it
    counts at least its ledger's time (which resumes with the checkpoint); a stage finished by an older
    frugal-r1, which kept no timings.json, counts its ledger's or its evaluation's own record. `evaluations`
    (already loaded) saves reading eval_*.json again."""
    timings = recorded(out)
    evaluations = evaluations or {}
    seconds = {}
    for name in STAGES:
        if name.startswith("eval_"):
            evaluation = evaluations.get(name) or json.loads((out / f"{name}.json").read_text())
            own = evaluation.get("wall_seconds", 0.0)
        else:
            own = json.loads((out / name / "ledger.json").read_text())["wall_seconds"]
        seconds[name] = max(timings.get(name, 0.0), own)
    return seconds
