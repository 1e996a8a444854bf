"""The DeepSeek-V3 model: MLA attention with a latent KV cache, DeepSeekMoE, multi-token prediction."""

from frugal_r1.model.config import PRESETS, ModelConfig, preset

__all__ = ["ModelConfig", "PRESETS", "preset"]
