"""Per-token log-probs of prompt + completion batches for Llama-family transformers models, each distinct
prompt computed once.

GRPO scores G completions of one prompt; a plain forward over the right-padded [B, T] batch computes every
prompt G times, forward and backward, though its hidden states are the same in every copy. Here attention
runs on a padded grid of
- the distinct prompts [U, P] (right-padded, causal attention), and
- each row's completion [B, C] (its tokens after the prompt, up to its length), whose queries attend to
  their prompt's keys (up to its length) and causally to their own,
while the embeddings, norms, projections, MLPs and the head run on the grid's real tokens only, packed.
Autograd sums each shared prompt's gradient over its rows, so log-probs and gradients equal the plain
forward's (up to float rounding); only the positions asked for are computed. The layer equations are
`llama_family.Layer`'s, on the HF module's own parameters.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from frugal_r1.generate.llama_family import head_logits, layers_of, rope_table, unsupported_reason
from frugal_r1.model import cpu_kernels


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

    # The padded grid the attention works on: the distinct prompts [U, P], then every row's completion [B, C]
    # (its tokens from plen on). Everything else runs on the grid's real tokens only.
    prompt_columns = torch.arange(prompt_width)[None].expand(distinct, -1)
    columns = plen[:, None] + torch.arange(completion_width)[None]  # [B, C] positions of the completion tokens
    grid_ids = torch.cat([_take(input_ids[starts], prompt_columns).flatten(), _take(input_ids, columns).flatten()])
    grid_positions = torch.cat([prompt_columns.flatten(), columns.flatten()])
    in_completion = columns < ends[:, None]
    real = torch.cat([(prompt_columns < plen[starts, None]).flatten(), in_completion.flatten()]).nonzero().squeeze(1)
    grid = len(grid_ids)
    layers = layers_of(model)
    dtype = model.model.embed_tokens.weight.dtype
    cos, sin = rope_table(model, int(grid_positions.max()) + 1, device, dtype)
    positions = grid_positions[real].to(device)
    cos, sin = cos[positions][:, None], sin[positions][:, None]
    # A completion query sees its prompt's real tokens and its own completion causally.
    sees_prompt = torch.arange(prompt_width)[None, :] < plen[:, None]  # [B, P]
    causal = torch.ones(completion_width, completion_width, dtype=torch.bool).tril()
    sees = torch.cat([sees_prompt[:, None, :].expand(-1, completion_width, -1), causal[None].expand(batch, -1, -1)],
                     dim=2)[:, None].to(device)
    mask = torch.zeros(sees.shape, dtype=dtype, device=device).masked_fill_(~sees, float("-inf"))  # once, not per layer
    rows, spots = group.to(device), real.to(device)
    split = distinct * prompt_width
    # bf16 on the CPU: per-token work on a row count that repeats (zero rows appended, their outputs unused)
    # and attention in fp32 (cpu_kernels.py).
    cpu_bf16 = cpu_kernels.reduced_precision_on_cpu(device, cpu_kernels.compute_dtype(device, dtype))
    tokens = len(real)
    extra = cpu_kernels.bucketed(tokens) - tokens if cpu_bf16 else 0
    cos, sin = F.pad(cos, (0, 0, 0, 0, 0, extra)), F.pad(sin, (0, 0, 0, 0, 0, extra))

    x = F.pad(model.model.embed_tokens(grid_ids[real].to(device)), (0, 0, 0, extra))  # [N real tokens (+ extra), d]
    # Rows are gathered with index_select, not t[rows]: its backward is index_add_, ~10x faster on the CPU than
    # indexing's index_put_ with accumulate.
    for layer in layers:
        q, k, v = (t.new_zeros(grid, *t.shape[1:]).index_copy(0, spots, t[:tokens]) for t in layer.qkv(x, cos, sin))
        if cpu_bf16:
            q, k, v = q.float(), k.float(), v.float()
        with torch.autocast(device.type, enabled=False) if cpu_bf16 else nullcontext():
            qp, kp, vp = (t[:split].unflatten(0, (distinct, prompt_width)).transpose(1, 2) for t in (q, k, v))
            qc, kc, vc = (t[split:].unflatten(0, (batch, completion_width)).transpose(1, 2) for t in (q, k, v))
            out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=layer.scaling, enable_gqa=True)
            out_c = F.scaled_dot_product_attention(qc, torch.cat([kp.index_select(0, rows), kc], dim=2),
                                                   torch.cat([vp.index_select(0, rows), vc], dim=2), attn_mask=mask,
                                                   scale=layer.scaling, enable_gqa=True)
        attended = torch.cat([out_p.transpose(1, 2).flatten(0, 1), out_c.transpose(1, 2).flatten(0, 1)])
        x = layer.finish(x, F.pad(attended.index_select(0, spots).flatten(1), (0, 0, 0, extra)))

    # Row b's completion token j is predicted by its prompt's last token (j = 0) or by its own token j - 1.
    row, j = in_completion.nonzero(as_tuple=True)
    predictor = torch.where(j == 0, group[row] * prompt_width + plen[row] - 1, split + row * completion_width + j - 1)
    packed = torch.full((grid,), -1, dtype=torch.long)
    packed[real] = torch.arange(len(real))
    predicting = packed[predictor]
    if cpu_bf16:
        predicting = F.pad(predicting, (0, cpu_kernels.bucketed(len(predicting)) - len(predicting)))
    logits = head_logits(model, x.index_select(0, predicting.to(device)))[: len(predictor)]
    logp = torch.log_softmax(logits.float(), dim=-1)  # [M, V]
    index = (row.to(device), (columns[row, j] - 1).to(device))
    chosen = logp.gather(-1, input_ids[index[0], index[1] + 1][:, None]).squeeze(-1)
    logprobs = logprobs.index_put(index, chosen)
    if with_entropy:
        with torch.no_grad():
            entropy = entropy.index_put(index, -(logp.exp() * logp).sum(-1))
    return logprobs, entropy


def computed_tokens(input_ids: torch.Tensor, prompt_lengths: torch.Tensor | None = None,
                    lengths: torch.Tensor | None = None) -> int:
    """Tokens `shared_prefix_logprobs` runs through the model's layers: each distinct prompt once, plus
    every row's completion."""
    plen, ends, _, starts = _layout(input_ids, prompt_lengths, lengths)
    return int(plen[starts].sum() + (ends - plen).clamp(min=0).sum())


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


def _take(ids: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """ids[row, columns] on the CPU, columns past the end clamped (padding whose outputs are never used)."""
    return ids.cpu().gather(1, columns.clamp(max=ids.shape[1] - 1))


__all__ = ["shared_prefix_logprobs", "can_run", "computed_tokens"]
