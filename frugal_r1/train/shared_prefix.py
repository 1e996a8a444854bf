"""Per-token log-probs of prompt + completion batches for Llama-family transformers models, each distinct
prompt computed once.

GRPO scores G completions of one prompt; a plain forward over the right-padded [B, T] batch computes every
prompt G times, forward and backward, though its hidden states are the same in every copy. Here the batch
is split into
- the distinct prompts [U, P] (right-padded, causal attention), and
- each row's completion [B, C] (from its prompt's last token's successor to its length), whose queries
  attend to their prompt's keys (up to its length) and causally to their own,
and the linear layers run on both at once. Autograd sums each shared prompt's gradient over its rows, so
log-probs and gradients equal the plain forward's (up to float rounding); only the positions asked for
are computed. The layer equations are `llama_family.Layer`'s, on the HF module's own parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from frugal_r1.generate.llama_family import head_logits, layers_of, rope_table, unsupported_reason


def can_run(model: nn.Module, length: int) -> bool:
    """Whether `model` itself (not a DDP wrapper, whose hooks a functional forward would skip) is supported."""
    return unsupported_reason(model, length) is None


def shared_prefix_logprobs(model: nn.Module, input_ids: torch.Tensor, prompt_lengths: torch.Tensor | None = None,
                           lengths: torch.Tensor | None = None,
                           with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(x_{t+1} | x_≤t) [B, T-1] for t from each row's last prompt token (prompt_lengths - 1, default 0)
    to its last token (lengths - 1, default T - 1); other positions are 0. Entropies likewise."""
    batch, width = input_ids.shape
    device = input_ids.device
    plen, ends, group, starts = _layout(input_ids, prompt_lengths, lengths)
    distinct, prompt_width = len(starts), int(plen.max())
    completion_width = int((ends - plen).max())
    logprobs = input_ids.new_zeros(batch, width - 1, dtype=torch.float32)
    entropy = torch.zeros_like(logprobs) if with_entropy else None
    if completion_width <= 0:
        return logprobs, entropy

    # Token ids and positions: the distinct prompts [U, P], then every row's completion [B, C].
    prompt_ids = _take(input_ids[starts], torch.arange(prompt_width)[None].expand(distinct, -1), plen[starts])
    offsets = plen[:, None] + torch.arange(completion_width)[None]  # [B, C] positions of the completion tokens
    completion_ids = _take(input_ids, offsets, ends)
    positions = torch.cat([torch.arange(prompt_width).repeat(distinct), offsets.flatten()]).to(device)
    layers = layers_of(model)
    dtype = model.model.embed_tokens.weight.dtype
    cos, sin = rope_table(model, int((plen + completion_width).max()), device, dtype)
    cos, sin = cos[positions][:, None], sin[positions][:, None]
    # A completion query sees its prompt's real tokens and its own completion causally.
    sees_prompt = torch.arange(prompt_width)[None, :] < plen[:, None]  # [B, P]
    causal = torch.ones(completion_width, completion_width, dtype=torch.bool).tril()
    sees = torch.cat([sees_prompt[:, None, :].expand(-1, completion_width, -1), causal[None].expand(batch, -1, -1)],
                     dim=2)[:, None].to(device)
    mask = torch.zeros(sees.shape, dtype=dtype, device=device).masked_fill_(~sees, float("-inf"))  # once, not per layer
    rows = group.to(device)
    split = distinct * prompt_width

    x = model.model.embed_tokens(torch.cat([prompt_ids.flatten(), completion_ids.flatten()]).to(device))
    for layer in layers:
        q, k, v = layer.qkv(x, cos, sin)  # [N, heads, D]
        qp, kp, vp = (t[:split].unflatten(0, (distinct, prompt_width)).transpose(1, 2) for t in (q, k, v))
        qc, kc, vc = (t[split:].unflatten(0, (batch, completion_width)).transpose(1, 2) for t in (q, k, v))
        scale = layer.scaling
        out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=True)
        out_c = F.scaled_dot_product_attention(qc, torch.cat([kp[rows], kc], dim=2), torch.cat([vp[rows], vc], dim=2),
                                               attn_mask=mask, scale=scale, enable_gqa=True)
        attended = torch.cat([out_p.transpose(1, 2).flatten(0, 1), out_c.transpose(1, 2).flatten(0, 1)])
        x = layer.finish(x, attended.flatten(1))

    # Row i's hidden states that predict its completion tokens: its prompt's last, then its own but the last.
    last_prompt = x[:split].unflatten(0, (distinct, prompt_width))[rows, (plen - 1).to(device)]
    hidden = torch.cat([last_prompt[:, None], x[split:].unflatten(0, (batch, completion_width))[:, :-1]], dim=1)
    logp = torch.log_softmax(head_logits(model, hidden).float(), dim=-1)  # [B, C, V]
    chosen = logp.gather(-1, completion_ids.to(device)[..., None]).squeeze(-1)
    # Scatter back to positions plen-1 … ends-2; the tail beyond a row's end goes to a spare column.
    column = (offsets - 1).masked_fill(offsets >= ends[:, None], width - 1).to(device)
    logprobs = torch.zeros(batch, width, dtype=chosen.dtype, device=device).scatter(1, column, chosen)[:, :-1]
    if with_entropy:
        with torch.no_grad():
            values = -(logp.exp() * logp).sum(-1)
            entropy = torch.zeros(batch, width, device=device).scatter(1, column, values)[:, :-1]
    return logprobs, entropy


def computed_tokens(input_ids: torch.Tensor, prompt_lengths: torch.Tensor | None = None,
                    lengths: torch.Tensor | None = None) -> int:
    """Token positions `shared_prefix_logprobs` runs through the model: U·P + B·C, padding included."""
    plen, ends, _, starts = _layout(input_ids, prompt_lengths, lengths)
    return len(starts) * int(plen.max()) + len(plen) * max(0, int((ends - plen).max()))


def _layout(input_ids: torch.Tensor, prompt_lengths: torch.Tensor | None, lengths: torch.Tensor | None):
    """(prompt lengths, lengths, each row's distinct prompt, a row holding each distinct prompt), on the CPU."""
    batch, width = input_ids.shape
    plen = torch.ones(batch, dtype=torch.long) if prompt_lengths is None else prompt_lengths.long().cpu()
    ends = torch.full((batch,), width, dtype=torch.long) if lengths is None else lengths.long().cpu()
    return plen, ends, *_distinct_prompts(input_ids, plen)


def _distinct_prompts(input_ids: torch.Tensor, plen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(group [B]: each row's distinct prompt, starts [U]: a row holding each distinct prompt)."""
    index: dict[tuple[int, ...], int] = {}
    group, starts = [], []
    for row, (ids, length) in enumerate(zip(input_ids.tolist(), plen.tolist())):
        key = tuple(ids[:length])
        if key not in index:
            index[key] = len(starts)
            starts.append(row)
        group.append(index[key])
    return torch.tensor(group), torch.tensor(starts)


def _take(ids: torch.Tensor, columns: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """ids[row, columns] where columns < the row's end, else 0 (a valid token id whose output is unused)."""
    inside = columns < ends[:, None]
    taken = ids.cpu().gather(1, columns.clamp(max=ids.shape[1] - 1))
    return taken.masked_fill(~inside, 0)


__all__ = ["shared_prefix_logprobs", "can_run", "computed_tokens"]
