"""User mistakes across the commands: each gets one line naming what to fix and exit status 2, before any long
work starts, never a traceback. Each case was found by trying the mistake on the command line."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from frugal_r1.cli import main
from frugal_r1.model import preset
from frugal_r1.recipe import load_stage
from frugal_r1.train.run import check_resume


def broken_models(root: Path) -> dict[str, Path]:
    """Model directories a user might point at: unreadable config, corrupt weights, another model without any."""
    dirs = {name: root / name for name in ("bad_json", "bad_weights", "other_model")}
    for path in dirs.values():
        path.mkdir()
    (dirs["bad_json"] / "config.json").write_text("{model_type: deepseek_v3")
    (dirs["bad_weights"] / "config.json").write_text(json.dumps(preset("tiny").to_hf_dict()))
    (dirs["bad_weights"] / "model.safetensors").write_bytes(b"\xff" * 64)
    (dirs["other_model"] / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 32}))
    return dirs


@pytest.fixture
def files(tmp_path: Path) -> Path:
    broken_models(tmp_path)
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "bad.toml").write_text("x = [\n")
    (tmp_path / "speedrun_int.toml").write_text("speedrun = 3\n")
    (tmp_path / "speedrun_str.toml").write_text('[speedrun]\neval_n = "abc"\n')
    (tmp_path / "train_int.toml").write_text("train = 5\n")
    (tmp_path / "hardware.toml").write_text('[mine]\npeak_tflops = "fast"\nmemory_gb = 80\npower_w = 700\n'
                                            "usd_per_hour = 2\n")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "{tmp}/bad_json", "--task", "chain_sum"], "{tmp}/bad_json/config.json: not a readable JSON"),
    (["eval", "--model", "{tmp}/bad_weights", "--task", "chain_sum"],
     "{tmp}/bad_weights/model.safetensors: not a readable safetensors file"),
    (["eval", "--model", "{tmp}/other_model", "--task", "chain_sum"],
     "{tmp}/other_model: transformers cannot load this model"),
    (["eval", "--model", "{tmp}/bad_weights", "--task", "chain_sum", "--backend", "hf"],
     "{tmp}/bad_weights: transformers cannot load this model"),
    (["grpo", "--init", "{tmp}/bad_weights", "--out", "{tmp}/run"], "bad_weights holds no tokenizer"),
    (["sft", "--init", "{tmp}/bad_json", "--out", "{tmp}/run"], "bad_json"),
    (["eval", "--model", "{tmp}/bad_weights", "--task", "chain_sum", "--json", "{tmp}/a_dir"], "is a directory"),
    (["eval", "--model", "{tmp}/bad_weights", "--task", "chain_sum", "--json", "{tmp}/a_file/x.json"],
     "{tmp}/a_file is a file, not a folder"),
    (["eval", "--model", "{tmp}/bad_weights", "--task", "chain_sum", "--task-config", "foo"], "--task-config 'foo'"),
    (["eval", "--model", "{tmp}/bad_weights", "--task", "chain_sum", "--device", "tpu"], "--device must be"),
    (["eval", "--model", "{tmp}/bad_weights", "--task", "chain_sum", "--examples", "-1"], "--examples must be >= 0"),
    (["speedrun", "--config", "{tmp}/bad.toml", "--out", "{tmp}/run"], "{tmp}/bad.toml: invalid TOML"),
    (["speedrun", "--config", "{tmp}/a_dir", "--out", "{tmp}/run"], "is a directory, not a TOML file"),
    (["speedrun", "--config", "{tmp}/speedrun_int.toml", "--out", "{tmp}/run"], "[speedrun] must be a table"),
    (["speedrun", "--config", "{tmp}/speedrun_str.toml", "--out", "{tmp}/run"], "speedrun.eval_n: expected int"),
    (["speedrun", "--out", "{tmp}/a_file"], "--out {tmp}/a_file is a file"),
    (["speedrun", "--out", "{tmp}/run", "--set", "grpo:rl.eval_n=0"], "grpo: rl.eval_n and rl.eval_samples must be"),
    (["speedrun", "--out", "{tmp}/run", "--set", "grpo:foo"], "grpo: --set 'foo'"),
    (["pretrain", "--out", "{tmp}/run", "--set", "train.lr=-1"], "train.lr must be a finite number >= 0, got -1.0"),
    (["pretrain", "--out", "{tmp}/run", "--set", "train.log_every=0"], "train.log_every must be >= 1"),
    (["pretrain", "--out", "{tmp}/run", "--set", "train.schedule='linear'"], "train.schedule must be one of"),
    (["pretrain", "--out", "{tmp}/run", "--set", "train.grad_accum=0"], "train.grad_accum must be >= 1"),
    (["pretrain", "--out", "{tmp}/run", "--set", "train.nan_action='ignore'"], "train.nan_action must be one of"),
    (["cost", "hardware", "--hardware-file", "{tmp}/hardware.toml"], "[mine] peak_tflops must be a table"),
    (["cost", "deepseek-v3", "--price-per-hour", "-5"], "--price-per-hour must be >= 0"),
    (["pretrain", "--out", "{tmp}/run", "--task", "chain_sun"], "unknown task 'chain_sun'; did you mean chain_sum"),
    (["demo", "--steps", "0"], "--steps must be >= 1"),
    (["pretrain", "--out", "{tmp}/run", "--save-every", "-2"], "train.save_every must be >= 0"),
    (["pretrain", "--out", "{tmp}/run", "--set", "ledger.price_per_hour=-1"], "ledger.price_per_hour must be"),
    (["pretrain", "--out", "{tmp}/run", "--config", "{tmp}/train_int.toml"], "[train] must be a table of settings"),
    (["grpo", "--init", "{tmp}/bad_weights", "--out", "{tmp}/run", "--set", "rl.top_p=0"], "rl.top_p in (0, 1]"),
    (["pretrain", "--out", "{tmp}/run", "--preset", "deepseek-v3-671b", "--steps", "1", "--set",
      "data.tokenizer_documents=20"], "GB for its weights, gradients and AdamW state; cpu has"),
])
def test_mistake_gets_one_line_and_exit_2(argv, message, files, capsys):
    assert main([a.replace("{tmp}", str(files)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(files)) in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (files / "run").exists()  # nothing left behind by a refused run


def test_values_with_a_meaning_at_zero_are_still_accepted():
    cfg = load_stage("pretrain", overrides=["train.keep_last=0", "train.eval_batches=0", "train.save_every=0"])
    assert (cfg.train.keep_last, cfg.train.eval_batches) == (0, 0)  # keep every checkpoint; no held-out loss


def test_threads_from_the_environment_must_be_a_number(files, capsys, monkeypatch):
    monkeypatch.setenv("FRUGAL_R1_THREADS", "two")
    assert main(["pretrain", "--out", str(files / "run")]) == 2
    assert "FRUGAL_R1_THREADS must be a whole number" in capsys.readouterr().err


def test_serve_refuses_a_port_in_use_before_loading_the_model(files, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(files / "bad_weights"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "safetensors" not in err


def test_resume_names_the_settings_that_changed(tmp_path):
    started = load_stage("sft", overrides=["train.lr=1e-3"])
    (tmp_path / "run_config.json").write_text(json.dumps({"config": started.to_dict(), "init": "runs/pt/final"}))
    check_resume(tmp_path, started, "runs/pt/final")  # the same run continues
    changed = load_stage("sft", overrides=["train.lr=2e-3", "model.num_hidden_layers=3"])
    with pytest.raises(Exception, match=r"other settings: model.num_hidden_layers, train.lr, --init \(was runs/pt/final\)"):
        check_resume(tmp_path, changed, "elsewhere")
