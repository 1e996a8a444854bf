"""The tokenizer: a byte-level BPE trained locally on task text, and the encoders the stages share.

`train_tokenizer` builds one with HF `tokenizers`; it is saved as tokenizer.json + tokenizer_config.json
(bos/eos/pad, model_max_length, the Jinja chat template from `frugal_r1.chat`), so
`transformers.AutoTokenizer.from_pretrained(dir)` loads it and `apply_chat_template` renders exactly
what `frugal_r1.chat.render_chat` renders. `load_tokenizer` loads that or any local HF tokenizer dir.

Design choices:
- Special tokens have fixed ids 0..8 in `SPECIAL_TOKENS` order (bos=0, eos=1, pad=2 as in
  ModelConfig's defaults), are single ids and never split; any occurrence of their text is the token.
  The markers (bos/eos/pad/User/Assistant) are "special" in the HF sense; the tags (`<think>`,
  `</think>`, `<answer>`, `</answer>`) are added tokens that are not, as in DeepSeek-R1's and Qwen3's
  tokenizers, so decode(..., skip_special_tokens=True) (vLLM's default) drops the markers and keeps
  the tags that rewards and answer extraction read.
- Every digit is its own token (Digits(individual_digits=True) before ByteLevel), so "1234" is 4
  tokens and arithmetic sees place value. The 256-byte alphabet is always in the vocabulary and there
  is no normalizer, so decode(encode(x)) == x for any text (NUL bytes, emoji, any script).
- No post-processor: `tokenizer(text)` adds nothing. The encoders below place bos/eos themselves, so
  what is trained on, generated from and rendered by the chat template is the same, token for token.
- SFT: prompt and completion are encoded separately and concatenated. That is exactly what generation
  does (prompt ids, then sampled ids), so SFT targets are what the model must produce after the prompt.
  With our pre-tokenizer the special token `<think>` and the "\\n" after it end every prompt, so a
  joint encoding gives the same ids anyway unless the completion starts with whitespace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from frugal_r1.chat import (ANSWER_END, ANSWER_START, ASSISTANT, BOS, CHAT_TEMPLATE, EOS, PAD, THINK_END,
                            THINK_START, USER)
from frugal_r1.errors import UserError

MARKERS: list[str] = [BOS, EOS, PAD, USER, ASSISTANT]
TAGS: list[str] = [THINK_START, THINK_END, ANSWER_START, ANSWER_END]
SPECIAL_TOKENS: list[str] = MARKERS + TAGS  # id = position in this list
(BOS_ID, EOS_ID, PAD_ID, USER_ID, ASSISTANT_ID,
 THINK_START_ID, THINK_END_ID, ANSWER_START_ID, ANSWER_END_ID) = range(len(SPECIAL_TOKENS))
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256

_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _pieces(texts: Iterable[str]) -> Iterator[str]:
    # BPE training does not cut special tokens out of the text the way encoding does; cut them here so
    # no merges are spent on "think>" and the like.
    for text in texts:
        for piece in _SPECIAL_SPLIT.split(text):
            if piece and piece not in SPECIAL_TOKENS:
                yield piece


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None, *,
                    model_max_length: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` ids on `texts`; save it to `out_dir` when given."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"vocab_size {vocab_size} is too small: the special tokens and 256 bytes need "
                        f"{MIN_VOCAB_SIZE}")
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_pieces(texts), trainer)
    # The trainer marks all of them special; the tags must survive decode(skip_special_tokens=True).
    spec = json.loads(backend.to_str())
    for added in spec["added_tokens"]:
        added["special"] = added["content"] not in TAGS
    backend = Tokenizer.from_str(json.dumps(spec))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length, clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        save_tokenizer(tokenizer, out_dir)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """Write tokenizer.json + tokenizer_config.json (chat template inside, readable by older transformers)."""
    out = Path(out_dir)
    tokenizer.save_pretrained(out, save_jinja_files=False)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        # transformers 5's generic class; its old name also loads in transformers 4 (and so older vLLM).
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a local HF tokenizer directory (ours or any other with a fast tokenizer); never the network."""
    directory = Path(path)
    if not directory.exists():
        raise UserError(f"tokenizer directory {directory} does not exist")
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory; give the directory holding tokenizer.json")
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(f"{directory} has no tokenizer files (expected tokenizer.json and tokenizer_config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as error:  # whatever a broken directory makes transformers or tokenizers raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load the tokenizer in {directory}: {message}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{directory} holds a slow tokenizer; frugal-r1 needs a tokenizer.json")
    return tokenizer


def encode_text(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Ids of `text` with no bos/eos added (special-token text still becomes special ids)."""
    return tokenizer.encode(text, add_special_tokens=False)


def _eos_id(tokenizer: PreTrainedTokenizerFast) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token; set eos_token in its tokenizer_config.json")
    return tokenizer.eos_token_id


def encode_prompt(tokenizer: PreTrainedTokenizerFast, prompt: str) -> list[int]:
    """Ids to generate from: bos (when the tokenizer has one and `prompt` does not start with it) + prompt."""
    ids = encode_text(tokenizer, prompt)
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def encode_completion(tokenizer: PreTrainedTokenizerFast, completion: str) -> list[int]:
    """Ids of a completion ended by eos (not doubled if the text already ends with it)."""
    ids = encode_text(tokenizer, completion)
    eos = _eos_id(tokenizer)
    return ids if ids and ids[-1] == eos else ids + [eos]


def encode_sft_example(tokenizer: PreTrainedTokenizerFast, prompt: str,
                       completion: str) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) for SFT: loss on the completion and its eos only.

    `prompt` is `render_chat(messages, True)` (ends with `<think>\\n`) or `r1_zero_prompt(question)`;
    `completion` is what the model must write after it, e.g. `chat.format_completion(reasoning, answer)`.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = encode_completion(tokenizer, completion)
    return prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)


def encode_pretrain_document(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """bos + ids(text) + eos: one pretraining document (e.g. `chat.format_trace(...)`); train on all of it."""
    bos = tokenizer.bos_token_id
    return ([] if bos is None else [bos]) + encode_text(tokenizer, text) + [_eos_id(tokenizer)]


def decode(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """Text of `ids`; with skip_special_tokens the markers go and the tags stay."""
    return tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
