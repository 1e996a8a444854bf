"""The language-modelling stage shared by pretraining and SFT: packed batches and next-token loss.

Pretraining packs whole trace documents end to end (`split=True`, every token a target); SFT packs
chat examples without splitting them and puts the loss on the assistant's tokens only. Both use the
model's own loss: cross-entropy + λ·MTP + DeepSeekMoE's balance loss, with cross-entropies summed and
divided by the step's target count (the loop's `denominator`), so micro-batches and ranks add up to the
gradient of one big batch. Held-out evaluation is the token-weighted next-token loss on a fixed set of
batches from a disjoint stream.
"""

from __future__ import annotations

from typing import Any

import torch

from frugal_r1.data import Packer
from frugal_r1.device import module_device, to_device
from frugal_r1.model.config import ModelConfig
from frugal_r1.model.flops import training_flops_per_token


class LMStage:
    def __init__(self, name: str, model_cfg: ModelConfig, packer: Packer, eval_batches: list[dict[str, torch.Tensor]],
                 grad_accum: int = 1):
        self.name, self.model_cfg, self.packer = name, model_cfg, packer
        self.eval_batches, self.grad_accum = eval_batches, grad_accum

    def next_batch(self) -> dict[str, torch.Tensor]:
        return self.packer.next_batch()

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != -100).sum())

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             denominator: float) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch["input_ids"], batch["labels"], position_ids=batch["position_ids"],
                    doc_ids=batch["doc_ids"], loss_denominator=denominator)
        loss = out.lm_loss
        parts = {"lm_loss": out.lm_loss.item()}
        if out.mtp_loss is not None:
            loss = loss + self.model_cfg.mtp_loss_weight * out.mtp_loss
            parts["mtp_loss"] = out.mtp_loss.item()
        if out.aux_loss is not None:
            loss = loss + out.aux_loss / self.grad_accum
            parts["aux_loss"] = out.aux_loss.item() / self.grad_accum
        return loss, parts

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        total, count = 0.0, 0
        device = module_device(model)
        for batch in self.eval_batches:
            targets = self.count_targets(batch)
            if not targets:
                continue
            batch = to_device(batch, device)
            out = model(batch["input_ids"], batch["labels"], position_ids=batch["position_ids"],
                        doc_ids=batch["doc_ids"], loss_denominator=1.0)
            total += out.lm_loss.item()
            count += targets
        return {"eval_loss": total / count} if count else {}

    def flops_per_token(self) -> float:
        return float(training_flops_per_token(self.model_cfg, self.packer.seq_len).total)

    def state_dict(self) -> dict[str, Any]:
        return {"packer": self.packer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.packer.load_state_dict(state["packer"])
