"""The cost planner: DeepSeek-V3's table, hardware profiles, the CPU measurement, projections, the CLI."""

from __future__ import annotations

import json
import time

import pytest

from frugal_r1.cli import main
from frugal_r1.cost import deepseek_v3
from frugal_r1.cost.hardware import Hardware, get_hardware, load_profiles, measure_cpu_peak
from frugal_r1.cost.planner import Stage, activation_bytes_per_token, memory_fit, project
from frugal_r1.errors import UserError
from frugal_r1.model.config import preset
from frugal_r1.model.flops import attention_flops_per_token, count_parameters, training_flops_per_token

H800 = load_profiles()["H800"]


def test_deepseek_v3_reported_table_is_exact():
    table = deepseek_v3.reported()
    assert [(s["name"], s["gpu_hours"], s["usd"]) for s in table["stages"]] == [
        ("pre-training", 2_664_000, 5_328_000), ("context extension", 119_000, 238_000),
        ("post-training", 5_000, 10_000)]
    assert table["gpu_hours"] == 2_788_000 and isinstance(table["gpu_hours"], int)
    assert table["usd"] == 5_576_000 and isinstance(table["usd"], int)
    assert table["kwh"] == pytest.approx(2_788_000 * 0.7)


def test_deepseek_v3_first_principles():
    derived = deepseek_v3.first_principles(H800, mfu=0.4)
    pretrain = derived["stages"][0]
    cfg = preset("deepseek-v3-671b")
    tokens = 14_800_000_000_000
    assert pretrain["flops"] == training_flops_per_token(cfg, 4096).total * tokens
    check = derived["six_n_check"]
    assert abs(check["six_active_tokens"] / check["six_37b_tokens"] - 1) < 0.03
    assert derived["peak_flops"] == {"bf16": 989.5e12, "fp8": 1979e12}
    implied = pretrain["implied_mfu"]["bf16"]
    assert implied == pretrain["flops"] / (2_664_000 * 3600 * 989.5e12)
    assert 0.3 < implied < 0.5 and implied / pretrain["implied_mfu"]["fp8"] == pytest.approx(2)
    assert pretrain["gpu_hours"]["bf16"] == pytest.approx(2_664_000 * implied / 0.4)
    context = derived["stages"][1]
    assert context["tokens"] == 1000 * (1920 * 32768 + 480 * 131072)
    assert context["flops_per_token"] > pretrain["flops_per_token"]  # longer contexts, more attention


def test_hardware_profiles_and_lookup(tmp_path):
    profiles = load_profiles()
    assert {"H800", "H100", "H200", "A100"} <= set(profiles)
    assert profiles["H100"].peak("bf16") == H800.peak("bf16") == 989.5e12
    assert H800.peak("fp8") == 1979e12 and H800.usd_per_hour == 2 and H800.power_w == 700
    assert profiles["H200"].memory_bytes == 141e9 and profiles["A100"].peak("bf16") == 312e12
    with pytest.raises(UserError, match="no fp8 peak"):
        profiles["A100"].peak("fp8")
    assert get_hardware("h800") == H800
    with pytest.raises(UserError, match="did you mean.*H800"):
        get_hardware("H8000")

    user = tmp_path / "mine.toml"
    user.write_text('[L40S]\npeak_tflops = { bf16 = 362.05 }\nmemory_gb = 48\npower_w = 350\nusd_per_hour = 1.0\n'
                    'mfu = { bf16 = 0.3 }\n[H800]\npeak_tflops = { bf16 = 1.0 }\nmemory_gb = 1\npower_w = 1\n'
                    'usd_per_hour = 9\n')
    mine = get_hardware("l40s", user)
    assert mine.peak("bf16") == 362.05e12 and mine.training_mfu("bf16") == 0.3 and mine.training_mfu("fp32") == 0.4
    assert get_hardware("H800", user).usd_per_hour == 9
    for text, message in (("[X]\npeak_tflops = {", "not valid TOML"),
                          ("[X]\npeak_tflops = {}\nmemory_gb = 1\npower_w = 1\nusd_per_hour = 1\nwatts = 3\n",
                           "unknown key"),
                          ("[X]\nmemory_gb = 1\n", "missing")):
        user.write_text(text)
        with pytest.raises(UserError, match=message):
            load_profiles(user)
    with pytest.raises(UserError, match="not found"):
        load_profiles(tmp_path / "absent.toml")


def test_cpu_peak_is_measured_quickly_and_cached():
    start = time.perf_counter()
    peak = measure_cpu_peak(seconds=0.4, size=512, refresh=True)
    assert time.perf_counter() - start < 2
    # bf16 may be emulated (an AVX2-only CPU: under 1 GFLOP/s), so only its presence is checked
    assert peak.flops["fp32"] > 1e9 and peak.flops["bf16"] > 0 and peak.threads >= 1 and peak.model_name
    assert measure_cpu_peak() is peak
    cpu = get_hardware("cpu")
    assert cpu.peak_flops == peak.flops and cpu.power_w == 4.0 * peak.threads
    assert cpu.usd_per_hour == pytest.approx(0.05 * peak.threads) and cpu.memory_bytes > 0


# --------------------------------------------------------------------------------------------------
GPU = Hardware("test-gpu", {"bf16": 1e15, "fp32": 1e14}, memory_bytes=80 * 10**9, power_w=500, usd_per_hour=2.0,
               mfu=0.5, generation_mfu=0.25)


def test_pretrain_projection_arithmetic():
    cfg = preset("tiny")
    by_tokens = project([Stage("pretrain", tokens=10**9, seq_len=256)], cfg, GPU).stages[0]
    flops = training_flops_per_token(cfg, 256).total * 10**9
    assert by_tokens.flops == flops
    assert by_tokens.seconds == pytest.approx(flops / (1e15 * 0.5))
    assert by_tokens.usd == pytest.approx(by_tokens.seconds / 3600 * 2.0)
    assert by_tokens.kwh == pytest.approx(by_tokens.seconds / 3600 * 0.5)
    by_steps = project([Stage("sft", steps=1000, batch_size=8, seq_len=256)], cfg, GPU).stages[0]
    assert by_steps.tokens == 1000 * 8 * 256
    on_four = project([Stage("pretrain", tokens=10**9, seq_len=256)], cfg, GPU, devices=4)
    assert on_four.seconds == pytest.approx(by_tokens.seconds / 4)
    assert on_four.gpu_hours == pytest.approx(by_tokens.gpu_hours)
    assert project([Stage("pretrain", tokens=10**9, seq_len=256, precision="fp32")], cfg, GPU).seconds == \
        pytest.approx(flops / (1e14 * 0.5))


def test_grpo_projection_counts_rollouts_and_training_passes():
    cfg = preset("tiny")
    stage = Stage("grpo", prompts=64, prompts_per_step=8, group_size=4, prompt_tokens=20, max_new_tokens=100,
                  mean_new_tokens=60, updates=2, reference=True)
    result = project([stage], cfg, GPU).stages[0]
    sequences, length = 64 * 4, 80
    counts = count_parameters(cfg)
    layers = cfg.num_hidden_layers
    forward, context_sum = 2 * counts.active_matmul * length, length * (length + 1) // 2  # contexts 1…P+M
    generation = sequences * (forward + layers * attention_flops_per_token(cfg, 1, absorbed=True) * context_sum)
    expanded = sequences * (forward + layers * attention_flops_per_token(cfg, 1) * context_sum)
    training = training_flops_per_token(cfg, length, include_mtp=False).total * sequences * length * 2
    assert result.generation_flops.total == generation
    assert result.train_flops.total == training + 2 * expanded  # old-policy and reference forwards
    assert result.generated_tokens == sequences * 60
    assert result.seconds == pytest.approx(training / 5e14 + 2 * expanded / 5e14 + generation / 2.5e14)
    # Memory: the cache holds this device's rollouts at full length, as LatentCache allocates it.
    assert result.memory.kv_cache == 8 * 4 * 120 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 2 * (layers + 1)
    assert result.memory.reference == counts.total_with_mtp * 2


def test_grpo_projection_with_dynamic_sampling_generates_more_and_trains_fewer():
    cfg = preset("tiny")
    base = dict(prompts=64, prompts_per_step=8, group_size=4, prompt_tokens=20, max_new_tokens=100)
    plain = project([Stage("grpo", **base)], cfg, GPU).stages[0]
    dynamic = project([Stage("grpo", sampling_rounds=1.5, trained_fraction=0.75, **base)], cfg, GPU).stages[0]
    # 256 sequences a round: 384 generated over 1.5 rounds, 192 of the step's 256 trained.
    assert dynamic.generation_flops.total == plain.generation_flops.total * 384 // 256
    assert dynamic.train_flops.total == plain.train_flops.total * 192 // 256
    assert dynamic.generated_tokens == 384 * 100 and dynamic.tokens == 192 * 120


def test_grpo_projection_counts_padded_training_and_evaluations():
    cfg = preset("tiny")
    base = dict(prompts=64, prompts_per_step=8, group_size=4, prompt_tokens=20, max_new_tokens=100)
    plain = project([Stage("grpo", **base)], cfg, GPU).stages[0]
    padded = project([Stage("grpo", train_length=240, **base)], cfg, GPU).stages[0]
    assert padded.tokens == 2 * plain.tokens == 256 * 240
    assert padded.train_flops.total == training_flops_per_token(cfg, 240, include_mtp=False).total * 256 * 240
    assert padded.generation_flops == plain.generation_flops  # rollouts are as long as they were
    evaluated = project([Stage("grpo", eval_sequences=64, **base)], cfg, GPU).stages[0]
    assert evaluated.generation_flops.total == plain.generation_flops.total * (256 + 64) // 256
    assert evaluated.train_flops == plain.train_flops


def test_grpo_projection_counts_sft_replay_in_every_update():
    cfg = preset("tiny")
    base = dict(prompts=64, prompts_per_step=8, group_size=4, prompt_tokens=20, max_new_tokens=100, updates=2)
    plain = project([Stage("grpo", **base)], cfg, GPU).stages[0]
    replayed = project([Stage("grpo", replay_sequences=3, replay_length=300, **base)], cfg, GPU).stages[0]
    # 8 rollout batches × 3 traces × 300 positions, in both of the μ = 2 passes.
    assert replayed.tokens == plain.tokens + 8 * 3 * 300 * 2
    assert replayed.train_flops.total == (plain.train_flops.total + training_flops_per_token(
        cfg, 300, include_mtp=False).total * 8 * 3 * 300 * 2)
    assert replayed.generation_flops == plain.generation_flops
    by_default = project([Stage("grpo", replay_sequences=3, **base)], cfg, GPU).stages[0]
    assert by_default.tokens == plain.tokens + 8 * 3 * 120 * 2


def test_memory_fit_warns_before_out_of_memory():
    cfg = preset("deepseek-v3-671b")
    n = count_parameters(cfg).total_with_mtp
    one = memory_fit(cfg, H800, 1, activation_tokens=4096)
    assert (one.parameters, one.gradients, one.optimizer) == (n * 6, n * 4, n * 8)
    assert not one.fits
    # Sharded over 2,048 GPUs the states fit; a whole 4K sequence of activations (~133 GB without
    # recomputation or pipeline stages) would not, 1K tokens do.
    sharded = memory_fit(cfg, H800, 2048, activation_tokens=1024, sharded=True)
    assert sharded.optimizer == n * 8 // 2048 and sharded.fits
    assert sharded.activations == 1024 * activation_bytes_per_token(cfg)
    assert not memory_fit(cfg, H800, 2048, activation_tokens=4096, sharded=True).fits
    projection = project([Stage("pretrain", tokens=10**12, seq_len=4096, batch_size=2048)], cfg, H800, devices=8)
    assert "out of memory" in projection.warnings[0]
    tiny = project([Stage("pretrain", tokens=10**6, seq_len=128, batch_size=4)], preset("tiny"), GPU)
    assert tiny.stages[0].memory.fits and not tiny.warnings


def test_stage_validation():
    with pytest.raises(UserError, match="kind"):
        Stage("dpo", tokens=1)
    with pytest.raises(UserError, match="needs tokens"):
        Stage("pretrain")
    with pytest.raises(UserError, match="grpo needs prompts"):
        Stage("grpo", max_new_tokens=10)
    with pytest.raises(UserError, match="sampling_rounds"):
        Stage("grpo", prompts=4, max_new_tokens=10, sampling_rounds=0.5)
    with pytest.raises(UserError, match="trained_fraction"):
        Stage("grpo", prompts=4, max_new_tokens=10, trained_fraction=1.5)
    with pytest.raises(UserError, match="eval_sequences"):
        Stage("grpo", prompts=4, max_new_tokens=10, eval_sequences=-1)
    with pytest.raises(UserError, match="unknown key.*lr"):
        Stage.from_dict({"kind": "sft", "tokens": 5, "lr": 1e-4})
    with pytest.raises(UserError, match="devices"):
        project([Stage("sft", tokens=5)], preset("tiny"), GPU, devices=0)


# --------------------------------------------------------------------------------------------------
def test_cli_deepseek_v3_table_and_json(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    assert main(["cost", "deepseek-v3"]) == 0
    out = capsys.readouterr().out
    for figure in ("2,664K", "119K", "5K", "2,788K", "$5.576M", "40.7%"):
        assert figure in out
    assert main(["cost", "deepseek-v3", "--json", "--mfu", "0.5"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["gpu_hours"], data["usd"]) == (2_788_000, 5_576_000)
    assert {"gpu_hours", "usd", "kwh", "flops"} <= set(data)
    assert all({"gpu_hours", "usd", "kwh", "flops"} <= set(s) for s in data["stages"])
    assert data["first_principles"]["mfu"] == 0.5


def test_cli_recipe_projection(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\npreset = "tiny"\nnum_hidden_layers = 3\n\n'
                      '[[stage]]\nkind = "pretrain"\nsteps = 100\nbatch_size = 8\nseq_len = 128\n\n'
                      '[[stage]]\nkind = "grpo"\nname = "rl"\nprompts = 64\nprompts_per_step = 8\n'
                      'prompt_tokens = 32\nmax_new_tokens = 64\n')
    assert main(["cost", "--recipe", str(recipe), "--hardware", "H100", "--devices", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in data["stages"]] == ["pretrain", "rl"] and data["devices"] == 2
    assert data["stages"][0]["tokens"] == 100 * 8 * 128
    assert data["gpu_hours"] == pytest.approx(sum(s["gpu_hours"] for s in data["stages"]))
    assert all({"gpu_hours", "usd", "kwh", "flops", "memory"} <= set(s) for s in data["stages"])
    assert main(["cost", "--recipe", str(recipe), "--hardware", "cpu", "--measure-seconds", "0.2"]) == 0
    assert "Projection" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["cost", "deepseek-v3", "--hardware", "H8OO"], "did you mean"),
    (["cost", "--recipe", "/nonexistent/recipe.toml"], "recipe not found"),
    (["cost"], "say what to price"),
    (["cost", "deepseek-v3", "--mfu", "40"], "--mfu must be"),
])
def test_cli_user_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_bad_recipe_toml(tmp_path, capsys):
    recipe = tmp_path / "bad.toml"
    cases = (("[model\n", "not valid TOML"),
             ('[model]\npreset = "huge"\n[[stage]]\nkind = "sft"\ntokens = 1\n', "unknown preset"),
             ("[model]\n", "no [[stage]]"),
             ("[train]\nlr = 1\n", "no [[stage]]"),
             ('[model]\npreset = "tiny"\n[[stage]]\nkind = "sft"\ntokens = 1\n[data]\n', "unknown table"),
             ('[pretrain.train]\nsteps = "many"\n', "steps"))
    for text, message in cases:
        recipe.write_text(text)
        assert main(["cost", "--recipe", str(recipe), "--hardware", "H100"]) == 2
        assert message in capsys.readouterr().err


def test_cli_prices_the_speedrun_recipe(capsys):
    """The run recipe itself, not a planner schema: its stages' own steps, batches, rollouts and evaluations."""
    from frugal_r1.recipe import load_stage
    from frugal_r1.speedrun.run import DEFAULT_RECIPE

    assert main(["cost", "--recipe", str(DEFAULT_RECIPE), "--hardware", "H100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in data["stages"]] == ["pretrain", "sft", "grpo"]
    pretrain, sft, grpo = (load_stage(name, DEFAULT_RECIPE) for name in ("pretrain", "sft", "grpo"))
    assert data["stages"][0]["tokens"] == pretrain.train.steps * pretrain.data.batch_size * pretrain.data.seq_len
    assert data["stages"][1]["tokens"] == sft.train.steps * sft.data.batch_size * sft.data.seq_len
    rl = grpo.rl
    rollouts = grpo.train.steps * rl.prompts_per_step * rl.group_size
    evaluations = rl.eval_n * rl.eval_samples * len(grpo.data.tasks)
    assert data["stages"][2]["generated_tokens"] == (rollouts + evaluations) * rl.max_new_tokens


@pytest.mark.parametrize("cpu_class", ["amx", "native_bf16", "emulated_bf16"])
def test_the_cpu_profile_takes_its_class_calibration(monkeypatch, cpu_class):
    from frugal_r1 import precision
    from frugal_r1.cost.hardware import CPU_CALIBRATION, cpu_profile

    monkeypatch.setattr(precision, "cpu_class", lambda: cpu_class)
    cpu = cpu_profile(seconds=0.2)
    calibration = CPU_CALIBRATION[cpu_class]
    assert cpu.training_mfu("fp32") == calibration.training["fp32"]
    assert cpu.training_mfu("bf16") == calibration.training["bf16"]
    assert cpu.generation_mfu == calibration.generation and cpu.generation_precision == "fp32"
