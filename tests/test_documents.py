"""Per-document attention (model/documents.py) against the block-diagonal causal mask it replaces."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frugal_r1.model import documents, preset
from frugal_r1.model.documents import DocumentSpans
from frugal_r1.model.transformer import DeepSeekV3, document_mask

DOC_IDS = torch.tensor([[0] * 5 + [1] * 9 + [2] * 2, [0] * 16, [0] * 3 + [1] * 10 + [2] * 3])


def test_spans_are_the_runs_of_each_row():
    spans = DocumentSpans.of(DOC_IDS)
    assert spans.spans == (((0, 5), (5, 14), (14, 16)), ((0, 16),), ((0, 3), (3, 13), (13, 16)))
    assert spans.truncated(13).spans == (((0, 5), (5, 13)), ((0, 13),), ((0, 3), (3, 13)))


def test_an_id_in_two_runs_keeps_the_mask():
    assert DocumentSpans.of(torch.tensor([[0, 0, 1, 1, 0, 0]])) is None


def test_attention_and_gradients_equal_the_masked_kernel():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 16, 8, requires_grad=True) for _ in range(3))
    spans_out = DocumentSpans.of(DOC_IDS).attend(q, k, v, scale=0.3)
    grads = torch.autograd.grad(spans_out.square().sum(), (q, k, v))
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(DOC_IDS), scale=0.3)
    torch.testing.assert_close(spans_out, masked)
    for got, want in zip(grads, torch.autograd.grad(masked.square().sum(), (q, k, v))):
        torch.testing.assert_close(got, want)


def test_model_loss_and_gradients_equal_the_mask_path(monkeypatch):
    """Whole model with MTP (whose shorter sequences take truncated spans): spans vs mask."""
    torch.manual_seed(0)
    cfg = preset("tiny", num_nextn_predict_layers=1, vocab_size=256)
    model = DeepSeekV3(cfg)
    ids = torch.randint(3, 256, (3, 17))
    positions = torch.cat([torch.arange(n) for n in (5, 9, 2)])[None].expand(3, -1).clone()
    positions[1], positions[2] = torch.arange(16), torch.cat([torch.arange(n) for n in (3, 10, 3)])

    def loss_and_grads():
        model.zero_grad()
        out = model(ids[:, :-1], ids[:, 1:], position_ids=positions, doc_ids=DOC_IDS)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    spans_loss, spans_grads = loss_and_grads()
    monkeypatch.setattr(documents.DocumentSpans, "of", classmethod(lambda cls, doc_ids: None))
    mask_loss, mask_grads = loss_and_grads()
    torch.testing.assert_close(spans_loss, mask_loss)
    for got, want in zip(spans_grads, mask_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
