"""A policy for GRPO: frugal-r1's DeepSeek-V3 or any local transformers causal LM, behind one interface.

What GRPO needs from a policy: a module to optimise, a generation backend sharing its weights, the
prompt text for a task row (our R1 chat format, the tokenizer's own chat template for other models, or
the R1-Zero template), per-token log-probabilities and entropies of given completions, and a way to save
a model directory. Sequences are right-padded prompt + completion, so causal attention never sees
padding and positions are plain 0…T-1 for both kinds of model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from frugal_r1.errors import UserError
from frugal_r1.generate.backend import load_local_tokenizer
from frugal_r1.generate.hf_backend import load_causal_lm
from frugal_r1.model.hf import read_model_config
from frugal_r1.train.shared_prefix import can_run, computed_tokens, shared_prefix_logprobs


class Policy:
    def __init__(self, module: torch.nn.Module, tokenizer: Any, kind: str):
        self.module, self.tokenizer, self.kind = module, tokenizer, kind

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        path = Path(path)
        config = read_model_config(path, "--init ")
        tokenizer = load_local_tokenizer(path)
        if tokenizer is None:
            raise UserError(f"--init {path} holds no tokenizer (tokenizer.json); GRPO writes its prompts as text, "
                            "so the model directory needs the tokenizer it was trained with")
        if config.get("model_type") == "deepseek_v3":
            from frugal_r1.model.transformer import DeepSeekV3

            return cls(DeepSeekV3.from_pretrained(path), tokenizer, "frugal")
        module = load_causal_lm(path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(module, tokenizer, "hf")

    def backend(self):
        from frugal_r1.generate import Engine, HFBackend

        return Engine(self.module, self.tokenizer) if self.kind == "frugal" else HFBackend(self.module, self.tokenizer)

    @property
    def context_length(self) -> int:
        config = self.module.config
        return int(getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length)

    def prompt(self, row: dict[str, Any], prompt_format: str = "chat") -> str:
        """The row's prompt as the model sees it: the chat template (ours, or the tokenizer's own) or R1-Zero's."""
        from frugal_r1.eval import task_prompt

        return task_prompt(self.tokenizer, row["prompt"], prompt_format)

    def token_logprobs(self, model: torch.nn.Module, input_ids: torch.Tensor, with_entropy: bool = False,
                       prompt_lengths: torch.Tensor | None = None,
                       lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log π(x_{t+1} | x_≤t) for t = 0…T-2: [B, T-1] (and the entropies of those distributions).

        With prompt_lengths and lengths [B], only t from the row's last prompt token to its last token is
        computed (elsewhere 0): a supported transformers model (llama_family.py) then computes each distinct
        prompt once (shared_prefix.py); any other model runs its full forward.
        """
        if self.kind == "hf" and can_run(model, input_ids.shape[1]):
            return shared_prefix_logprobs(model, input_ids, prompt_lengths, lengths, with_entropy)
        logits = model(input_ids).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        chosen = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = -(logp.exp() * logp).sum(-1)
        if prompt_lengths is not None or lengths is not None:
            inside = _spans(input_ids, prompt_lengths, lengths).to(chosen.device)
            chosen = chosen * inside
            entropy = None if entropy is None else entropy * inside
        return chosen, entropy

    def forward_tokens(self, model: torch.nn.Module, input_ids: torch.Tensor, prompt_lengths: torch.Tensor | None = None,
                       lengths: torch.Tensor | None = None) -> int:
        """Token positions `token_logprobs` runs through `model` for this batch (for the FLOPs ledger)."""
        if self.kind == "hf" and can_run(model, input_ids.shape[1]):
            return computed_tokens(input_ids, prompt_lengths, lengths)
        return input_ids.numel()

    def generated_tokens(self, completions) -> int:
        """Token positions a generation ran: prompts (each distinct one once where the decoder prefills it
        once — a Llama-family transformers model in eval mode), plus the completions."""
        longest = max((len(c.prompt_ids) + len(c.token_ids) for c in completions), default=0)
        if self.kind == "hf" and not self.module.training and can_run(self.module, longest):
            prompts = sum(len(p) for p in {tuple(c.prompt_ids) for c in completions})
        else:
            prompts = sum(len(c.prompt_ids) for c in completions)
        return prompts + sum(len(c.token_ids) for c in completions)

    def save_pretrained(self, path: str | Path) -> None:
        self.module.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


def _spans(input_ids: torch.Tensor, prompt_lengths: torch.Tensor | None, lengths: torch.Tensor | None) -> torch.Tensor:
    """[B, T-1] 1.0 from each row's last prompt token to the token before its last."""
    batch, width = input_ids.shape
    t = torch.arange(width - 1)[None, :]
    first = torch.zeros(batch, 1, dtype=torch.long) if prompt_lengths is None else prompt_lengths.cpu()[:, None] - 1
    end = torch.full((batch, 1), width - 1) if lengths is None else lengths.cpu()[:, None] - 1
    return ((t >= first) & (t < end)).float()
