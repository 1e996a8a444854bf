"""Attention over packed documents, computed one document at a time.

A packed row holds several documents end to end; query i may attend key j only when both lie in the same
document and j <= i:

    out_i = softmax_{j ∈ doc(i), j ≤ i}(scale · q_i·k_j) v_j

The same result comes from fused attention with the block-diagonal causal mask [B, 1, T, T], but a CPU
kernel given a mask computes every one of the T² scores and then discards most of them (it can skip
blocks only for plain `is_causal`). With documents of ~150 tokens in 512-token rows, that was a third
of a pretraining step. `DocumentSpans` instead calls causal attention once per document, on its slice
of the row: Σ L_d² / 2 scores instead of T².

It needs each document to be one contiguous run of its id within the row (how the Packer lays rows
out, padding included as a run of its own); `DocumentSpans.of` returns None otherwise, and the caller
keeps the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DocumentSpans:
    """(start, end) of every document in every row of a [B, T] batch."""

    spans: tuple[tuple[tuple[int, int], ...], ...]
    length: int

    @classmethod
    def of(cls, doc_ids: torch.Tensor) -> "DocumentSpans | None":
        """The spans of doc_ids [B, T], or None when some id is split into several runs within a row."""
        rows = []
        for row in doc_ids.cpu():
            ids, counts = torch.unique_consecutive(row, return_counts=True)
            if len(ids) != len(torch.unique(ids)):
                return None
            ends = counts.cumsum(0).tolist()
            rows.append(tuple(zip([0, *ends[:-1]], ends)))
        return cls(tuple(rows), doc_ids.shape[1])

    def truncated(self, keep: int) -> "DocumentSpans":
        """The spans of the first `keep` positions (MTP's shorter sequences)."""
        rows = tuple(tuple((s, min(e, keep)) for s, e in row if s < keep) for row in self.spans)
        return DocumentSpans(rows, keep)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q, k, v [B, H, T, D] -> [B, H, T, D_v], attention inside each document."""
        # unbind and split, not indexing: their backward concatenates the pieces' gradients, where a slice's
        # backward writes each piece into a zero tensor of the full size and then adds those up.
        rows = []
        for row, qb, kb, vb in zip(self.spans, q.unbind(0), k.unbind(0), v.unbind(0)):
            lengths = [e - s for s, e in row]
            parts = [F.scaled_dot_product_attention(qd[None], kd[None], vd[None], is_causal=True, scale=scale)[0]
                     for qd, kd, vd in zip(qb.split(lengths, 1), kb.split(lengths, 1), vb.split(lengths, 1))]
            rows.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return torch.stack(rows)

__all__ = ["DocumentSpans"]
