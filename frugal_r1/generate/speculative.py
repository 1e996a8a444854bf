"""MTP speculative decoding: the model's first MTP module drafts one token, the main model verifies it.

MTP module 1 reads the main model's hidden state h_i and the embedding of t_{i+1} and predicts t_{i+2}.
After the main model has produced t_{i+1}, the module drafts d = t_{i+2}; the next main forward feeds
[t_{i+1}, d] and yields the target distributions p_0 (for d's position) and p_1 (one further). Per row:

    greedy:    accept d iff d = argmax p_0; the kept token is argmax p_0 either way
    sampling:  accept d with probability min(1, p_0(d) / q(d)), else draw from norm(max(0, p_0 - q))
               (Leviathan et al. 2023; q is the draft's distribution, both after temperature/top-k/top-p)
    accepted:  a bonus token from p_1 — two tokens for one main forward

so greedy output is the plain greedy output and sampled output has the target distribution.

The cache: MTP's block has its own layer in the `LatentCache` (index num_hidden_layers), and its slot s
holds the block's latent for [h_s ; Emb(t_{s+1})], aligned with the main model's slots, so one `valid`
mask serves both. A verify forward writes two slots. When a row rejects, its second slot (the draft) is
marked invalid — a hole that attention skips exactly, since positions are explicit; when every row
rejects, the cache is truncated instead. The module's block is run at chosen slots by setting the
cache's `length` around the call (`_mtp_hidden`). Drafting uses depth 1 only, as DeepSeek-V3 does.

Log-probs are the main model's raw log_softmax at the kept tokens (the drafts' never enter).
"""

from __future__ import annotations

import torch

from frugal_r1.generate.backend import Rows
from frugal_r1.generate.engine import LatentStepper, compact_now, left_pad, positions_of
from frugal_r1.generate.sampling import (ACCEPT, DRAFT, RESIDUAL, SAMPLE, filtered_probs, pick, row_keys, sample,
                                         sample_from, token_logprobs, uniform)
from frugal_r1.model.cache import LatentCache


def _mtp_hidden(model, hidden: torch.Tensor, next_ids: torch.Tensor, positions: torch.Tensor,
                cache: LatentCache, slot: int) -> torch.Tensor:
    """MTP module 1's output for hidden/next_ids [B, T, ·] written at cache slots slot..slot+T."""
    module = model.mtp[0]
    saved = cache.length
    cache.length = slot
    try:
        cos, sin = model.rotary(positions)
        mask = cache.attention_mask(next_ids.shape[1])
        return module(hidden, model.embed_tokens(next_ids), cos, sin, mask, cache)
    finally:
        cache.length = saved


def _mtp_logits(model, h: torch.Tensor) -> torch.Tensor:
    return model.lm_head(model.mtp[0].shared_head.norm(h)).float().cpu()


def _draft(logits: torch.Tensor, params, keys: torch.Tensor, counter: int):
    """Draft from MTP logits [B, V]: (tokens [B], the draft distribution q [B, V], None when greedy)."""
    if params.greedy:
        return logits.argmax(dim=-1), None
    q = filtered_probs(logits, params)
    return sample_from(q, uniform(keys, counter, DRAFT)), q


def speculative_decode(model, rows: Rows, pad_id: int, seed: int, compact_fraction: float,
                       prefill_tokens: int) -> None:
    params = rows.params
    keys = row_keys(seed, len(rows.prompts), params.n)
    ids, pad = left_pad(rows.row_prompts, pad_id)
    width = ids.shape[1]
    stepper = LatentStepper(model, prefill_tokens)
    logits = stepper.prefill(ids, pad, 2 * rows.max_budget + 2, keep_hidden=True)
    cache, device = stepper.cache, stepper.device

    # The first token comes from the prefill; MTP then fills its slots 0..P-1 and drafts the second.
    first, first_lp = sample(logits, params, keys, 0)
    active = torch.arange(rows.num_rows)
    rows.append(active, first[:, None], first_lp[:, None])
    positions = positions_of(pad, width).to(device)
    next_ids = torch.cat([ids[:, 1:], first[:, None]], dim=1).to(device)
    chunk = max(1, prefill_tokens // rows.num_rows)
    for start in range(0, width, chunk):
        end = min(width, start + chunk)
        h = _mtp_hidden(model, stepper.hidden[:, start:end], next_ids[:, start:end], positions[:, start:end],
                        cache, start)
    stepper.hidden = None
    draft_tokens, q = _draft(_mtp_logits(model, h[:, -1]), params, keys, 0)
    last, last_pos = first, rows.prompt_lengths.clone()  # last kept token (not yet fed) and its position

    alive = ~rows.finished.clone()
    counter = 0
    while alive.any():
        counter += 1
        if compact_now(int((~alive).sum()), len(active), compact_fraction):
            kept = alive.nonzero().flatten()
            cache.keep_rows(kept.to(device))
            active, alive, last, last_pos, draft_tokens = (t[kept] for t in (active, alive, last, last_pos,
                                                                                draft_tokens))
            q = None if q is None else q[kept]
        row_keys_now = keys[active]
        slot = cache.length
        pair_pos = torch.stack([last_pos, last_pos + 1], dim=1)
        out = model(torch.stack([last, draft_tokens], dim=1).to(device), position_ids=pair_pos.to(device),
                    cache=cache)
        logits = out.logits.float().cpu()

        if params.greedy:
            kept_first = logits[:, 0].argmax(dim=-1)
            accept = kept_first == draft_tokens
        else:
            p0 = filtered_probs(logits[:, 0], params)
            p_draft = p0.gather(1, draft_tokens[:, None]).squeeze(1)
            q_draft = q.gather(1, draft_tokens[:, None]).squeeze(1)
            accept = uniform(row_keys_now, counter, ACCEPT) * q_draft < p_draft
            residual = (p0 - q).clamp(min=0)
            empty = residual.sum(dim=-1, keepdim=True) <= 0
            residual = torch.where(empty, p0, residual)
            kept_first = torch.where(accept, draft_tokens,
                                     sample_from(residual, uniform(row_keys_now, counter, RESIDUAL)))
        bonus = pick(logits[:, 1], params, row_keys_now, counter, SAMPLE)
        tokens = torch.stack([kept_first, bonus], dim=1)
        logprobs = token_logprobs(logits, tokens)

        live = alive.nonzero().flatten()
        rows.record_drafts(active[live], accept[live])
        done = rows.append(active[live], tokens[live], logprobs[live], 1 + accept[live].long())
        alive[live[done]] = False
        if not alive.any():
            break

        tokens_dev, pair_pos_dev = tokens.to(device), pair_pos.to(device)
        if accept.any():
            accept_dev = accept.to(device)
            cache.valid[:, slot + 1] &= accept_dev
            h = _mtp_hidden(model, out.hidden, tokens_dev, pair_pos_dev, cache, slot)
            h = h[torch.arange(len(accept), device=device), accept_dev.long()]
        else:
            cache.truncate(slot + 1)
            h = _mtp_hidden(model, out.hidden[:, :1], tokens_dev[:, :1], pair_pos_dev[:, :1], cache, slot)[:, 0]
        last = torch.where(accept, bonus, kept_first)
        last_pos = last_pos + 1 + accept.long()
        draft_tokens, q = _draft(_mtp_logits(model, h), params, row_keys_now, counter)


__all__ = ["speculative_decode"]


def agreeing_mtp(model, main_attention: float = 0.0):
    """MTP made to predict what the main model will: with main blocks silenced (main_attention = 0), the main
    model's next-token logits are Head(norm(Emb(t))) and so are the MTP module's; 0 < main_attention < 1
    leaves some disagreement, so a batch mixes accepted and rejected drafts. For tests and for the upper
    bound of speculative speed-up in benchmarks/bench_generate.py; it edits the model in place."""
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.mul_(main_attention)
            for p in layer.mlp.parameters():
                p.mul_(main_attention)
        mtp, d = model.mtp[0], model.config.hidden_size
        mtp.block.self_attn.o_proj.weight.zero_()
        for p in mtp.block.mlp.parameters():
            p.zero_()
        mtp.eh_proj.weight.zero_()
        mtp.eh_proj.weight[:, :d] = torch.eye(d)
        mtp.shared_head.norm.weight.copy_(model.norm.weight)
    return model
