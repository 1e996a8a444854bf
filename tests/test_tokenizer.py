"""The tokenizer: special ids, digit splitting, byte-level round trip, saving/loading, the encoders."""

import json
import random

import pytest
import reasoning_gym
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers

from frugal_r1 import chat
from frugal_r1 import tokenizer as tk
from frugal_r1.errors import UserError

VOCAB_SIZE = 600


def corpus() -> list[str]:
    texts = []
    for name in ("chain_sum", "leg_counting"):
        for entry in reasoning_gym.create_dataset(name, size=500, seed=7):
            texts.append(chat.format_trace(entry["question"], "Let me work it out step by step.",
                                           str(entry["answer"])))
    return texts + ["Grüße aus Köln. Ça va? 日本語のテキスト 🎉"] * 5


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return tk.train_tokenizer(corpus(), VOCAB_SIZE, out, model_max_length=2048), out


def test_special_tokens_have_fixed_single_ids(saved):
    tokenizer, _ = saved
    assert tk.SPECIAL_TOKENS[:3] == ["<|bos|>", "<|eos|>", "<|pad|>"]
    for expected_id, token in enumerate(tk.SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == expected_id
        assert tk.encode_text(tokenizer, f"x{token}y")[1:-1] == [expected_id]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (tk.BOS_ID, tk.EOS_ID,
                                                                                       tk.PAD_ID)
    assert (tk.THINK_START_ID, tk.ANSWER_END_ID) == (5, 8)
    # Training cut special-token text out of the corpus, so no merge was spent on pieces of it.
    assert not [t for t in tokenizer.get_vocab() if "think" in t and t not in tk.SPECIAL_TOKENS]


def test_skipping_special_tokens_drops_markers_and_keeps_tags(saved):
    tokenizer, out = saved
    text = "<|bos|><|User|>2+2?<|Assistant|><think>\n2+2=4\n</think>\n<answer>4</answer><|eos|><|pad|>"
    kept = "2+2?<think>\n2+2=4\n</think>\n<answer>4</answer>"
    for loaded in (tokenizer, AutoTokenizer.from_pretrained(out)):
        ids = tk.encode_text(loaded, text)
        assert tk.decode(loaded, ids) == text and tk.decode(loaded, ids, skip_special_tokens=True) == kept
        assert loaded.decode(ids, skip_special_tokens=True) == kept


def test_vocab_size_is_respected_and_merges_are_learned(saved):
    tokenizer, _ = saved
    assert tk.MIN_VOCAB_SIZE < len(tokenizer) <= VOCAB_SIZE
    with pytest.raises(UserError, match="too small"):
        tk.train_tokenizer(["abc"], 100)


def test_every_digit_is_its_own_token(saved):
    tokenizer, _ = saved
    assert tokenizer.convert_ids_to_tokens(tk.encode_text(tokenizer, "1234")) == ["1", "2", "3", "4"]
    for text in ("9999 + 1 = 10000", "x=-4072", "3.14159", "٣٤"):
        digits = [t for t in tokenizer.convert_ids_to_tokens(tk.encode_text(tokenizer, text))
                  if any(c.isdigit() for c in t)]
        assert all(len(t) == 1 for t in digits if t.isascii()), digits
    assert len(tk.encode_text(tokenizer, "1234")) == 4


def test_decode_encode_round_trips_any_text(saved):
    tokenizer, _ = saved
    texts = ["", "plain", "héllo wörld", "\x00\x00nul\x00", "emoji 🎉👩‍👩‍👧 ok", "日本語", "tabs\t\tand\r\nlines\n\n",
             "  leading and trailing  ", "<think>\n12 + 30 = 42\n</think>\n<answer>42</answer>", "<|bos|>x<|eos|>",
             "\u200b\ufeff zero width", "Ünïcödé ́combining"]
    rng = random.Random(0)
    for _ in range(200):
        chars = [chr(rng.choice([rng.randrange(0, 128), rng.randrange(128, 0xD800),
                                 rng.randrange(0xE000, 0x110000)])) for _ in range(rng.randrange(1, 30))]
        texts.append("".join(chars))
    for text in texts:
        assert tk.decode(tokenizer, tk.encode_text(tokenizer, text)) == text, repr(text)


def test_saved_directory_loads_with_auto_tokenizer(saved):
    tokenizer, out = saved
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chat.CHAT_TEMPLATE
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert config["model_max_length"] == 2048
    for loaded in (AutoTokenizer.from_pretrained(out), tk.load_tokenizer(out)):
        assert isinstance(loaded, PreTrainedTokenizerFast)
        for text in corpus()[::97]:
            assert loaded.encode(text, add_special_tokens=False) == tk.encode_text(tokenizer, text)
        assert loaded.chat_template == chat.CHAT_TEMPLATE


def test_load_tokenizer_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        tk.load_tokenizer(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        tk.load_tokenizer(tmp_path / "file")
    with pytest.raises(UserError, match="no tokenizer files"):
        tk.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(UserError, match="cannot load"):
        tk.load_tokenizer(tmp_path)


def test_any_local_hf_tokenizer_loads(tmp_path):
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "</s>": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path)
    foreign = tk.load_tokenizer(tmp_path)
    assert tk.encode_text(foreign, "hello world") == [1, 2]
    assert tk.encode_prompt(foreign, "hello") == [1]  # no bos token: nothing prepended
    with pytest.raises(UserError, match="no eos token"):
        tk.encode_sft_example(foreign, "hello", "world")


def test_sft_example_masks_the_completion_and_eos_only(saved):
    tokenizer, out = saved
    messages = [{"role": "user", "content": "State the final answer: 12 + 30 ="}]
    prompt = chat.render_chat(messages, add_generation_prompt=True)
    completion = chat.format_completion("12 + 30 = 42", "42")
    ids, mask = tk.encode_sft_example(tokenizer, prompt, completion)
    prompt_ids = tk.encode_prompt(tokenizer, prompt)
    assert prompt_ids[0] == tk.BOS_ID and prompt_ids.count(tk.BOS_ID) == 1
    assert prompt_ids[-2:] == [tk.THINK_START_ID, tk.encode_text(tokenizer, "\n")[0]]
    # The prompt is exactly what transformers' chat template gives; generation starts from it.
    rendered = AutoTokenizer.from_pretrained(out).apply_chat_template(messages, add_generation_prompt=True)
    assert rendered["input_ids"] == prompt_ids
    assert ids[:len(prompt_ids)] == prompt_ids and mask == [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))
    assert ids[-1] == tk.EOS_ID and ids[-2] == tk.ANSWER_END_ID
    assert tk.decode(tokenizer, ids) == prompt + completion + chat.EOS
    assert tk.encode_sft_example(tokenizer, prompt, completion + chat.EOS) == (ids, mask)  # eos not doubled


def test_prompt_and_completion_do_not_merge_across_the_boundary(saved):
    tokenizer, _ = saved
    prompts = [chat.render_chat([{"role": "user", "content": q}], True) for q in ("What is 7 * 8?", "Count legs.")]
    prompts += [chat.r1_zero_prompt("What is 7 * 8?")]
    completions = [chat.format_completion("7 * 8 = 56", "56"), "Let me think.\n</think>\n<answer>56</answer>",
                   "56\n</think>\n<answer>56</answer>", " <think> 7*8=56 </think> <answer>56</answer>"]
    for prompt in prompts:
        for completion in completions:
            joint = tk.encode_prompt(tokenizer, prompt + completion) + [tk.EOS_ID]
            assert joint == tk.encode_sft_example(tokenizer, prompt, completion)[0], (prompt, completion)


def test_pretrain_document_is_bos_text_eos(saved):
    tokenizer, _ = saved
    text = chat.format_trace("What is 2 + 2?", "2 + 2 = 4", "4")
    ids = tk.encode_pretrain_document(tokenizer, text)
    assert ids[0] == tk.BOS_ID and ids[-1] == tk.EOS_ID and tk.decode(tokenizer, ids[1:-1]) == text
    assert tk.encode_prompt(tokenizer, chat.r1_zero_prompt("2+2?"))[0] == tk.BOS_ID
