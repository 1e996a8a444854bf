"""The training loop: exact resume after SIGKILL, DDP equivalence, NaN handling, schedules, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from frugal_r1.checkpoint import latest_checkpoint
from frugal_r1.ledger import Ledger, resolve_hardware
from frugal_r1.metrics import read_metrics
from frugal_r1.recipe import TrainConfig, load_stage
from frugal_r1.train.loop import RunStopped, Trainer, lr_factor

CLI = [sys.executable, "-m", "frugal_r1.cli"]
TINY = ["--preset", "tiny", "--set", "data.seq_len=64", "--set", "data.batch_size=4",
        "--set", "data.vocab_size=400", "--set", "data.tokenizer_documents=200", "--set", "train.eval_batches=1",
        "--set", "train.warmup_steps=2", "--set", "ledger.hardware=cpu"]
ENV = {**os.environ, "FRUGAL_R1_THREADS": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def sums_jsonl(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "sums.jsonl"
    with path.open("w") as f:
        for _ in range(300):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            f.write(json.dumps({"prompt": f"What is {a} + {b}?",
                                "answer": f"<think>\n{a} + {b} = {a + b}\n</think>\n<answer>{a + b}</answer>"}) + "\n")
    return path


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def kill_midway_then_resume(args: list[str], out: Path) -> None:
    process = subprocess.Popen([*CLI, *args, "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while latest_checkpoint(out) is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 0.8))  # a random moment after the first checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_cli(*args, "--out", str(out), "--resume")


@pytest.mark.parametrize("kind", ["pretrain", "sft"])
def test_sigkill_and_resume_is_bit_identical(kind, tmp_path, sums_jsonl):
    task = ["--task", f"jsonl:{sums_jsonl}"]
    init = []
    if kind == "sft":
        run_cli("pretrain", *TINY, *task, "--steps", "3", "--out", str(tmp_path / "base"))
        init = ["--init", str(tmp_path / "base" / "final")]
    args = [kind, *TINY, *task, *init, "--steps", "16", "--save-every", "2", "--seed", "3"]
    run_cli(*args, "--out", str(tmp_path / "straight"))
    kill_midway_then_resume(args, tmp_path / "resumed")
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    losses = [r["loss"] for r in read_metrics(tmp_path / "straight") if "loss" in r]
    resumed_losses = [r["loss"] for r in read_metrics(tmp_path / "resumed") if "loss" in r]
    assert losses == resumed_losses and len(losses) == 16
    kept = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert len(kept) == 2, kept  # keep_last


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, sums_jsonl):
    common = ["--preset", "tiny", "--set", "data.seq_len=64", "--set", "data.vocab_size=400",
              "--set", "data.tokenizer_documents=200", "--set", "train.eval_batches=1", "--set", "ledger.hardware=cpu",
              "--task", f"jsonl:{sums_jsonl}", "--steps", "6", "--set", "train.bf16=false"]
    run_cli("pretrain", *common, "--set", "data.batch_size=4", "--out", str(tmp_path / "single"))
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_port", str(29500 + os.getpid() % 1000),
                             "-m", "frugal_r1.cli", "pretrain", *common, "--set", "data.batch_size=2",
                             "--set", f"data.tokenizer=\"{tmp_path / 'single' / 'tokenizer'}\"",
                             "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = [r["loss"] for r in read_metrics(tmp_path / "single") if "loss" in r]
    ddp = [r["loss"] for r in read_metrics(tmp_path / "ddp") if "loss" in r]
    assert len(single) == len(ddp) == 6
    assert single == pytest.approx(ddp, rel=1e-4, abs=1e-4)
    assert single[-1] < single[0]


class NanStage:
    """A least-squares stage whose loss is NaN on chosen steps."""

    name = "nan-test"

    def __init__(self, nan_calls: set[int]):
        self.calls, self.nan_calls = 0, nan_calls

    def next_batch(self):
        return torch.ones(4, 3)

    def count_targets(self, batch):
        return 4

    def count_tokens(self, batch):
        return 4

    def loss(self, model, batch, denominator):
        self.calls += 1
        loss = (model(batch) ** 2).sum() / denominator
        return (loss * float("nan") if self.calls in self.nan_calls else loss), {}

    def evaluate(self, model):
        return {}

    def flops_per_token(self):
        return 1.0

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def make_trainer(tmp_path, nan_calls, max_bad=3):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    cfg = TrainConfig(steps=6, lr=0.1, warmup_steps=0, max_bad_steps=max_bad, bf16=False)
    ledger = Ledger(resolve_hardware("cpu", measure_seconds=0.2))
    return Trainer(model, NanStage(nan_calls), cfg, tmp_path, ledger), model


def test_nan_loss_skips_the_step(tmp_path, capsys):
    trainer, model = make_trainer(tmp_path, nan_calls={2})
    trainer.run()
    assert trainer.step == 6 and trainer.stage.calls == 7
    assert "loss is nan; step skipped" in capsys.readouterr().out


def test_repeated_nan_stops_with_a_good_checkpoint(tmp_path):
    trainer, model = make_trainer(tmp_path, nan_calls={3, 4, 5})
    with pytest.raises(RunStopped, match="3 non-finite losses in a row"):
        trainer.run()
    saved = latest_checkpoint(tmp_path)
    assert saved is not None and saved.name.endswith("00000002")
    weights = load_file(str(saved / "model.safetensors"))
    assert torch.isfinite(weights["weight"]).all() and torch.equal(weights["weight"], model.weight.detach())


class EvalStage(NanStage):
    def evaluate(self, model):
        return {"eval_loss": float(self.calls)}


def test_every_held_out_evaluation_reaches_the_metrics_whatever_log_every_is(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(steps=7, lr=0.1, warmup_steps=0, bf16=False, eval_every=3, log_every=5, save_every=0)
    ledger = Ledger(resolve_hardware("cpu", measure_seconds=0.2))
    Trainer(torch.nn.Linear(3, 2), EvalStage(set()), cfg, tmp_path, ledger).run()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6, 7]
    assert [r["step"] for r in records if "loss" in r] == [3, 5, 6, 7]


def test_schedules():
    cosine = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cosine) == pytest.approx(0.1)
    assert lr_factor(9, cosine) == pytest.approx(1.0)
    assert lr_factor(60, cosine) == pytest.approx(0.55)
    assert lr_factor(110, cosine) == pytest.approx(0.1)
    wsd = TrainConfig(steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(50, wsd) == 1.0 and lr_factor(90, wsd) == pytest.approx(0.5)


def test_recipe_stage_tables_and_overrides(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\npreset = "tiny"\n[data]\nseq_len = 128\n'
                      '[pretrain.train]\nlr = 0.01\nsteps = 7\n[sft.train]\nlr = 0.001\n')
    cfg = load_stage("pretrain", recipe, ["train.steps=9", "data.tasks=['chain_sum', 'countdown']",
                                           "data.task_config.countdown.min_numbers=3"])
    assert (cfg.train.lr, cfg.train.steps, cfg.data.seq_len) == (0.01, 9, 128)
    assert cfg.data.tasks == ["chain_sum", "countdown"] and cfg.data.task_config == {"countdown": {"min_numbers": 3}}
    assert load_stage("sft", recipe).train.lr == 0.001


def test_task_flag_drops_the_recipes_settings_for_tasks_it_leaves_out():
    from argparse import Namespace

    from frugal_r1.train.corpus import open_tasks
    from frugal_r1.train.run import apply_common_flags

    cfg = apply_common_flags(load_stage("pretrain", Path(__file__).parents[1] / "recipes" / "speedrun.toml"), Namespace(task=["chain_sum", "countdown"]))
    assert cfg.data.tasks == ["chain_sum", "countdown"]
    assert set(cfg.data.task_config) == {"countdown"} and cfg.data.task_sizes == {}
    assert [t.name for t in open_tasks(cfg.data, 0)] == ["chain_sum", "countdown"]


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--out", "{tmp}/a", "--set", "train.lrr=3"], "unknown key(s) in [train]: train.lrr (did you mean train.lr?)"),
    (["pretrain", "--out", "{tmp}/a", "--set", "model.hidden_sise=3"], "unknown model key(s): hidden_sise"),
    (["pretrain", "--out", "{tmp}/a", "--set", "train.steps=many"], "train.steps: expected int"),
    (["sft", "--init", "{tmp}/missing", "--out", "{tmp}/a"], "--init {tmp}/missing is not a model directory"),
    (["pretrain", "--out", "{tmp}/a", "--task", "jsonl:{tmp}/empty.jsonl"], "empty"),
    (["pretrain", "--out", "{tmp}/a", "--task", "chain_sun"], "chain_sum"),
    (["pretrain", "--out", "{tmp}/a", "--config", "{tmp}/nope.toml"], "recipe {tmp}/nope.toml not found"),
    (["pretrain", "--out", "{tmp}/a", "--set", "train.device='cuda:99'"], "train.device = 'cuda:99'"),
    (["pretrain", "--out", "{tmp}/a", "--set", "train.device='tpu'"], "train.device must be"),
    (["pretrain", "--out", "{tmp}/a", "--preset", "tiny", "--set", "data.seq_len=4096",
      "--task", "jsonl:{tmp}/one.jsonl", "--set", "data.tokenizer_documents=5"], "exceeds the model's max_position_embeddings"),
])
def test_user_mistakes_get_one_line_and_exit_2(args, message, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "one.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message.replace("{tmp}", str(tmp_path)) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("stage", ["pretrain", "sft", "grpo"])
def test_a_recorded_config_matches_when_it_only_lacks_settings_added_later(stage):
    from frugal_r1.recipe import same_config

    cfg = load_stage(stage, Path(__file__).parents[1] / "recipes" / "speedrun.toml")
    recorded = json.loads(json.dumps(cfg.to_dict()))  # as run_config.json holds it
    assert same_config(recorded, cfg)
    del recorded["train"]["device"]  # a run started before train.device existed
    assert same_config(recorded, cfg)
    recorded["train"]["lr"] = cfg.train.lr * 2
    assert not same_config(recorded, cfg)
    recorded["train"]["lr"] = cfg.train.lr
    recorded["train"]["retired_setting"] = 1  # a setting this version no longer knows
    assert not same_config(recorded, cfg) and not same_config(None, cfg)
