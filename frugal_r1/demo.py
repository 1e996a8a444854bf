"""`frugal-r1 demo`: build a model from a preset, train it a few steps on random tokens, generate.

A thirty-second smoke test of the whole model path (MLA, DeepSeekMoE with bias balancing, MTP loss,
bf16 autocast where the CPU has native bf16, the latent cache) that prints the parameter counts and the
generated token ids.
"""

from __future__ import annotations

import argparse
import time

import torch

from frugal_r1.errors import UserError
from frugal_r1.model import PRESETS, preset
from frugal_r1.model.cache import LatentCache
from frugal_r1.model.transformer import DeepSeekV3
from frugal_r1.precision import use_bf16


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="build a preset, train a few steps on random tokens, generate")
    parser.add_argument("--preset", default="tiny", choices=[n for n in PRESETS if n != "deepseek-v3-671b"])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    torch.manual_seed(args.seed)
    cfg = preset(args.preset)
    model = DeepSeekV3(cfg)
    total = model.num_parameters()
    mtp = sum(p.numel() for p in model.mtp.parameters())
    print(f"preset {args.preset}: {total:,} parameters ({total - mtp:,} main model, {mtp:,} MTP)")

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch, seq = 8, 64
    # A learnable pattern: each row counts upward from a random start, so the loss visibly falls.
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        first = torch.randint(3, cfg.vocab_size - seq - 1, (batch, 1))
        ids = first + torch.arange(seq + 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16("auto")):
            out = model(ids[:, :-1], ids[:, 1:])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_gate_biases()
        if step == 1 or step % 5 == 0 or step == args.steps:
            print(f"step {step:3d}  loss {out.lm_loss.item():.3f}  mtp {out.mtp_loss.item():.3f}")
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f}s")

    model.eval()
    prompt = torch.tensor([[100, 101, 102, 103]])
    cache = LatentCache(cfg, batch_size=1, max_len=32)
    with torch.no_grad():
        logits = model(prompt, cache=cache).logits[:, -1]
        generated = []
        for _ in range(12):
            token = logits.argmax(-1, keepdim=True)
            generated.append(token.item())
            logits = model(token, cache=cache).logits[:, -1]
    print(f"prompt ids    {prompt[0].tolist()}")
    print(f"generated ids {generated}")
    print(f"latent cache: {cache.bytes_per_token_per_layer} bytes per token per layer")
    return 0
