"""Hugging Face checkpoint interop: our module ↔ transformers' DeepseekV3ForCausalLM names.

A model directory is config.json + model.safetensors (+ tokenizer files, written elsewhere), the layout
`transformers.AutoModelForCausalLM` loads and `DeepseekV3ForCausalLM.save_pretrained` writes.

Name mapping (ours → checkpoint):
    embed_tokens, layers.i.*, norm          → model.embed_tokens, model.layers.i.*, model.norm
    lm_head                                 → lm_head (absent when tied)
    layers.i.mlp.experts.gate_up_proj [E,2I,d]  → model.layers.i.mlp.experts.{e}.gate_proj / up_proj .weight
    layers.i.mlp.experts.down_proj [E,d,I]      → model.layers.i.mlp.experts.{e}.down_proj.weight
    mtp.k.{enorm,hnorm,eh_proj,shared_head.norm}, mtp.k.block.*  → model.layers.{L+k}.*  (DeepSeek's layout)
    plus model.layers.{L+k}.embed_tokens / shared_head.head: copies of the shared weights, as DeepSeek ships

Loading accepts per-expert names and transformers' fused in-memory names (experts.gate_up_proj /
experts.down_proj). A checkpoint with missing, unexpected or mis-shaped tensors is refused with the names
listed: nothing is silently left at its random init. The one exception is stated, not silent: a checkpoint
with no MTP weights at all (transformers never writes them) loads with num_nextn_predict_layers = 0.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from frugal_r1.atomic import atomic_write_bytes
from frugal_r1.errors import UserError
from frugal_r1.model.config import ModelConfig

_EXPERT = re.compile(r"^(layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")
_MTP_COPIES = ("embed_tokens.weight", "shared_head.head.weight")


class CheckpointError(UserError):
    """A checkpoint that does not match the model it is loaded into."""


def to_checkpoint(model) -> dict[str, torch.Tensor]:
    """Our state dict renamed and split into the per-expert checkpoint layout."""
    cfg: ModelConfig = model.config
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.startswith("mtp."):
            _, depth, rest = name.split(".", 2)
            layer = f"model.layers.{cfg.num_hidden_layers + int(depth)}"
            rest = rest.removeprefix("block.")
            if match := _EXPERT.match("layers.0." + rest):
                out.update(_split_experts(f"{layer}.mlp.experts", match.group(2), tensor))
            else:
                out[f"{layer}.{rest}"] = tensor
            continue
        if match := _EXPERT.match(name):
            out.update(_split_experts("model." + match.group(1), match.group(2), tensor))
        elif name == "lm_head.weight":
            out[name] = tensor
        else:
            out["model." + name] = tensor
    for depth in range(cfg.num_nextn_predict_layers):
        layer = f"model.layers.{cfg.num_hidden_layers + depth}"
        out[f"{layer}.embed_tokens.weight"] = model.embed_tokens.weight.detach().clone()
        out[f"{layer}.shared_head.head.weight"] = model.lm_head.weight.detach().clone()
    return {k: v.detach().contiguous() for k, v in out.items()}


def _split_experts(prefix: str, kind: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for e in range(tensor.shape[0]):
        if kind == "gate_up_proj":
            gate, up = tensor[e].chunk(2, dim=0)
            out[f"{prefix}.{e}.gate_proj.weight"] = gate
            out[f"{prefix}.{e}.up_proj.weight"] = up
        else:
            out[f"{prefix}.{e}.down_proj.weight"] = tensor[e]
    return out


def from_checkpoint(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names → our state-dict names, fusing per-expert tensors; unknown names kept as-is."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, int, str], torch.Tensor] = {}
    per_expert = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
    for name, tensor in tensors.items():
        ours = _our_name(cfg, name)
        if ours is None:
            continue
        if match := per_expert.match(ours):
            experts[(match.group(1), int(match.group(2)), match.group(3))] = tensor
        else:
            out[ours] = tensor
    prefixes = sorted({prefix for prefix, _, _ in experts})
    for prefix in prefixes:
        count = cfg.n_routed_experts
        missing = [f"{prefix}.{e}.{kind}" for e in range(count) for kind in ("gate_proj", "up_proj", "down_proj")
                   if (prefix, e, kind) not in experts]
        if missing:
            raise CheckpointError(f"missing tensors: {', '.join(missing[:10])}" + (" …" if len(missing) > 10 else ""))
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([experts[(prefix, e, "gate_proj")], experts[(prefix, e, "up_proj")]]) for e in range(count)])
        out[f"{prefix}.down_proj"] = torch.stack([experts[(prefix, e, "down_proj")] for e in range(count)])
        extra = [f"{prefix}.{e}" for (p, e, _) in experts if p == prefix and e >= count]
        if extra:
            raise CheckpointError(f"unexpected tensors: {', '.join(sorted(set(extra)))}")
    return out


def _our_name(cfg: ModelConfig, name: str) -> str | None:
    if name == "lm_head.weight":
        return None if cfg.tie_word_embeddings else name
    if not name.startswith("model."):
        return name  # unexpected; reported by the strict check
    name = name[len("model."):]
    match = re.match(r"^layers\.(\d+)\.(.*)$", name)
    if match and int(match.group(1)) >= cfg.num_hidden_layers:
        depth, rest = int(match.group(1)) - cfg.num_hidden_layers, match.group(2)
        if depth >= cfg.num_nextn_predict_layers:
            return "model." + name  # unexpected
        if rest in _MTP_COPIES:
            return None  # DeepSeek ships copies of the shared embedding and head
        if rest.split(".")[0] in ("enorm", "hnorm", "eh_proj", "shared_head"):
            return f"mtp.{depth}.{rest}"
        return f"mtp.{depth}.block.{rest}"
    return name


# ------------------------------------------------------------------------------------------------------
def save_pretrained(model, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write config.json, generation_config.json and model.safetensors, each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = to_checkpoint(model)
    if dtype is not None:
        keep_fp32 = ("e_score_correction_bias", "mlp.gate.weight")
        tensors = {k: v if k.endswith(keep_fp32) else v.to(dtype) for k, v in tensors.items()}
    cfg_dict = model.config.to_hf_dict()
    cfg_dict["dtype"] = str(dtype or next(model.parameters()).dtype).removeprefix("torch.")
    gen = {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
           "pad_token_id": model.config.pad_token_id}
    atomic_write_bytes(path / "config.json", json.dumps(cfg_dict, indent=2).encode())
    atomic_write_bytes(path / "generation_config.json", json.dumps(gen, indent=2).encode())
    atomic_write_bytes(path / "model.safetensors", _safetensors_bytes(tensors))


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save(tensors, metadata={"format": "pt"})


def read_model_config(path: str | Path, what: str = "") -> dict:
    """The config.json of a model directory as a dict; a one-line UserError when there is none or it cannot be
    read (`what` prefixes the directory in the message, e.g. "--init ")."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{what}{path} is not a model directory (no config.json)")
    try:
        values = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config}: not a readable JSON file ({error})") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{config}: expected a JSON object, got {type(values).__name__}")
    return values


def read_deepseek_config(path: str | Path, what: str = "") -> ModelConfig:
    """The ModelConfig of a DeepSeek-V3 model directory (ours or transformers'), one-line errors when it has none."""
    try:
        return ModelConfig.from_hf_dict(read_model_config(path, what))
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise CheckpointError(f"{Path(path) / 'config.json'}: {error}") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards a model.safetensors.index.json lists."""
    index = path / "model.safetensors.index.json"
    try:
        files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
                 else ["model.safetensors"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{index}: not a safetensors index ({type(error).__name__}: {error})") from None
    if not all(isinstance(file, str) for file in files):
        raise CheckpointError(f"{index}: weight_map values must be file names")
    tensors = {}
    for file in files:
        if not (path / file).exists():
            raise CheckpointError(f"{path / file} not found")
        try:
            with safe_open(path / file, framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path / file}: not a readable safetensors file ({error})") from None
    return tensors


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Build a DeepSeekV3 from a model directory (ours or transformers'), strictly."""
    from frugal_r1.model.transformer import DeepSeekV3

    path = Path(path)
    cfg = read_deepseek_config(path)
    tensors = read_tensors(path)
    first_mtp = f"model.layers.{cfg.num_hidden_layers}."
    if cfg.num_nextn_predict_layers and not any(k.startswith(first_mtp) for k in tensors):
        warnings.warn(f"{path}: checkpoint has no MTP weights; loading with num_nextn_predict_layers=0",
                      stacklevel=2)
        cfg = cfg.replace(num_nextn_predict_layers=0)
    state = from_checkpoint(cfg, tensors)
    with torch.device("meta"):
        model = DeepSeekV3(cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    for name in [k for k in state if k not in expected and state[k].numel() == 0]:
        del state[name]  # transformers writes empty shared experts when n_shared_experts = 0
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                   for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    problems = [f"{label}: {', '.join(names[:12])}" + (" …" if len(names) > 12 else "")
                for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong))
                if names]
    if problems:
        raise CheckpointError(f"{path}: checkpoint does not match the config — " + "; ".join(problems))
    model = model.to_empty(device=device)
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                          strict=not cfg.tie_word_embeddings)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    with torch.no_grad():  # buffers that are not in checkpoints
        from frugal_r1.model.rope import rope_frequencies

        model.rotary.inv_freq.copy_(rope_frequencies(cfg)[0])
        for moe in model.moe_layers():
            moe.gate.e_score_correction_bias.data = moe.gate.e_score_correction_bias.float()
            moe.gate.weight.data = moe.gate.weight.float()
            moe.expert_load.zero_()
    return model


__all__ = ["save_pretrained", "load_pretrained", "to_checkpoint", "from_checkpoint", "CheckpointError"]
