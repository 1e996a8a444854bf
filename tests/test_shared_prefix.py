"""The shared-prefix training forward (train/shared_prefix.py) against transformers' full forward: log-probs,
entropies and gradients equal on the asked-for positions, zeros elsewhere; the policy falls back to the
full forward for a wrapped module and agrees."""

from __future__ import annotations

import pytest
import torch

from frugal_r1.train.policy import Policy
from frugal_r1.train.shared_prefix import can_run, computed_tokens, shared_prefix_logprobs
from test_llama_family import VOCAB, build

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [5, 6, 7, 8, 9], [12, 13, 14, 15, 16, 17, 18], [10, 11], [5, 6, 7, 8, 9]]
LENGTHS = [4, 9, 1, 3, 6, 7]  # completion tokens per row


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch():
    """Right-padded prompt + completion ids, prompt lengths, lengths, and the [B, T-1] span each covers."""
    g = torch.Generator().manual_seed(2)
    rows = [p + torch.randint(2, VOCAB, (n,), generator=g).tolist() for p, n in zip(PROMPTS, LENGTHS)]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    span = torch.zeros(len(rows), width - 1)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        span[i, len(PROMPTS[i]) - 1: len(row) - 1] = 1
    return ids, torch.tensor([len(p) for p in PROMPTS]), torch.tensor([len(r) for r in rows]), span


def reference(model, ids):
    logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1).detach()


def grads(model):
    out = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("kind", ["qwen2", "llama", "mistral"])
def test_logprobs_entropies_and_gradients_equal_the_full_forward(kind):
    model = build(kind).train()
    ids, prompt_lengths, lengths, span = batch()
    weights = torch.randn(span.shape, generator=torch.Generator().manual_seed(3)) * span
    expected, expected_entropy = reference(model, ids)
    (expected * weights).sum().backward()
    expected_grads = grads(model)

    assert can_run(model, ids.shape[1])
    got, entropy = shared_prefix_logprobs(model, ids, prompt_lengths, lengths, with_entropy=True)
    (got * weights).sum().backward()
    got_grads = grads(model)
    assert torch.allclose(got * span, expected * span, atol=1e-5, rtol=0)
    assert torch.all(got[span == 0] == 0) and torch.all(entropy[span == 0] == 0)
    assert torch.allclose(entropy * span, expected_entropy * span, atol=1e-4, rtol=0)
    for name, grad in expected_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-5, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in got_grads.values())


def test_without_spans_every_position_is_computed():
    model = build("qwen2")
    ids = batch()[0]
    with torch.no_grad():
        got = shared_prefix_logprobs(model, ids)[0]
        assert torch.allclose(got, reference(model, ids)[0], atol=1e-5, rtol=0)


class Wrapper(torch.nn.Module):
    """Stands in for DistributedDataParallel: a module whose forward must run (its hooks sync gradients)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_policy_uses_the_shared_forward_and_falls_back_for_wrapped_modules():
    model = build("llama").train()
    policy = Policy(model, None, "hf")
    ids, prompt_lengths, lengths, span = batch()
    fast, fast_entropy = policy.token_logprobs(model, ids, True, prompt_lengths, lengths)
    fast.sum().backward()
    fast_grads = grads(model)
    wrapped = Wrapper(model)
    assert not can_run(wrapped, ids.shape[1])
    full, full_entropy = policy.token_logprobs(wrapped, ids, True, prompt_lengths, lengths)
    full.sum().backward()
    full_grads = grads(model)
    assert torch.all(full[span == 0] == 0)
    # The FLOPs ledger counts what ran: the 3 distinct prompts and the 6 completions, or every position.
    assert computed_tokens(ids, prompt_lengths, lengths) == 5 + 2 + 7 + sum(LENGTHS)
    assert policy.forward_tokens(model, ids, prompt_lengths, lengths) == 5 + 2 + 7 + sum(LENGTHS)
    assert policy.forward_tokens(wrapped, ids, prompt_lengths, lengths) == ids.numel()
    assert torch.allclose(fast, full, atol=1e-5, rtol=0) and torch.allclose(fast_entropy, full_entropy, atol=1e-4)
    for name, grad in full_grads.items():
        assert torch.allclose(fast_grads[name], grad, atol=1e-5, rtol=1e-4), name


def test_bf16_autocast_stays_close():
    model = build("qwen2")
    ids, prompt_lengths, lengths, span = batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = shared_prefix_logprobs(model, ids, prompt_lengths, lengths)[0]
    assert got.dtype == torch.float32
    assert torch.allclose(got * span, reference(model, ids)[0].detach() * span, atol=0.1, rtol=0)


def test_bf16_on_the_cpu_runs_repeating_row_counts_with_fp32_attention(monkeypatch):
    """oneDNN builds a bf16 kernel per new shape (model/cpu_kernels.py): every projection sees a row count that
    is a multiple of CPU_BUCKET_ROWS, attention runs in fp32, and log-probs and gradients stay close to fp32's."""
    from frugal_r1.model import cpu_kernels

    model = build("qwen2").train()
    ids, prompt_lengths, lengths, span = batch()
    weights = torch.randn(span.shape, generator=torch.Generator().manual_seed(3)) * span
    expected = reference(model, ids)[0]
    (expected * weights).sum().backward()
    expected_grads = grads(model)

    rows, attention_dtypes = [], []
    linear, attention = torch.nn.functional.linear, torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, *a: rows.append(x.shape[0]) or linear(x, *a))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **k: attention_dtypes.append(q.dtype) or attention(q, *a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = shared_prefix_logprobs(model, ids, prompt_lengths, lengths)[0]
    (got * weights).sum().backward()
    got_grads = grads(model)

    assert computed_tokens(ids, prompt_lengths, lengths) % cpu_kernels.CPU_BUCKET_ROWS != 0  # padding is exercised
    assert rows and all(r % cpu_kernels.CPU_BUCKET_ROWS == 0 for r in rows), rows
    assert attention_dtypes and set(attention_dtypes) == {torch.float32}
    assert torch.all(got[span == 0] == 0)
    assert torch.allclose(got * span, expected.detach() * span, atol=0.1, rtol=0)
    for name, grad in expected_grads.items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (got_grads[name] - grad).abs().max() / scale < 0.1, name
