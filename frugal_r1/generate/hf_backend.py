"""Generation for any local transformers causal LM directory (Qwen2, Llama, DeepseekV3, …).

The model is loaded with `AutoModelForCausalLM` and its tokenizer with `AutoTokenizer`, both from local
files only. Generation runs through the same decode loop, sampler and bookkeeping as frugal-r1's own
engine (engine.py), so the two backends agree on every field and on the random numbers: the same model
gives the same completions through either. transformers' `generate` is not used because its sampler
draws from one generator for the whole batch and returns processed (not raw) log-probs.

Llama-family models (Llama, Qwen2, Mistral; see llama_family.py for what else must hold) decode with
`LlamaFamilyStepper`, which runs the same equations on the module's own weights without transformers'
per-call overhead. Every other model takes `HFStepper`: left-padded prompts with a 2-D attention mask and
explicit position ids (counted from each row's first real token) into a `DynamicCache`, finished rows
compacted out of the cache with `batch_select_indices`. `fast=False` forces HFStepper.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from frugal_r1.errors import UserError
from frugal_r1.generate.backend import Backend, Completion, Prompt, Rows, SamplingParams, load_local_tokenizer
from frugal_r1.generate.engine import decode, evaluation, positions_of, resolve_seed
from frugal_r1.generate.llama_family import LlamaFamilyStepper, unsupported_reason
from frugal_r1.model.hf import read_model_config


def load_causal_lm(path: Path, dtype: torch.dtype = torch.float32):
    """transformers' AutoModelForCausalLM from local files only; a broken directory is named in one line."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: transformers cannot load this model: {reason}") from None


class HFStepper:
    def __init__(self, model):
        self.model = model
        self.device = model.device
        self.cache = None
        self.mask: torch.Tensor | None = None

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids.to(self.device), attention_mask=self.mask,
                         position_ids=positions.to(self.device), cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().cpu()

    def prefill(self, ids: torch.Tensor, pad: torch.Tensor, capacity: int) -> torch.Tensor:
        from transformers import DynamicCache

        width = ids.shape[1]
        self.cache = DynamicCache(config=self.model.config)
        self.mask = (torch.arange(width)[None, :] >= pad[:, None]).long().to(self.device)
        return self._forward(ids, positions_of(pad, width))

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        return self._forward(tokens[:, None], positions[:, None])

    def keep(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]


class HFBackend(Backend):
    def __init__(self, model, tokenizer=None, *, compact_fraction: float = 0.25, fast: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.compact_fraction = compact_fraction
        self.fast = fast

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, **kwargs) -> "HFBackend":
        path = Path(path)
        read_model_config(path)
        return cls(load_causal_lm(path, dtype), load_local_tokenizer(path), **kwargs)

    @property
    def context_length(self) -> int:
        length = getattr(self.model.config, "max_position_embeddings", None)
        if length is None and self.tokenizer is not None:
            length = self.tokenizer.model_max_length
        if length is None:
            raise UserError("the model config has no max_position_embeddings")
        return int(length)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def config_eos_token_id(self) -> int | None:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        return eos[0] if isinstance(eos, (list, tuple)) else eos

    @property
    def pad_id(self) -> int:
        tokenizer_pad = None if self.tokenizer is None else self.tokenizer.pad_token_id
        return next((i for i in (tokenizer_pad, self.eos_token_id) if i is not None), 0)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        ids = self.encode_prompts(prompts, params)
        if not ids:
            return []
        rows = Rows(ids, params, self.stop_ids(params), self.context_length, self.tokenizer)
        with torch.inference_mode(), evaluation(self.model):
            decode(self.stepper(max(map(len, ids)) + rows.max_budget), rows, self.pad_id, resolve_seed(params),
                   self.compact_fraction)
        return rows.completions()

    def stepper(self, length: int):
        """The fastest stepper that computes this model exactly, for sequences of up to `length` positions."""
        if self.fast and unsupported_reason(self.model, length) is None:
            return LlamaFamilyStepper(self.model)
        return HFStepper(self.model)


__all__ = ["HFBackend", "HFStepper"]
