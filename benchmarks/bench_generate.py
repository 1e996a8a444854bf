"""Generation benchmark: frugal-r1's engine against transformers' `generate` on the identical model.

    .venv/bin/python benchmarks/bench_generate.py [--new-tokens 128] [--repeats 2] [--threads 2]

On a shared, busy CPU two OpenMP threads spin against other processes and both engines' rates collapse
erratically (10x swings between runs); `--threads 1` then gives stable ratios.

1. Speed. The `small` preset with random weights is saved with `save_pretrained`; transformers loads that
   directory with `AutoModelForCausalLM` (DeepseekV3ForCausalLM), our `Engine` loads it too. Both decode
   the same left-padded prompts (lengths 16-48) greedily for exactly `--new-tokens` tokens (our
   ignore_eos; their min_new_tokens), runs interleaved ours / theirs per batch size (1, 16, 64).
   Reported: generated tokens per second (median over repeats; prefill included), the ratio, and how many
   rows came out token-identical. Ours in bf16 against ours in fp32 at batch 64, interleaved too.
2. Cache memory per token: our latent cache (c_kv + k_pe per layer) against the bytes transformers'
   DynamicCache holds after its run, divided by batch × cached length.
3. MTP acceptance on a trained model: the `tiny` preset (vocabulary shrunk to the characters used) is
   trained for `--train-steps` AdamW steps on reasoning-gym chain_sum lines ("57 + 87 + 70 = 214"),
   character-level, with the MTP loss; then it continues prompts of such lines with speculative decoding
   (greedy and T=1), and plain vs speculative tokens/s are compared on it. Then the same comparison on
   the `small` preset with its MTP module made to agree with the main model (acceptance 1.0): the cost
   and the saving of drafting on the real architecture, apart from how well an MTP head was trained.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch

from frugal_r1.generate import Engine, SamplingParams, acceptance_rate
from frugal_r1.generate.speculative import agreeing_mtp
from frugal_r1.model.cache import LatentCache
from frugal_r1.model.config import preset
from frugal_r1.model.transformer import DeepSeekV3


def make_prompts(batch: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 49, (batch,), generator=g).tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def run_ours(engine: Engine, prompts, new_tokens: int) -> tuple[float, list[list[int]]]:
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    out = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(c.token_ids) == new_tokens for c in out)
    return len(prompts) * new_tokens / elapsed, [c.token_ids for c in out]


def run_theirs(hf, prompts, new_tokens: int, pad_id: int):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=pad_id, return_dict_in_generate=True)
    elapsed = time.perf_counter() - start
    tokens = out.sequences[:, width:]
    assert tokens.shape[1] == new_tokens
    return len(prompts) * new_tokens / elapsed, tokens.tolist(), out.past_key_values


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values", "compressed_kv", "k_pe"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def bench_speed(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as directory:
        _bench_speed(args, directory)


def _bench_speed(args, directory: str) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = DeepSeekV3(preset("small"))
    model.save_pretrained(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import transformers

        transformers.logging.set_verbosity_error()
        hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    engine = Engine.from_pretrained(directory)
    cfg = engine.model.config
    print(f"small preset: {engine.model.num_parameters() / 1e6:.1f}M parameters (MTP included), "
          f"{args.new_tokens} new tokens per row, {torch.get_num_threads()} threads")
    print(f"{'batch':>5} {'ours tok/s':>11} {'transformers tok/s':>19} {'ratio':>6} {'identical rows':>15}")
    hf_cache = None
    for batch in (1, 16, 64):
        prompts = make_prompts(batch, cfg.vocab_size, seed=batch)
        run_ours(engine, prompts[:1], 2)  # warm-up
        run_theirs(hf, prompts[:1], 2, cfg.pad_token_id)
        ours, theirs, same = [], [], 0
        for _ in range(args.repeats):
            rate, ours_tokens = run_ours(engine, prompts, args.new_tokens)
            ours.append(rate)
            rate, their_tokens, hf_cache = run_theirs(hf, prompts, args.new_tokens, cfg.pad_token_id)
            theirs.append(rate)
            same = sum(a == b for a, b in zip(ours_tokens, their_tokens))
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"{batch:>5} {o:>11.0f} {t:>19.0f} {o / t:>5.2f}x {same:>9}/{batch}")

    prompts = make_prompts(64, cfg.vocab_size, seed=64)
    bf16 = Engine(DeepSeekV3.from_pretrained(directory, dtype=torch.bfloat16))
    run_ours(bf16, prompts[:1], 2)
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for name, candidate in (("fp32", engine), ("bf16", bf16)):
            rates[name].append(run_ours(candidate, prompts, args.new_tokens)[0])
    print(f"ours at batch 64: bf16 {statistics.median(rates['bf16']):.0f} tok/s, "
          f"fp32 {statistics.median(rates['fp32']):.0f} tok/s")

    width = max(len(p) for p in prompts)
    theirs_per_token = cache_bytes(hf_cache) / (64 * (width + args.new_tokens - 1))
    ours_cache = LatentCache(cfg, 1, 1, num_layers=cfg.num_hidden_layers)
    ours_per_token = ours_cache.bytes_per_token_per_layer * cfg.num_hidden_layers
    expanded = cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * 4 * cfg.num_hidden_layers
    print(f"cache per token (fp32, {cfg.num_hidden_layers} layers): ours {ours_per_token} B "
          f"(+{ours_cache.bytes_per_token_per_layer} B for the MTP layer when speculative); transformers "
          f"{theirs_per_token:.0f} B measured (its DeepseekV3 also caches the latent and re-expands it every "
          f"step); an expanded per-head K/V cache would be {expanded} B ({expanded / ours_per_token:.0f}x)")


# ----------------------------------------------------------------------------------------------------------
def chain_sum_lines(count: int, seed: int) -> list[str]:
    import reasoning_gym

    data = reasoning_gym.create_dataset("chain_sum", size=count, seed=seed)
    return [f"{row['question'].split(': ', 1)[1]} {row['answer']}\n" for row in data]


def bench_mtp(args) -> None:
    lines = chain_sum_lines(4000, seed=1)
    chars = sorted(set("".join(lines)))
    to_id = {c: i + 3 for i, c in enumerate(chars)}  # 0-2: bos, eos, pad
    stream = torch.tensor([to_id[c] for c in "".join(lines)])
    cfg = preset("tiny", vocab_size=len(chars) + 3)
    torch.manual_seed(0)
    model = DeepSeekV3(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    seq, batch = 128, 32
    start = time.perf_counter()
    model.train()
    for step in range(args.train_steps):
        offsets = torch.randint(0, len(stream) - seq - 1, (batch,))
        window = torch.stack([stream[o: o + seq + 1] for o in offsets.tolist()])
        out = model(window[:, :-1], window[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.update_gate_biases()
    model.eval()
    print(f"\nMTP: tiny preset (vocab {cfg.vocab_size}, {model.num_parameters() / 1e6:.2f}M parameters) trained "
          f"{args.train_steps} steps × {batch}×{seq} chars in {time.perf_counter() - start:.0f}s: "
          f"main loss {out.lm_loss.item():.3f}, MTP loss {out.mtp_loss.item():.3f}")

    held_out = chain_sum_lines(64, seed=2)
    prompts = [[to_id[c] for c in "".join(held_out[i: i + 2])] for i in range(0, 64, 2)]
    plain, spec = Engine(model), Engine(model, speculative=True)
    for label, params in (("greedy", SamplingParams(temperature=0, max_new_tokens=64, ignore_eos=True, seed=0)),
                          ("T=1", SamplingParams(temperature=1.0, max_new_tokens=64, ignore_eos=True, seed=0))):
        for batch in (1, 32):
            rates = {}
            for name, engine in (("plain", plain), ("speculative", spec), ("plain", plain), ("speculative", spec)):
                t0 = time.perf_counter()
                out = engine.generate(prompts[:batch], params)
                rates.setdefault(name, []).append(batch * 64 / (time.perf_counter() - t0))
                if name == "speculative":
                    accepted = acceptance_rate(out)
            p, s = statistics.median(rates["plain"]), statistics.median(rates["speculative"])
            print(f"  {label:>6} batch {batch:>2}: acceptance {accepted:.2f}; plain {p:.0f} tok/s, "
                  f"speculative {s:.0f} tok/s ({s / p:.2f}x)")


def bench_mtp_mechanics(args) -> None:
    """Speculative vs plain speed on the `small` preset when the MTP module is made to agree with the main
    model (acceptance 1.0): what drafting costs and saves on the real architecture, independent of training."""
    torch.manual_seed(0)
    model = DeepSeekV3(preset("small")).eval()
    agreeing_mtp(model)  # silence the blocks: both heads then predict Head(norm(Emb(t)))
    params = SamplingParams(temperature=0, max_new_tokens=64, ignore_eos=True)
    plain, spec = Engine(model), Engine(model, speculative=True)
    for batch in (1, 16):
        prompts = make_prompts(batch, model.config.vocab_size, seed=batch)
        rates: dict[str, list[float]] = {"plain": [], "speculative": []}
        for _ in range(args.repeats):
            for name, engine in (("plain", plain), ("speculative", spec)):
                t0 = time.perf_counter()
                out = engine.generate(prompts, params)
                rates[name].append(batch * 64 / (time.perf_counter() - t0))
        p, s = statistics.median(rates["plain"]), statistics.median(rates["speculative"])
        print(f"  small, MTP forced to agree (acceptance {acceptance_rate(out):.2f}), greedy batch {batch:>2}: "
              f"plain {p:.0f} tok/s, speculative {s:.0f} tok/s ({s / p:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-mtp", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_speed:
        bench_speed(args)
    if not args.skip_mtp:
        bench_mtp(args)
        bench_mtp_mechanics(args)


if __name__ == "__main__":
    main()
