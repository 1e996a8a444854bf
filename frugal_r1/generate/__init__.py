"""Generation: batched sampling on the latent cache, MTP speculative decoding, one interface for any model.

    from frugal_r1.generate import SamplingParams, generate, load_backend
    backend = load_backend("runs/sft/final")              # our DeepSeek-V3, or any transformers causal LM
    outs = backend.generate(["What is 2+3?"], SamplingParams(temperature=0.7, top_p=0.95, n=8, seed=0))
    outs[0].text, outs[0].token_ids, outs[0].logprobs, outs[0].finish_reason

`generate(model, prompts, params)` accepts a `Backend`, a `DeepSeekV3` module or a model directory.
The semantics of every field are in backend.py; the files are:

    backend.py      SamplingParams, Completion, the Backend interface, per-row bookkeeping and stops
    sampling.py     temperature / top-k / top-p, counter-based per-row randomness, raw log-probs
    engine.py       the shared decode loop; `Engine` for our model on the latent cache
    speculative.py  MTP drafting + verification (Engine(..., speculative=True))
    hf_backend.py   `HFBackend` for transformers causal LM directories
    llama_family.py the decoder HFBackend uses for Llama, Qwen2 and Mistral (the module's own weights)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frugal_r1.errors import UserError
from frugal_r1.generate.backend import Backend, Completion, Prompt, SamplingParams, acceptance_rate
from frugal_r1.generate.engine import Engine
from frugal_r1.generate.hf_backend import HFBackend
from frugal_r1.model.hf import read_model_config


def load_backend(path: str | Path, *, backend: str = "auto", device: str = "cpu", **kwargs: Any) -> Backend:
    """A backend for the model directory: "frugal" (our DeepSeek-V3), "hf" (transformers) or "auto"
    (ours for model_type deepseek_v3, transformers otherwise), its model on `device` (a `train.device` setting:
    auto, cpu, cuda, cuda:N). kwargs go to the backend's from_pretrained."""
    from frugal_r1.device import resolve_device

    path = Path(path)
    config = read_model_config(path)
    where = resolve_device(device)
    if backend == "auto":
        backend = "frugal" if config.get("model_type") == "deepseek_v3" else "hf"
    if backend == "frugal":
        loaded = Engine.from_pretrained(path, **kwargs)
    elif backend == "hf":
        loaded = HFBackend.from_pretrained(path, **kwargs)
    else:
        raise UserError(f"backend must be 'auto', 'frugal' or 'hf', got {backend!r}")
    loaded.model.to(where)  # each generate call works on the device its model is on
    return loaded


def generate(model: Backend | Any, prompts: Sequence[Prompt], params: SamplingParams | None = None, *,
             tokenizer: Any = None, **sampling: Any) -> list[Completion]:
    """Generate for `prompts` with `model` (a Backend, a DeepSeekV3 or a model directory).

    Sampling fields may be given as keywords instead of `params`: generate(m, p, temperature=0).
    """
    if params is None:
        params = SamplingParams(**sampling)
    elif sampling:
        raise UserError("pass either params or sampling keywords, not both")
    if isinstance(model, (str, Path)):
        model = load_backend(model)
    elif not isinstance(model, Backend):
        model = Engine(model, tokenizer)
    return model.generate(prompts, params)


__all__ = ["SamplingParams", "Completion", "Backend", "Engine", "HFBackend", "generate", "load_backend",
           "acceptance_rate"]
