"""Serving benchmark: aggregate completion tokens/s with 16 concurrent clients against 1 client.

    .venv/bin/python benchmarks/bench_serve.py [--preset small] [--clients 16] [--requests 2] \\
        [--max-tokens 128] [--threads 1] [--no-stream]

A model directory is built (a preset with random weights, and a byte-level BPE trained on a few
sentences), then served by `frugal-r1 serve` in a subprocess on 127.0.0.1 — one server, one run, both
measurements. Clients are the official `openai` AsyncOpenAI client, streaming (SSE) by default, each
sending `--requests` requests one after another with the same `--max-tokens` and `ignore_eos`, so every
completion has exactly max_tokens tokens (checked from `usage`). After a warm-up request:
  1 client:   its requests back to back;          tokens/s = completion tokens / wall time
  N clients:  all at once, each its own requests; aggregate tokens/s the same way
and the ratio N-client / 1-client, which batching must make at least 4x. The server runs with
`--threads` torch threads (1 by default: on a small shared CPU a second intra-op thread only adds
contention), so the ratio measures batching, not extra cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from frugal_r1.chat import format_completion, render_chat
from frugal_r1.model.config import preset
from frugal_r1.model.transformer import DeepSeekV3
from frugal_r1.tokenizer import save_tokenizer, train_tokenizer

QUESTIONS = ["What is 17 + 25?", "Count the legs of 3 spiders and 2 cats.", "Use 3, 5, 7 and 9 to make 24.",
             "What is 12 * 12 - 44?"]


def build_model(out: Path, preset_name: str) -> Path:
    texts = [render_chat([{"role": "user", "content": q}], True) + format_completion("let me think " * 4, "42")
             for q in QUESTIONS] * 50
    tokenizer = train_tokenizer(texts, vocab_size=1024)
    config = preset(preset_name, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    DeepSeekV3(config).save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen([sys.executable, "-m", "frugal_r1.cli", "serve", "--model", str(model), "--port",
                                str(port), "--threads", str(threads), "--model-name", "bench",
                                "--log-level", "warning"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


async def one_request(client: openai.AsyncOpenAI, index: int, max_tokens: int, stream: bool) -> int:
    messages = [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}]
    common = dict(model="bench", messages=messages, max_tokens=max_tokens, temperature=0.6, top_p=0.95,
                  seed=index, extra_body={"ignore_eos": True})
    if not stream:
        reply = await client.chat.completions.create(**common)
        return reply.usage.completion_tokens
    usage = None
    async for chunk in await client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                            **common):
        usage = chunk.usage or usage
    return usage.completion_tokens


async def run_clients(url: str, clients: int, requests: int, max_tokens: int, stream: bool) -> tuple[int, float]:
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits, timeout=600) as http:
        client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, http_client=http)

        async def one_client(c: int) -> int:
            return sum([await one_request(client, c * requests + r, max_tokens, stream) for r in range(requests)])

        await one_request(client, 0, 8, stream)  # warm-up: connections, first prefill
        start = time.perf_counter()
        tokens = await asyncio.gather(*(one_client(c) for c in range(clients)))
        elapsed = time.perf_counter() - start
    expected = clients * requests * max_tokens
    if sum(tokens) != expected:
        raise SystemExit(f"expected {expected} completion tokens, got {sum(tokens)}")
    return sum(tokens), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-stream", dest="stream", action="store_false")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model", args.preset)
        port = free_port()
        server = start_server(model, port, args.threads)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            single = asyncio.run(run_clients(url, 1, args.requests, args.max_tokens, args.stream))
            many = asyncio.run(run_clients(url, args.clients, args.requests, args.max_tokens, args.stream))
            stats = httpx.get(f"http://127.0.0.1:{port}/health").json()
        finally:
            server.terminate()
            server.wait(30)
    mode = "streaming" if args.stream else "non-streaming"
    print(f"{args.preset} preset, {mode}, max_tokens {args.max_tokens} (ignore_eos), {args.requests} requests "
          f"per client, server torch threads {args.threads}")
    rates = []
    for clients, (tokens, elapsed) in ((1, single), (args.clients, many)):
        rates.append(tokens / elapsed)
        print(f"  {clients:>2} client(s): {tokens:6d} completion tokens in {elapsed:6.2f}s = "
              f"{tokens / elapsed:8.1f} tokens/s aggregate")
    ratio = rates[1] / rates[0]
    print(f"  ratio {args.clients} clients / 1 client: {ratio:.1f}x (target >= 4x)  "
          f"[most rows decoded together: {stats['max_live_rows']}]")
    if ratio < 4:
        sys.exit(1)


if __name__ == "__main__":
    main()
