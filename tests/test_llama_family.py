"""The Llama-family decoder (generate/llama_family.py) against transformers itself: prefill + decode logits
equal the full forward (left padding, repeated prompts, compaction), HFBackend's completions equal those of
transformers' own cache path, weights are read live, and unsupported models fall back."""

from __future__ import annotations

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from frugal_r1.generate import HFBackend, SamplingParams
from frugal_r1.generate.engine import left_pad
from frugal_r1.generate.hf_backend import HFStepper
from frugal_r1.generate.llama_family import LlamaFamilyStepper, unsupported_reason

VOCAB = 101
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128, eos_token_id=1, pad_token_id=0)


def build(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "qwen2":  # q/k/v biases, GQA, untied head
        model = Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=False))
    elif kind == "llama":  # every bias, one KV head, head_dim ≠ hidden / heads, tied head, llama3 RoPE
        model = LlamaForCausalLM(LlamaConfig(
            **SMALL, num_key_value_heads=1, head_dim=24, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16}))
    elif kind == "mistral":  # no biases, a sliding window longer than any sequence here, yarn RoPE
        model = MistralForCausalLM(MistralConfig(
            **SMALL, num_key_value_heads=2, sliding_window=100,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                             "original_max_position_embeddings": 64}))
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)  # random biases, so a dropped one shows
        model.model.norm.weight.fill_(4.0)  # sharper next-token distributions than the init gives
    return model.eval()


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [5, 6, 7, 8, 9, 10, 11], [14, 15, 16, 17, 18, 19, 20, 21, 22], [12, 13]]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def decoded_logits(stepper, rows, fed, drop_at, kept_after, after_prefill=lambda: None, after_drop=lambda: None):
    """Each row's logits from prefill and then one step per column of `fed`, keeping only `kept_after`
    rows from step `drop_at` on: {row: [logits, …]}."""
    ids, pad = left_pad(rows, 0)
    kept = torch.arange(len(rows))
    with torch.inference_mode():
        got = {r: [row] for r, row in enumerate(stepper.prefill(ids, pad, fed.shape[1]))}
        after_prefill()
        for step in range(fed.shape[1] - 1):
            if step == drop_at:
                kept = torch.tensor(kept_after)
                stepper.keep(kept)
                after_drop()
            positions = torch.tensor([len(rows[r]) + step for r in kept.tolist()])
            for r, row in zip(kept.tolist(), stepper.step(fed[kept, step], positions)):
                got[r].append(row)
    return got


def expected_logits(model, prompt, fed_row):
    return full_logits(model, prompt + fed_row.tolist())[len(prompt) - 1:]


@pytest.mark.parametrize("kind", ["qwen2", "llama", "mistral"])
def test_prefill_and_decode_logits_equal_the_full_forward(kind):
    model = build(kind)
    assert unsupported_reason(model, 64) is None
    fed = torch.randint(2, VOCAB, (len(PROMPTS), 8), generator=torch.Generator().manual_seed(1))
    # Rows 1 and 3 leave the batch (and the cache) at step 3.
    got = decoded_logits(LlamaFamilyStepper(model), PROMPTS, fed, drop_at=3, kept_after=[0, 2, 4])
    for r, prompt in enumerate(PROMPTS):
        mine = torch.stack(got[r])
        assert len(mine) == (8 if r in (0, 2, 4) else 4)
        assert torch.allclose(mine, expected_logits(model, prompt, fed[r])[: len(mine)], atol=1e-4, rtol=0), (kind, r)


def test_grpo_layout_prefills_each_prompt_once_with_the_same_logits(monkeypatch):
    """GRPO's layout: G rows per prompt, prompts in any order (here not sorted), stacked projections; each distinct
    prompt runs through the layers once, and a row dropped mid-way leaves the others' logits unchanged."""
    model = build("qwen2")
    rows = [PROMPTS[3]] * 2 + [PROMPTS[1]] * 2 + [PROMPTS[0]] * 2
    fed = torch.randint(2, VOCAB, (len(rows), 5), generator=torch.Generator().manual_seed(2))
    stepper = LlamaFamilyStepper(model)
    assert all(layer.qkv_stack is not None for layer in stepper.layers)
    prefilled = []
    embed = model.model.embed_tokens.forward
    monkeypatch.setattr(model.model.embed_tokens, "forward", lambda ids: prefilled.append(ids.shape) or embed(ids))

    got = decoded_logits(stepper, rows, fed, drop_at=2, kept_after=[0, 1, 2, 4, 5])
    assert prefilled[0] == (3, max(len(p) for p in rows))  # three distinct prompts, not six rows
    for r, prompt in enumerate(rows):
        mine = torch.stack(got[r])
        assert torch.allclose(mine, expected_logits(model, prompt, fed[r])[: len(mine)], atol=1e-4, rtol=0), r


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_completions_equal_transformers_cache_path(kind):
    model = build(kind, seed=3)
    fast, slow = HFBackend(model), HFBackend(model, fast=False)
    assert isinstance(fast.stepper(32), LlamaFamilyStepper) and isinstance(slow.stepper(32), HFStepper)
    greedy = SamplingParams(temperature=0, max_new_tokens=10, n=2, ignore_eos=True)
    a, b = fast.generate(PROMPTS, greedy), slow.generate(PROMPTS, greedy)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    # Sampling with stop tokens: rows finish at different steps, so the batch is compacted on the way.
    sampled = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16, n=3, seed=5, stop_token_ids=(7, 9))
    a, b = fast.generate(PROMPTS, sampled), slow.generate(PROMPTS, sampled)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert len({len(c.token_ids) for c in a}) > 1
    for x, y in zip(a, b):
        assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)


def test_weights_are_read_at_each_call():
    model = build("qwen2")
    backend = HFBackend(model)
    greedy = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    before = backend.generate(PROMPTS[:2], greedy)
    with torch.no_grad():  # an optimizer step, in place
        model.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
        model.model.layers[0].self_attn.q_proj.weight.mul_(2.0)  # stacked per generation, not kept stale
        model.model.layers[1].mlp.gate_proj.weight.mul_(-1.0)
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    after = backend.generate(PROMPTS[:2], greedy)
    assert [c.token_ids for c in after] == [c.token_ids for c in HFBackend(model, fast=False).generate(PROMPTS[:2], greedy)]
    assert [c.token_ids for c in after] != [c.token_ids for c in before]


def test_unsupported_models_fall_back_to_transformers():
    torch.manual_seed(0)
    window = Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=2, use_sliding_window=True, sliding_window=6,
                                          max_window_layers=0)).eval()
    dynamic = LlamaForCausalLM(LlamaConfig(**SMALL, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                                     "factor": 2.0})).eval()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64, bos_token_id=1,
                                       eos_token_id=1, pad_token_id=0)).eval()
    hooked = build("llama")
    hooked.model.layers[1].mlp.register_forward_hook(lambda module, args, out: out * 0.5)
    assert "sliding window" in unsupported_reason(window, 32)
    assert unsupported_reason(window, 6) is None  # the window never binds
    assert "dynamic" in unsupported_reason(dynamic, 32)
    assert "GPT2LMHeadModel" in unsupported_reason(gpt2, 32)
    assert "hooks" in unsupported_reason(hooked, 32)
    greedy = SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True)
    for model in (window, dynamic, gpt2, hooked):
        backend = HFBackend(model)
        assert isinstance(backend.stepper(32), HFStepper)
        for completion, prompt in zip(backend.generate(PROMPTS[:2], greedy), PROMPTS[:2]):
            ids = list(prompt)
            for _ in range(8):  # the hook, window or dynamic RoPE is honoured: greedy on the full forward
                ids.append(int(full_logits(model, ids)[-1].argmax()))
            assert completion.token_ids == ids[len(prompt):]
