"""The latent KV cache of MLA: per token and layer, only c_kv and the shared rope key.

Standard attention caches H·(d_k + d_v) numbers per token per layer. MLA caches the normalised latent
c_kv (kv_lora_rank) and the rotated shared key k_pe (qk_rope_head_dim), side by side in one tensor `latent`
(c_kv first), and decodes in the absorbed form (see mla.py), so the cache never holds expanded keys or values:

    bytes per token per layer = (kv_lora_rank + qk_rope_head_dim) × element size

The cache is pre-allocated for `max_len` slots. All rows write at the same slot (`length`); rows of
different prompt lengths are left-padded and `valid[b, s]` masks padding slots out of attention. Rows of
finished sequences can be dropped with `keep_rows` so they stop costing compute.
"""

from __future__ import annotations

import torch

from frugal_r1.model.config import ModelConfig


class LatentCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", num_layers: int | None = None):
        layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers if num_layers is None else num_layers
        self.max_len = max_len
        self.length = 0
        self.rank = cfg.kv_lora_rank
        self.latent = torch.zeros(layers, batch_size, max_len, cfg.kv_lora_rank + cfg.qk_rope_head_dim, dtype=dtype,
                                  device=device)
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)

    @property
    def ckv(self) -> torch.Tensor:
        """[layers, B, max_len, kv_lora_rank]: a view of `latent`."""
        return self.latent[..., : self.rank]

    @property
    def kpe(self) -> torch.Tensor:
        """[layers, B, max_len, qk_rope_head_dim]: a view of `latent`."""
        return self.latent[..., self.rank:]

    @property
    def batch_size(self) -> int:
        return self.latent.shape[1]

    @property
    def bytes_per_token_per_layer(self) -> int:
        return self.latent.shape[-1] * self.latent.element_size()

    def write(self, layer: int, ckv: torch.Tensor, kpe: torch.Tensor) -> torch.Tensor:
        """Store [B, T, ·] at slots length..length+T of `layer`; return the layer's filled prefix
        [B, length+T, kv_lora_rank + qk_rope_head_dim] (c_kv, then k_pe)."""
        end = self.length + ckv.shape[1]
        if end > self.max_len:
            raise ValueError(f"cache overflow: {end} tokens > max_len {self.max_len}")
        self.latent[layer, :, self.length:end, : self.rank] = ckv.to(self.latent.dtype)
        self.latent[layer, :, self.length:end, self.rank:] = kpe.to(self.latent.dtype)
        return self.latent[layer, :, :end]

    def attention_mask(self, num_new: int) -> torch.Tensor:
        """Bool [B, 1, T, S]: query slot length+i may see key slot s ≤ it when s is valid (always itself)."""
        end = self.length + num_new
        query_slots = torch.arange(self.length, end, device=self.valid.device)[:, None]
        key_slots = torch.arange(end, device=self.valid.device)[None, :]
        causal = key_slots <= query_slots
        mask = causal[None] & self.valid[:, None, :end]
        mask |= (key_slots == query_slots)[None]
        return mask[:, None]

    def advance(self, num_new: int) -> None:
        self.length += num_new

    def truncate(self, length: int) -> None:
        """Forget slots from `length` on (speculative decoding rolls back rejected drafts)."""
        self.length = length

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (drop finished sequences)."""
        self.latent = self.latent[:, rows]
        self.valid = self.valid[rows]
