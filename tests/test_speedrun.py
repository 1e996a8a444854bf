"""The speedrun end to end at toy size: every stage, both evaluations, the report, final/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from frugal_r1.speedrun.run import DEFAULT_RECIPE, stage_configs

TOY = """
[model]
preset = "tiny"
[data]
tasks = ["chain_sum", "countdown"]
seq_len = 128
batch_size = 4
vocab_size = 400
tokenizer_documents = 100
[data.task_config.countdown]
min_numbers = 3
max_numbers = 3
[pretrain.train]
steps = 3
eval_batches = 1
[sft.data]
seq_len = 256
drop_long = true
[sft.train]
steps = 2
eval_batches = 1
[grpo.train]
steps = 1
[grpo.rl]
group_size = 2
prompts_per_step = 2
max_new_tokens = 12
eval_n = 2
eval_samples = 1
[speedrun]
eval_n = 3
eval_samples = 2
eval_max_new_tokens = 12
eval_task_max_new_tokens = { countdown = 8 }
"""

ENV = {**os.environ, "FRUGAL_R1_THREADS": "1", "OMP_NUM_THREADS": "1"}


def speedrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "frugal_r1.cli", "speedrun", *args], capture_output=True, text=True,
                          env=ENV, timeout=300)


def test_toy_speedrun_end_to_end(tmp_path):
    recipe = tmp_path / "toy.toml"
    recipe.write_text(TOY)
    out = tmp_path / "run"
    result = speedrun("--config", str(recipe), "--out", str(out), "--set", "pretrain:ledger.hardware=cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[speedrun] predicted on cpu: training" in result.stdout  # the planner's word before the run
    report = json.loads((out / "report.json").read_text())
    assert set(report["after_grpo"]) == {"chain_sum", "countdown"}
    assert set(report["ledgers"]) == {"pretrain", "sft", "grpo"} and report["usd"] > 0
    for png in ("pretrain_loss.png", "grpo.png", "accuracy_vs_minutes.png"):
        assert (out / png).stat().st_size > 1000
    text = (out / "report.md").read_text()
    assert "## Tasks" in text and "Before and after GRPO" in text and "predicted" in text
    assert "at most 12 (8 for countdown) new tokens" in text
    evaluated = json.loads((out / "eval_grpo.json").read_text())
    assert evaluated["config"]["task_max_new_tokens"] == {"countdown": 8}
    countdown = next(t for t in evaluated["tasks"] if t["task"] == "countdown")
    assert all(n <= 8 for p in countdown["problems"] for n in p["lengths"])
    for stage in ("pretrain", "sft"):  # the report's projection counts exactly what the ledger counted
        assert report["predicted"][stage]["flops"] == pytest.approx(report["ledgers"][stage]["flops"], rel=1e-9)
    assert report["predicted"]["grpo"]["seconds"] > 0
    assert (out / "final" / "config.json").exists() and (out / "final" / "tokenizer.json").exists()
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(out / "final") is not None

    refused = speedrun("--config", str(recipe), "--out", str(out))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    stages = json.loads((out / "timings.json").read_text())
    assert set(stages) == {"pretrain", "sft", "eval_sft", "grpo", "eval_grpo"}
    assert report["wall_minutes"] == pytest.approx(sum(stages.values()) / 60)

    missing = speedrun("--config", str(recipe), "--out", str(out), "--resume", "--compare", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "not a finished speedrun" in missing.stderr and "Traceback" not in missing.stderr
    # A finished run resumed only rewrites its report, here with itself as the run to compare against; the stage
    # times are the first process's, not the resume's.
    # ... and from a copy of the recipe elsewhere (another checkout): the settings decide, not the path.
    copy = tmp_path / "elsewhere" / "toy.toml"
    copy.parent.mkdir()
    copy.write_text(TOY)
    resumed = speedrun("--config", str(copy), "--out", str(out), "--resume", "--set", "pretrain:ledger.hardware=cpu",
                       "--compare", str(out))
    assert resumed.returncode == 0 and "already finished" in resumed.stdout and "predicted on" not in resumed.stdout
    again = json.loads((out / "report.json").read_text())
    assert again["stage_minutes"] == pytest.approx(report["stage_minutes"])
    assert "## What more time buys" in (out / "report.md").read_text()
    assert (out / "accuracy_vs_minutes_runs.png").stat().st_size > 1000
    changed = speedrun("--config", str(copy), "--out", str(out), "--resume", "--set", "pretrain:train.lr=0.002")
    assert changed.returncode == 2 and "other settings: pretrain: train.lr" in changed.stderr
    # A stage not yet started may take new settings: GRPO removed and rerun with another learning rate from the
    # same SFT model, and evaluated again.
    plain = ["--set", "pretrain:ledger.hardware=cpu"]
    grpo_lr = ["--set", "grpo:train.lr=0.0002"]
    refused = speedrun("--config", str(copy), "--out", str(out), "--resume", *plain, *grpo_lr)
    assert refused.returncode == 2 and "other settings: grpo: train.lr" in refused.stderr
    shutil.rmtree(out / "grpo")
    rerun = speedrun("--config", str(copy), "--out", str(out), "--resume", *plain, *grpo_lr)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "pretrain: already finished" in rerun.stdout and "sft: already finished" in rerun.stdout
    assert json.loads((out / "speedrun.json").read_text())["stages"]["grpo"]["train"]["lr"] == 0.0002
    assert json.loads((out / "eval_grpo.json").read_text())["wall_seconds"] != evaluated["wall_seconds"]
    shutil.rmtree(out / "sft")
    orphan = speedrun("--config", str(copy), "--out", str(out), "--resume", *plain, *grpo_lr)
    assert orphan.returncode == 2 and "remove" in orphan.stderr and "Traceback" not in orphan.stderr


def test_minutes_scale_every_stage():
    base = stage_configs(DEFAULT_RECIPE, 0, 30, [])
    double = stage_configs(DEFAULT_RECIPE, 0, 120, [])
    for stage in ("pretrain", "sft", "grpo"):
        assert double[stage].train.steps == pytest.approx(4 * base[stage].train.steps, abs=1)
    assert base["pretrain"].model["preset"] == "small"
    tasks = base["pretrain"].data
    assert tasks.tasks == ["chain_sum", "basic_arithmetic", "leg_counting", "countdown", "puzzle24"]
    assert tasks.task_config == {
        "basic_arithmetic": {"max_digits": 2, "max_terms": 4},
        "countdown": {"min_numbers": 3, "max_numbers": 4, "min_value": 1, "max_value": 50, "min_target": 10,
                      "max_target": 100}}


def test_compare_table_reads_each_run_from_its_own_files(tmp_path):
    from frugal_r1.speedrun.compare import load_run, plot, table

    def finished_run(name: str, minutes: float, stage_seconds: tuple[float, float, float], sft: float, grpo: float):
        run = tmp_path / name
        run.mkdir()
        (run / "speedrun.json").write_text(json.dumps({"seed": 0, "minutes": minutes}))
        ledgers = {s: {"wall_seconds": t} for s, t in zip(("pretrain", "sft", "grpo"), stage_seconds)}
        for stage, ledger in ledgers.items():
            (run / stage).mkdir()
            (run / stage / "ledger.json").write_text(json.dumps(ledger))
        for evaluation in ("eval_sft", "eval_grpo"):
            (run / f"{evaluation}.json").write_text(json.dumps({"wall_seconds": 300}))
        # the pretraining stage measured around it (tokenizer included) is longer than its ledger
        (run / "timings.json").write_text(json.dumps({"pretrain": stage_seconds[0] + 60}))
        (run / "report.json").write_text(json.dumps({  # an old report's whole-run minutes are not trusted
            "ledgers": ledgers, "wall_minutes": 1.0, "mean_pass_at_1": {"sft": sft, "grpo": grpo},
            "after_grpo": {"chain_sum": {"pass_at_1": grpo + 0.1}, "puzzle24": {"pass_at_1": grpo - 0.1}}}))
        return load_run(run)

    long = finished_run("long", 120, (6000, 600, 1800), 0.30, 0.35)
    short = finished_run("short", 30, (1500, 150, 450), 0.19, 0.2)
    assert (long.sft_minutes, long.training_minutes) == (110, 140)
    lines = table([long, short])
    assert lines[0].endswith("| chain_sum | puzzle24 |")
    assert lines[2] == "| short | 0 | 30 min | 35.0 | 46.0 | 19.0% | 20.0% | 30.0% | 10.0% |"
    assert lines[3] == "| long | 0 | 120 min | 140.0 | 151.0 | 30.0% | 35.0% | 45.0% | 25.0% |"
    plot([long, short], tmp_path / "runs.png")
    assert (tmp_path / "runs.png").stat().st_size > 1000


@pytest.mark.slow
def test_scaled_speedrun_projection_within_30_percent_of_its_ledgers(tmp_path):
    """F8: the real recipe at half its budget, every stage's predicted time within ±30% of the ledger's
    wall time. A timing comparison, so it is kept out of the default run: on a quiet 2-core machine."""
    text = DEFAULT_RECIPE.read_text()
    assert "eval_n = 200" in text
    recipe = tmp_path / "speedrun.toml"
    recipe.write_text(text.replace("eval_n = 200", "eval_n = 2"))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "frugal_r1.cli", "speedrun", "--config", str(recipe), "--out",
                             str(out), "--minutes", "15"], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for stage in ("pretrain", "sft", "grpo"):
        measured = report["ledgers"][stage]["wall_seconds"]
        assert report["predicted"][stage]["seconds"] == pytest.approx(measured, rel=0.30), stage


def test_prediction_counts_only_the_stages_still_to_run():
    from frugal_r1.speedrun.run import predicted_line

    configs = stage_configs(DEFAULT_RECIPE, 0, 30, ["pretrain:ledger.hardware='cpu'"])
    line = predicted_line(configs, 30, done=("pretrain",))
    assert "still to run (pretrain finished)" in line and "(sft " in line and "pretrain 1" not in line
