"""The DeepSeek-V3 model against transformers' DeepseekV3ForCausalLM, and its own invariants."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

from frugal_r1.model.cache import LatentCache
from frugal_r1.model.config import ModelConfig, preset
from frugal_r1.model.hf import CheckpointError
from frugal_r1.model.moe import MoE
from frugal_r1.model.transformer import DeepSeekV3

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32,
        "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 1.0}

CONFIGS = {
    "plain-q": dict(q_lora_rank=None, n_group=1, topk_group=1),
    "q-lora-yarn-groups": dict(q_lora_rank=24, rope_scaling=YARN, max_position_embeddings=256, n_routed_experts=8,
                               n_group=4, topk_group=2, num_experts_per_tok=3, num_hidden_layers=4,
                               first_k_dense_replace=2, norm_topk_prob=False, routed_scaling_factor=2.5),
    "tied-two-shared": dict(tie_word_embeddings=True, n_shared_experts=2, norm_topk_prob=True,
                            routed_scaling_factor=1.5, num_hidden_layers=3),
    "all-moe-no-shared": dict(first_k_dense_replace=0, n_shared_experts=0, n_group=2, topk_group=1),
}


def small_config(**overrides) -> ModelConfig:
    return preset("tiny", vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                  num_attention_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                  **overrides)


def random_model(cfg: ModelConfig) -> DeepSeekV3:
    torch.manual_seed(0)
    model = DeepSeekV3(cfg).eval()
    with torch.no_grad():
        for moe in model.moe_layers():
            moe.gate.e_score_correction_bias.normal_(0, 0.05)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # non-trivial norms catch a missed RMSNorm
    return model


def load_hf(path) -> DeepseekV3ForCausalLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_ours_to_transformers_logits_match(name, tmp_path):
    model = random_model(small_config(**CONFIGS[name]))
    model.save_pretrained(tmp_path)
    hf = load_hf(tmp_path)
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_to_ours_logits_match(name, tmp_path):
    cfg = small_config(**CONFIGS[name])
    hf_cfg = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type", "rope_scaling")}
    torch.manual_seed(1)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**hf_cfg)).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
                layer.mlp.experts.gate_up_proj.normal_(0, 0.02)
                layer.mlp.experts.down_proj.normal_(0, 0.02)
    hf.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no MTP weights"):
        ours = DeepSeekV3.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() < 1e-4

    # transformers' fused in-memory names (experts.gate_up_proj / experts.down_proj) load too.
    fused = {k: v.contiguous() for k, v in hf.state_dict().items()
             if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    assert any(k.endswith("experts.gate_up_proj") for k in fused)
    save_file(fused, str(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning, match="no MTP weights"):
        ours = DeepSeekV3.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() < 1e-4


def test_save_load_round_trip_keeps_mtp_and_bias(tmp_path):
    model = random_model(small_config(num_nextn_predict_layers=2))
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "model.layers.2.eh_proj.weight" in saved and "model.layers.3.shared_head.norm.weight" in saved
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in saved
    loaded = DeepSeekV3.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "deepseek_v3"


def test_checkpoint_mismatches_are_listed(tmp_path):
    model = random_model(small_config())
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    broken = dict(tensors)
    del broken["model.layers.0.self_attn.o_proj.weight"]
    broken["model.layers.0.extra.weight"] = torch.zeros(2)
    broken["model.norm.weight"] = torch.ones(3)
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        DeepSeekV3.from_pretrained(tmp_path)
    message = str(error.value)
    assert "missing: layers.0.self_attn.o_proj.weight" in message
    assert "unexpected: layers.0.extra.weight" in message
    assert "mis-shaped: norm.weight (3,) != (64,)" in message

    partial = {k: v for k, v in tensors.items() if "experts.3." not in k}
    save_file(partial, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="experts.3.gate_proj"):
        DeepSeekV3.from_pretrained(tmp_path)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        DeepSeekV3.from_pretrained(tmp_path)


@pytest.mark.parametrize("overrides, field", [
    (dict(topk_group=3, n_group=2), "topk_group"),
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(n_routed_experts=6, n_group=4), "n_routed_experts"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),
    (dict(first_k_dense_replace=5), "first_k_dense_replace"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(q_lora_rank=-1), "q_lora_rank"),
    (dict(rope_scaling={"type": "linear", "factor": 2}), "rope_scaling"),
    (dict(eos_token_id=5000), "eos_token_id"),
])
def test_inconsistent_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        preset("tiny", **overrides)


def test_hf_config_round_trip():
    cfg = small_config(**CONFIGS["q-lora-yarn-groups"])
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    legacy = {k: v for k, v in cfg.to_hf_dict().items() if k != "rope_parameters"}
    legacy["rope_theta"] = cfg.rope_theta
    assert ModelConfig.from_hf_dict(legacy) == cfg
    with pytest.raises(ValueError, match="unknown model config key"):
        ModelConfig.from_dict({"hidden_sise": 3})


def test_cache_prefill_then_decode_matches_full_forward():
    cfg = small_config(**CONFIGS["q-lora-yarn-groups"])
    model = random_model(cfg)
    ids = torch.randint(0, 256, (3, 30))
    with torch.no_grad():
        full = model(ids).logits
        cache = LatentCache(cfg, batch_size=3, max_len=32)
        steps = [model(ids[:, :11], cache=cache).logits]
        steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(11, 30)]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-4
    assert cache.bytes_per_token_per_layer == (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4
    bf16 = LatentCache(cfg, batch_size=1, max_len=4, dtype=torch.bfloat16)
    assert bf16.bytes_per_token_per_layer == (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 2
    assert cache.ckv.shape[-1] == cfg.kv_lora_rank and cache.kpe.shape[-1] == cfg.qk_rope_head_dim


def test_left_padded_cache_matches_unpadded_row():
    cfg = small_config()
    model = random_model(cfg)
    ids = torch.randint(3, 256, (1, 12))
    pad = 5
    padded = torch.cat([torch.full((1, pad), cfg.pad_token_id), ids], dim=1)
    with torch.no_grad():
        alone = model(ids).logits[:, -1]
        cache = LatentCache(cfg, batch_size=1, max_len=32)
        cache.valid[:, :pad] = False
        positions = (torch.arange(pad + 12) - pad).clamp(min=0)[None]
        batched = model(padded, position_ids=positions, cache=cache).logits[:, -1]
    assert (alone - batched).abs().max().item() < 1e-4


def test_document_mask_isolates_packed_documents():
    cfg = small_config()
    model = random_model(cfg)
    a, b = torch.randint(0, 256, (1, 9)), torch.randint(0, 256, (1, 7))
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 9 + [1] * 7])
    positions = torch.tensor([list(range(9)) + list(range(7))])
    with torch.no_grad():
        together = model(packed, position_ids=positions, doc_ids=doc_ids).logits
        apart = torch.cat([model(a).logits, model(b).logits], dim=1)
    assert (together - apart).abs().max().item() < 1e-4


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: the definition, with no sorting or grouping."""
    flat = x.reshape(-1, x.shape[-1])
    weights, indices, _ = moe.gate(flat)
    out = torch.zeros_like(flat)
    inter = moe.experts.down_proj.shape[-1]
    for t in range(flat.shape[0]):
        for w, e in zip(weights[t], indices[t]):
            gate, up = moe.experts.gate_up_proj[e, :inter], moe.experts.gate_up_proj[e, inter:]
            h = torch.nn.functional.silu(gate @ flat[t]) * (up @ flat[t])
            out[t] += w * (moe.experts.down_proj[e] @ h)
    return out.view_as(x) + moe.shared_experts(x)


def test_moe_grouped_matmul_equals_definition():
    cfg = small_config(**CONFIGS["q-lora-yarn-groups"])
    model = random_model(cfg)
    moe = model.moe_layers()[0]
    x = torch.randn(2, 7, cfg.hidden_size)
    with torch.no_grad():
        assert (moe(x) - reference_moe(moe, x)).abs().max().item() < 1e-5


def test_bucketed_slots_by_hand():
    from frugal_r1.model.moe import _bucketed_slots

    slots, padded = _bucketed_slots(torch.tensor([3, 0, 5]), 4)
    assert padded.tolist() == [4, 0, 8]
    assert slots.tolist() == [0, 1, 2, 4, 5, 6, 7, 8]  # expert 2's rows start at its padded offset, 4


def test_bf16_experts_padded_to_buckets_match_unpadded(monkeypatch):
    """On the CPU in bf16 each expert's rows are padded to CPU_BUCKET_ROWS (oneDNN reuses its kernels); the
    padding rows must change neither the output nor any gradient."""
    from frugal_r1.model import cpu_kernels

    cfg = small_config(**CONFIGS["q-lora-yarn-groups"])
    moe = random_model(cfg).moe_layers()[0]
    x = torch.randn(3, 11, cfg.hidden_size)
    results = []
    for bucket in (1, 16):
        monkeypatch.setattr(cpu_kernels, "CPU_BUCKET_ROWS", bucket)
        moe.zero_grad()
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = moe(xi)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.float(), xi.grad, moe.experts.gate_up_proj.grad.clone(), moe.experts.down_proj.grad.clone()))
    for unpadded, padded in zip(*results):
        assert torch.allclose(unpadded, padded, rtol=1e-2, atol=1e-3)
    with torch.no_grad():
        assert (results[1][0] - reference_moe(moe, x)).abs().max().item() < 0.05


def test_group_limited_routing_only_picks_from_kept_groups():
    cfg = small_config(n_routed_experts=8, n_group=4, topk_group=1, num_experts_per_tok=2)
    gate = random_model(cfg).moe_layers()[0].gate
    with torch.no_grad():
        gate.e_score_correction_bias.copy_(torch.tensor([0, 0, 0, 0, 5.0, 5.0, 0, 0]))
        weights, indices, scores = gate(torch.randn(50, cfg.hidden_size))
    assert set(indices.flatten().tolist()) == {4, 5}  # the bias pulls every token to group 2
    # weights use the unbiased scores, normalised over the chosen
    expected = scores.gather(1, indices)
    assert torch.allclose(weights, expected / expected.sum(-1, keepdim=True) * cfg.routed_scaling_factor)


def test_bias_update_moves_against_load_and_balance_loss_by_hand():
    cfg = small_config(n_routed_experts=4, n_group=1, topk_group=1, num_experts_per_tok=1, aux_loss_alpha=0.5)
    moe = random_model(cfg).moe_layers()[0]
    before = moe.gate.e_score_correction_bias.clone()
    moe.expert_load.copy_(torch.tensor([10.0, 0.0, 2.0, 4.0]))  # mean 4
    moe.update_bias(0.01)
    step = moe.gate.e_score_correction_bias - before
    assert torch.allclose(step, torch.tensor([-0.01, 0.01, 0.01, 0.0]), atol=1e-7)
    assert moe.expert_load.sum() == 0

    # One sequence of 2 tokens, E = 4, K = 1: f_i = 4/(1·2)·count_i, P_i = mean_t s_i,t/Σ_j s_j,t
    scores = torch.tensor([[[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1]]])
    indices = torch.tensor([[[0], [1]]])
    f = torch.tensor([2.0, 2.0, 0.0, 0.0])
    p = torch.tensor([0.3, 0.4, 0.2, 0.1])
    assert torch.allclose(moe._balance_loss(scores, indices), 0.5 * (f * p).sum())


def test_training_counts_load_and_mtp_loss_by_hand():
    cfg = small_config(num_nextn_predict_layers=1, mtp_loss_weight=0.25)
    model = random_model(cfg).train()
    ids = torch.randint(0, 256, (2, 16))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    out = model(ids, labels)
    moe = model.moe_layers()[0]
    assert moe.expert_load.sum().item() == 2 * 16 * cfg.num_experts_per_tok
    # MTP depth 1 predicts t_{i+2} from h_i and Emb(t_{i+1})
    cos, sin = model.rotary(torch.arange(15).expand(2, 15))
    h = model.mtp[0](out.hidden[:, :15], model.embed_tokens(ids[:, 1:]), cos, sin)
    logits = model.lm_head(model.mtp[0].shared_head.norm(h))
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.mtp_loss, manual, atol=1e-5)
    assert torch.allclose(out.loss, out.lm_loss + 0.25 * out.mtp_loss + out.aux_loss, atol=1e-6)
    out.loss.backward()
    assert model.mtp[0].eh_proj.weight.grad.abs().sum() > 0
    assert model.moe_layers()[0].gate.weight.grad.abs().sum() > 0


def test_chunked_cross_entropy_equals_whole(monkeypatch):
    from frugal_r1.model import transformer

    logits = torch.randn(3, 7, 256, requires_grad=True)
    labels = torch.randint(0, 256, (3, 7))
    labels[0, :4] = -100
    whole = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), labels.reshape(-1), ignore_index=-100)
    (whole_grad,) = torch.autograd.grad(whole, logits)
    monkeypatch.setattr(transformer, "CE_CHUNK_ELEMENTS", 4 * 256)  # 4 rows a chunk: 6 chunks, the last short
    chunked = transformer._cross_entropy(logits, labels)
    (chunked_grad,) = torch.autograd.grad(chunked, logits)
    assert torch.allclose(chunked, whole, atol=1e-6) and torch.allclose(chunked_grad, whole_grad, atol=1e-7)
    summed = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), labels.reshape(-1), reduction="sum",
                                               ignore_index=-100)
    assert torch.allclose(transformer._cross_entropy(logits, labels, denominator=40.0), summed / 40, atol=1e-6)
    assert transformer._cross_entropy(logits, torch.full_like(labels, -100)).item() == 0.0


def test_bf16_causal_attention_matches_fp32_reference():
    from frugal_r1.model.cpu_kernels import CausalAttentionBF16

    q, k, v = (torch.randn(2, 3, 40, 16).bfloat16() for _ in range(3))
    grad = torch.randn(2, 3, 40, 16).bfloat16()
    ref_inputs = [t.float().requires_grad_() for t in (q, k, v)]
    ref = torch.nn.functional.scaled_dot_product_attention(*ref_inputs, is_causal=True, scale=0.3)
    ref.backward(grad.float())
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = CausalAttentionBF16.apply(*inputs, 0.3)
    out.backward(grad)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=2e-2)
    for mine, theirs in zip(inputs, ref_inputs):
        assert mine.grad.dtype == torch.bfloat16
        assert torch.allclose(mine.grad.float(), theirs.grad, atol=5e-2, rtol=2e-2)


def test_bf16_autocast_forward_backward_is_close_to_fp32():
    cfg = small_config()
    model = random_model(cfg).train()
    ids = torch.randint(0, 256, (2, 24))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    fp32 = model(ids, labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(ids, labels).loss
    bf16.backward()
    assert abs(fp32.item() - bf16.item()) < 0.05
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_preset_sizes():
    tiny = DeepSeekV3(preset("tiny")).num_parameters()
    small = DeepSeekV3(preset("small")).num_parameters()
    assert 1e6 <= tiny <= 3e6
    assert 10e6 <= small <= 30e6
    with torch.device("meta"):
        big = DeepSeekV3(preset("deepseek-v3-671b"))
    main = big.num_parameters() - sum(p.numel() for p in big.mtp.parameters())
    assert abs(main - 671e9) / 671e9 < 0.01
