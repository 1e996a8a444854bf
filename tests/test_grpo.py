"""GRPO end to end on tiny policies (frugal-r1's DeepSeek-V3 and a transformers Qwen2): runs, metrics,
samples, exact resume after SIGKILL, health checks and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from frugal_r1.checkpoint import latest_checkpoint
from frugal_r1.metrics import read_metrics

CLI = [sys.executable, "-m", "frugal_r1.cli"]
ENV = {**os.environ, "FRUGAL_R1_THREADS": "1", "OMP_NUM_THREADS": "1"}
GRPO = ["--task", "chain_sum", "--set", "rl.group_size=4", "--set", "rl.prompts_per_step=2",
        "--set", "rl.max_new_tokens=12", "--set", "rl.eval_n=2", "--set", "rl.eval_samples=2",
        "--set", "train.lr=1e-3", "--set", "train.warmup_steps=0", "--set", "ledger.hardware=cpu",
        "--set", "rl.samples_every=1", "--set", "train.grad_accum=2"]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def tiny_frugal(tmp_path_factory) -> Path:
    from frugal_r1.model import preset
    from frugal_r1.model.transformer import DeepSeekV3
    from frugal_r1.tokenizer import save_tokenizer, train_tokenizer

    out = tmp_path_factory.mktemp("policy") / "frugal"
    texts = [f"{a} + {b} = {a + b} </think> <answer>{a + b}</answer> State the final answer" for a in range(40)
             for b in range(10)]
    tokenizer = train_tokenizer(texts, 300)
    torch.manual_seed(0)
    model = DeepSeekV3(preset("tiny", vocab_size=320, hidden_size=64, num_hidden_layers=2, kv_lora_rank=16,
                              qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, moe_intermediate_size=32,
                              intermediate_size=96))
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from frugal_r1.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("policy") / "qwen"
    tokenizer = train_tokenizer([f"{a} plus {b} is {a + b}" for a in range(30) for b in range(30)], 300)
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=256, tie_word_embeddings=True,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("policy", ["tiny_frugal", "tiny_qwen"])
def test_grpo_runs_and_logs_what_users_read(policy, request, tmp_path):
    init = request.getfixturevalue(policy)
    out = tmp_path / "run"
    run_cli("grpo", "--init", str(init), *GRPO, "--steps", "2", "--out", str(out), "--set", "rl.beta=0.05",
            "--set", "rl.updates=2")
    records = [r for r in read_metrics(out) if "loss" in r]
    assert len(records) == 2
    for key in ("reward_mean", "reward_std", "reward/accuracy", "reward/format", "accuracy", "frac_reward_zero_std",
                "completion_length_mean", "completion_length_max", "clipped_ratio", "entropy", "kl",
                "clip_fraction", "seconds_generation", "seconds_scoring", "seconds_training"):
        assert key in records[0], key
    final = read_metrics(out)[-1]
    assert "eval_pass@1" in final and "eval_pass@1/chain_sum" in final
    assert (out / "samples.md").read_text().count("**prompt**") >= 2
    assert (out / "final" / "config.json").exists() and (out / "ledger.json").exists()
    assert json.loads((out / "ledger.json").read_text())["flops"] > 0


def test_grpo_resume_after_sigkill_is_bit_identical(tiny_frugal, tmp_path):
    args = ["grpo", "--init", str(tiny_frugal), *GRPO, "--steps", "8", "--save-every", "2", "--seed", "5",
            "--set", "rl.updates=2", "--set", "rl.beta=0.05", "--set", "rl.sft_weight=0.5", "--set", "rl.sft_rows=2"]
    run_cli(*args, "--out", str(tmp_path / "straight"))
    process = subprocess.Popen([*CLI, *args, "--out", str(tmp_path / "resumed")], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 200
    while latest_checkpoint(tmp_path / "resumed") is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_cli(*args, "--out", str(tmp_path / "resumed"), "--resume")
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rewards = [r["reward_mean"] for r in read_metrics(tmp_path / "straight") if "reward_mean" in r]
    assert rewards == [r["reward_mean"] for r in read_metrics(tmp_path / "resumed") if "reward_mean" in r]


def test_two_ranks_train_a_frugal_policy_whose_mtp_module_grpo_leaves_out(tiny_frugal, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "ddp"
    result = subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_port", str(29600 + os.getpid() % 1000),
                             "-m", "frugal_r1.cli", "grpo", "--init", str(tiny_frugal), *GRPO, "--steps", "2",
                             "--set", "rl.sft_weight=0.5", "--set", "rl.sft_rows=2", "--out", str(out)],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in read_metrics(out) if "loss" in r]
    assert len(records) == 2 and all(r["sft_loss"] > 0 for r in records)
    before = load_file(str(tiny_frugal / "model.safetensors"))
    after = load_file(str(out / "final" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_length_collapse_stops_with_a_message(tiny_frugal, tmp_path):
    result = run_cli("grpo", "--init", str(tiny_frugal), *GRPO, "--steps", "3", "--out", str(tmp_path / "run"),
                     "--set", "rl.length_floor=1000", check=False)
    assert result.returncode == 2
    assert "completion length collapsed" in result.stderr and "Traceback" not in result.stderr
    assert latest_checkpoint(tmp_path / "run") is not None


@pytest.mark.parametrize("setting, message", [
    ("rl.aggregation=mean", "rl.aggregation must be one of"),
    ("rl.group_size=1", "rl.group_size must be >= 2"),
    ("rl.negative_weight=1.5", "rl.negative_weight must be between 0 and 1"),
    ("rl.sft_weight=0.5", "rl.sft_weight > 0 needs rl.sft_rows >= 1"),
    ("rl.sft_rows=-1", "rl.sft_weight and rl.sft_rows must be >= 0"),
    ("rl.sft_task_weights={ countdown = 1.0 }", "rl.sft_task_weights names tasks not in data.tasks: countdown"),
    ("rl.rewards={ accuracy = 1.0, vibes = 1.0 }", "unknown reward 'vibes'"),
])
def test_bad_rl_config(tiny_frugal, tmp_path, setting, message):
    result = run_cli("grpo", "--init", str(tiny_frugal), *GRPO, "--steps", "1", "--out", str(tmp_path / "r"),
                     "--set", setting, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_reward_hacking_warning_fires_only_when_reward_rises_while_accuracy_falls(capsys):
    from functools import partial
    from types import SimpleNamespace

    from frugal_r1.train.grpo import GRPOStage

    stage = SimpleNamespace(previous_eval={}, _train_reward_history=[0.2] * 5)
    stage._recent_train_reward = partial(GRPOStage._recent_train_reward, stage)
    warning = partial(GRPOStage._reward_hacking_warning, stage)
    assert warning(0.5) == {}  # the first evaluation has nothing to compare with
    stage.previous_eval = {"eval_pass@1": 0.5, "train_reward": 0.2}
    stage._train_reward_history += [0.6] * 5
    assert warning(0.3) == {"warning_reward_hacking": 1.0}
    assert "possible reward hacking" in capsys.readouterr().out
    assert warning(0.5) == {"warning_reward_hacking": 0.0}  # held-out accuracy held
    stage._train_reward_history += [0.2] * 5
    assert warning(0.3) == {"warning_reward_hacking": 0.0}  # training reward did not rise


def _micro_batches(cpu_bf16: bool, completion_lengths: list[int]):
    from functools import partial
    from types import SimpleNamespace

    from frugal_r1.recipe import RLConfig
    from frugal_r1.train.grpo import GRPOStage

    rl = RLConfig(group_size=2, overlong="mask")
    stage = SimpleNamespace(rl=rl, grad_accum=2, bf16=cpu_bf16, _cpu_bf16=cpu_bf16, reference=None,
                            policy=SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0)))
    kept = [({"group": i // 2}, SimpleNamespace(prompt_ids=[7, 7], token_ids=[5] * n, finish_reason="stop"),
             float(i)) for i, n in enumerate(completion_lengths)]
    return partial(GRPOStage._micro_batches, stage)(kept)


def test_micro_batches_keep_groups_whole_and_pad_only_to_similar_lengths():
    completion_lengths = [3, 40, 5, 6, 30, 2, 4, 4]  # groups (prompt 0…3) of two completions each
    batches = _micro_batches(False, completion_lengths)
    # Groups by their longest completion: prompt 3 (4), prompt 1 (6), prompt 2 (30), prompt 0 (40).
    assert [b.advantages.tolist() for b in batches] == [[6.0, 7.0, 2.0, 3.0], [4.0, 5.0, 0.0, 1.0]]
    assert [tuple(b.input_ids.shape) for b in batches] == [(4, 8), (4, 42)]  # an interleaved split pads both to 42
    assert [b.mask.sum().item() for b in batches] == [4 + 4 + 5 + 6, 30 + 2 + 3 + 40]
    # bf16 on the CPU: widths rounded up to CPU_BUCKET_ROWS (oneDNN reuses its kernels); the same tokens count.
    padded = _micro_batches(True, completion_lengths)
    assert [tuple(b.input_ids.shape) for b in padded] == [(4, 32), (4, 64)]
    assert [b.mask.sum().item() for b in padded] == [b.mask.sum().item() for b in batches]
    assert all(torch.equal(p.input_ids[:, : b.input_ids.shape[1]], b.input_ids) for p, b in zip(padded, batches))


@pytest.mark.parametrize("speed, moves", [(None, False), (0.05, True)])
def test_moe_gate_biases_stay_put_in_grpo_unless_asked(tiny_frugal, tmp_path, speed, moves):
    out = tmp_path / "run"
    extra = [] if speed is None else ["--set", f"rl.gate_bias_speed={speed}"]
    # One step: at γ = 0.05 this two-group model's biases can swing back exactly on the next one (every token
    # goes to the favoured group, whose experts are then the overloaded ones).
    run_cli("grpo", "--init", str(tiny_frugal), *GRPO, "--steps", "1", "--out", str(out), *extra)
    before = load_file(str(tiny_frugal / "model.safetensors"))
    after = load_file(str(out / "final" / "model.safetensors"))
    biases = [name for name in before if name.endswith("e_score_correction_bias")]
    assert biases and json.loads((tiny_frugal / "config.json").read_text())["bias_update_speed"] > 0
    assert any(not torch.equal(before[name], after[name]) for name in biases) == moves


def test_grpo_prompts_follow_the_task_weights():
    from types import SimpleNamespace

    from frugal_r1.errors import UserError
    from frugal_r1.train.corpus import problem_stream, task_weight_list
    from frugal_r1.train.grpo import GRPOStage

    tasks = [type("T", (), {"name": n, "__len__": lambda self: 10, "__getitem__": lambda self, i, n=n: n})()
             for n in ("a", "b", "c")]

    def drawn(weights):
        stage = SimpleNamespace(rollout_index=0, info=SimpleNamespace(world_size=1, rank=0),
                                problem=problem_stream(tasks, weights, "0:grpo"))
        return GRPOStage._rows(stage, 300)

    weighted = drawn({"a": 0, "b": 1, "c": 3})
    assert "a" not in weighted and 180 < weighted.count("c") < 270
    assert set(drawn({})) == {"a", "b", "c"}
    with pytest.raises(UserError, match="names tasks not in data.tasks: z"):
        task_weight_list(tasks, {"z": 1.0})
