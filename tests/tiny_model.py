"""A tiny frugal-r1 model directory for the eval, serve and chat tests, built in-process in a few seconds.

The model is the `tiny` preset with a byte-level BPE trained on a few chat transcripts, then fitted for a
few dozen steps on one reply, so that after the chat generation prompt it writes reasoning, `</think>`,
an `<answer>`, and eos — the shape every test of the reasoning/content split needs from a real model.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch

from frugal_r1.chat import format_completion, render_chat
from frugal_r1.model.config import preset
from frugal_r1.model.transformer import DeepSeekV3
from frugal_r1.tokenizer import encode_sft_example, save_tokenizer, train_tokenizer

REASONING = "two plus two is four"
ANSWER = "4"
QUESTIONS = ["What is 2+2?", "Add 2 and 2.", "2 + 2 = ?", "Compute two plus two.", "What is the sum of 2 and 2?",
             "Say 2+2.", "hello", "Tell me 2 plus 2"]


_BUILT: dict[tuple[int, int], Path] = {}


@contextlib.contextmanager
def one_thread():
    """One torch thread: on two shared cores a second intra-op thread makes small ops 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_model_dir(steps: int = 60, seed: int = 0) -> Path:
    """The tiny model, built once per test process (in a temporary directory) and shared by the modules."""
    key = (steps, seed)
    if key not in _BUILT or not (_BUILT[key] / "config.json").is_file():
        _BUILT[key] = build_tiny_model(Path(tempfile.mkdtemp(prefix="frugal-r1-tiny-")) / "model", steps, seed)
    return _BUILT[key]


def build_tiny_model(out: Path, steps: int = 60, seed: int = 0) -> Path:
    with one_thread():
        return _build(out, steps, seed)


def _build(out: Path, steps: int, seed: int) -> Path:
    torch.manual_seed(seed)
    completion = format_completion(REASONING, ANSWER)
    texts = [render_chat([{"role": "user", "content": q}], True) + completion for q in QUESTIONS] * 20
    texts += ["the quick brown fox jumps over the lazy dog " * 3, "0123456789 + - * / = ( )"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=400, model_max_length=256)
    vocab = -(-len(tokenizer) // 64) * 64
    config = preset("tiny", vocab_size=vocab, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = DeepSeekV3(config)
    examples = [encode_sft_example(tokenizer, render_chat([{"role": "user", "content": q}], True), completion)
                for q in QUESTIONS]
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), tokenizer.pad_token_id)
    labels = torch.full((len(examples), width), -100)
    for row, (seq, mask) in enumerate(examples):
        ids[row, :len(seq)] = torch.tensor(seq)
        targets = [t if m else -100 for t, m in zip(seq[1:], mask[1:])]
        labels[row, :len(targets)] = torch.tensor(targets)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(ids, labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out
