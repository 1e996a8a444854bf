"""The analytical counters against transformers' DeepseekV3 and against DeepSeek-V3's published figures."""

from __future__ import annotations

import pytest
import torch

from frugal_r1.model.config import preset
from frugal_r1.model.flops import (attention_flops_per_token, count_parameters, forward_flops_per_token,
                                   training_flops_per_token)

SMALL_VARIANTS = {
    "tiny": {},
    "q_lora+tied+2 shared+all MoE": dict(q_lora_rank=24, tie_word_embeddings=True, n_shared_experts=2,
                                         first_k_dense_replace=0),
    "3 layers, 2 dense, no shared": dict(num_hidden_layers=3, first_k_dense_replace=2, n_shared_experts=0),
    "all dense, q_lora": dict(first_k_dense_replace=2, q_lora_rank=16, qk_nope_head_dim=0),
    "small": None,
}


def _config(name: str):
    return preset("small") if SMALL_VARIANTS[name] is None else preset("tiny", **SMALL_VARIANTS[name])


def _hf_model(cfg, device: str = "meta"):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    hf = DeepseekV3Config(**{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")})
    with torch.device(device):
        return DeepseekV3ForCausalLM(hf)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("name", list(SMALL_VARIANTS))
def test_total_matches_transformers_numel(name):
    cfg = _config(name)
    model = _hf_model(cfg)
    counts = count_parameters(cfg)
    assert counts.total == sum(p.numel() for p in model.parameters())  # parameters() dedupes a tied head
    biases = [b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
    assert counts.buffers - cfg.num_nextn_predict_layers * cfg.n_routed_experts == sum(b.numel() for b in biases)
    parts = (counts.embedding + counts.lm_head + counts.attention + counts.dense_mlp + counts.routed_experts
             + counts.shared_experts + counts.gate + counts.norms)
    assert parts == counts.total


@pytest.mark.parametrize("name", ["tiny", "all dense, q_lora"])
def test_forward_matmul_flops_match_torch_flop_counter(name):
    """2 × active matmul parameters per token, and the attention term at full (uncausal) context, are what
    torch counts for transformers' model. Its grouped-expert kernel may be invisible to the counter, so the
    routed experts are allowed to be the only difference."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = _config(name)
    torch.manual_seed(0)
    model = _hf_model(cfg, "cpu").eval()
    batch, seq = 2, 12
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randint(3, cfg.vocab_size, (batch, seq)))
    tokens = batch * seq
    # The counter sees the full T×T score matrix: every token at context `seq`.
    predicted = forward_flops_per_token(cfg, seq).total * tokens
    routed = 2 * cfg.num_experts_per_tok * 3 * cfg.hidden_size * cfg.moe_intermediate_size * cfg.n_moe_layers
    assert counter.get_total_flops() in (predicted, predicted - routed * tokens)


def test_flop_formulas():
    cfg = preset("tiny", q_lora_rank=24)
    counts = count_parameters(cfg)
    heads, layers = cfg.num_attention_heads, cfg.num_hidden_layers
    for seq_len in (1, 64, 1000):
        flops = training_flops_per_token(cfg, seq_len, include_mtp=False)
        assert flops.matmul == 6 * counts.active_matmul
        # 3 × 2·H·(dqk+dv) × (T+1)/2 per layer: the causal average context.
        assert flops.attention == layers * 3 * heads * (cfg.qk_head_dim + cfg.v_head_dim) * (seq_len + 1)
        assert flops.mtp_matmul == flops.mtp_attention == 0
        with_mtp = training_flops_per_token(cfg, seq_len)
        assert with_mtp.mtp_matmul == 6 * counts.mtp_active_matmul
        assert with_mtp.mtp_attention == flops.attention // layers
    forward = forward_flops_per_token(cfg, 100)
    assert forward.matmul == 2 * counts.active_matmul
    assert forward.attention == layers * 2 * heads * (cfg.qk_head_dim + cfg.v_head_dim) * 100
    absorbed = forward_flops_per_token(cfg, 100, absorbed=True)
    assert absorbed.attention == layers * attention_flops_per_token(cfg, 100, absorbed=True)
    assert attention_flops_per_token(cfg, 1, absorbed=True) == 2 * heads * (2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    # Tying the head removes a parameter, not a matmul.
    tied = count_parameters(cfg.replace(tie_word_embeddings=True))
    assert tied.total == counts.total - counts.lm_head and tied.active_matmul == counts.active_matmul


def test_deepseek_v3_671b_by_hand():
    cfg = preset("deepseek-v3-671b")
    d, heads, vocab = 7168, 128, 129280
    q_lora, kv_lora, nope, rope, v = 1536, 512, 128, 64, 128
    attention = (q_lora * d + q_lora + heads * (nope + rope) * q_lora       # q_a_proj, q_a_layernorm, q_b_proj
                 + (kv_lora + rope) * d + kv_lora                           # kv_a_proj_with_mqa, kv_a_layernorm
                 + heads * (nope + v) * kv_lora                             # kv_b_proj
                 + d * heads * v)                                           # o_proj
    assert attention == 187_107_328
    dense_mlp = 3 * d * 18432                                                # 396,361,728
    expert = 3 * d * 2048                                                    # 44,040,192
    moe = 256 * expert + 1 * expert + 256 * d                                # routed, shared, gate
    norms = 2 * d
    dense_layer, moe_layer = attention + dense_mlp + norms, attention + moe + norms
    assert (dense_layer, moe_layer) == (583_483_392, 11_507_286_016)
    total = 3 * dense_layer + 58 * moe_layer + vocab * d + d + vocab * d    # embed, final norm, lm_head
    assert total == 671_026_404_352

    active_moe_layer = attention + (8 + 1) * expert + 256 * d + norms
    active = 3 * dense_layer + 58 * active_moe_layer + 2 * vocab * d + d
    assert active == 37_552_282_624
    layer_norm_weights = 61 * (norms + q_lora + kv_lora) + d
    active_matmul = active - vocab * d - layer_norm_weights                 # no lookup, no norms
    assert active_matmul == 36_624_596_992

    mtp = 2 * d + 2 * d * d + moe_layer + d                                  # enorm, hnorm, eh_proj, block, head norm
    assert mtp == 11_610_067_968

    counts = count_parameters(cfg)
    assert (counts.total, counts.active, counts.active_matmul, counts.mtp) == (total, active, active_matmul, mtp)
    assert abs(counts.total / 671e9 - 1) < 0.01
    assert abs(counts.active / 37e9 - 1) < 0.03
    # Hugging Face's 685B counts the checkpoint's MTP copies of the embedding and the head.
    assert abs((counts.total_with_mtp + 2 * vocab * d) / 685e9 - 1) < 0.005

    tokens = 14_800_000_000_000
    assert abs(6 * counts.active * tokens / (6 * 37e9 * tokens) - 1) < 0.03
    flops = training_flops_per_token(cfg, 4096)
    assert flops.matmul == 6 * active_matmul
    assert flops.attention == 61 * 3 * heads * (nope + rope + v) * 4097
    assert abs(flops.matmul * tokens / (6 * 37e9 * tokens) - 1) < 0.03
