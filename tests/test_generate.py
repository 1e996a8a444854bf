"""Generation: greedy and log-probs against the full forward, padding invariance, stops, bad input,
MTP speculative decoding (token-identical greedy, target distribution when sampling), the HF backend."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from frugal_r1.generate.speculative import agreeing_mtp
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from frugal_r1.errors import UserError
from frugal_r1.generate import Engine, HFBackend, SamplingParams, acceptance_rate, generate, load_backend
from frugal_r1.model.config import preset
from frugal_r1.model.transformer import DeepSeekV3

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25], [26, 27, 28, 29]]
TEXTS = ["the cat sat on the mat", "a dog", "one two three four five six", "hello world, hello moon"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and a busy shared CPU makes two spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0, **overrides) -> DeepSeekV3:
    torch.manual_seed(seed)
    model = DeepSeekV3(preset("tiny", **overrides)).eval()
    with torch.no_grad():
        model.norm.weight.fill_(4.0)  # sharper next-token distributions than the 0.02 init gives
    return model


@pytest.fixture(scope="module")
def model() -> DeepSeekV3:
    return tiny_model()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TEXTS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def full_forward_logits(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Logits [len(tokens), V] predicting each generated token, from one forward without a cache."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0] if isinstance(model, DeepSeekV3) else model(input_ids=ids).logits[0]
    return logits[len(prompt) - 1: len(prompt) + len(tokens) - 1].float()


def greedy_reference(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(full_forward_logits(model, ids, [0])[0].argmax()))
    return ids[len(prompt):]


GREEDY = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
SAMPLED = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, max_new_tokens=12, ignore_eos=True, seed=7)


# ----------------------------------------------------------------------------------------------------------
def test_greedy_equals_argmax_of_full_forward(model):
    for completion, prompt in zip(Engine(model).generate(PROMPTS, GREEDY), PROMPTS):
        assert completion.token_ids == greedy_reference(model, prompt, 12)
        assert completion.finish_reason == "length" and completion.prompt_ids == prompt


def test_logprobs_are_log_softmax_of_full_forward_at_sampled_tokens(model):
    for completion, prompt in zip(Engine(model).generate(PROMPTS, SAMPLED), PROMPTS):
        logits = full_forward_logits(model, prompt, completion.token_ids)
        expected = logits.log_softmax(-1).gather(1, torch.tensor(completion.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)


def test_greedy_output_does_not_depend_on_the_batch(model):
    engine = Engine(model)
    alone = engine.generate([PROMPTS[0]], GREEDY)[0].token_ids
    for batch in ([PROMPTS[1], PROMPTS[0]], [PROMPTS[2], PROMPTS[0], PROMPTS[3]]):  # shorter / longer neighbours
        assert engine.generate(batch, GREEDY)[1].token_ids == alone


def test_sampling_is_seeded_per_row(model):
    engine = Engine(model)
    first = engine.generate(PROMPTS, SAMPLED)
    assert [c.token_ids for c in engine.generate(PROMPTS, SAMPLED)] == [c.token_ids for c in first]
    # A row's draws depend on its own prompt index and the seed, not on the rest of the batch.
    assert engine.generate([PROMPTS[0], PROMPTS[2]], SAMPLED)[0].token_ids == first[0].token_ids
    other = dataclasses.replace(SAMPLED, seed=8)
    assert [c.token_ids for c in engine.generate(PROMPTS, other)] != [c.token_ids for c in first]


def test_n_samples_per_prompt_differ_and_are_grouped(model):
    params = SamplingParams(temperature=1.0, max_new_tokens=6, ignore_eos=True, seed=0, n=3)
    out = Engine(model).generate(PROMPTS[:2], params)
    assert [(c.prompt_index, c.sample_index) for c in out] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len({tuple(c.token_ids) for c in out[:3]}) > 1


def test_stop_token_ends_a_row_and_compaction_keeps_outputs(model):
    full = Engine(model).generate(PROMPTS, GREEDY)
    stop = full[2].token_ids[4]
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True, stop_token_ids=(stop,))
    never, always = Engine(model, compact_fraction=2.0), Engine(model, compact_fraction=0.01)
    for a, b, reference in zip(never.generate(PROMPTS, params), always.generate(PROMPTS, params), full):
        assert a.token_ids == b.token_ids and a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        if stop in reference.token_ids:
            cut = reference.token_ids.index(stop) + 1
            assert a.token_ids == reference.token_ids[:cut] and a.finish_reason == "stop" and a.stop == stop
        else:
            assert a.token_ids == reference.token_ids and a.finish_reason == "length"


def test_context_limits_the_budget(model):
    long_prompt = list(range(3, 3 + model.config.max_position_embeddings - 3))
    out = Engine(model).generate([long_prompt, PROMPTS[1]], GREEDY)
    assert len(out[0].token_ids) == 3 and out[0].finish_reason == "length"
    assert len(out[1].token_ids) == 12


@pytest.mark.parametrize("bad", [
    dict(prompts=[[]]), dict(prompts=[""]), dict(prompts=[list(range(5, 1029))]), dict(max_new_tokens=0),
    dict(max_new_tokens=-3), dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1.0), dict(top_k=-1),
    dict(prompts=[[1, 99999]]), dict(stop_strings=("x",)), dict(prompts="a string, not a list"),
])
def test_bad_input_is_a_user_error(model, bad):
    prompts = bad.pop("prompts", PROMPTS)
    with pytest.raises(UserError):
        Engine(model).generate(prompts, SamplingParams(**bad))


# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_model(tokenizer) -> DeepSeekV3:
    return tiny_model(1, vocab_size=len(tokenizer))


def test_text_prompts_and_eos(text_model, tokenizer):
    engine = Engine(text_model, tokenizer)
    out = engine.generate(TEXTS, SamplingParams(temperature=0, max_new_tokens=10))
    for completion, text in zip(out, TEXTS):
        assert completion.prompt_ids == [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)
        body = completion.token_ids[:-1] if completion.finish_reason == "stop" else completion.token_ids
        assert completion.text == tokenizer.decode(body)
        assert (completion.finish_reason == "stop") == (completion.token_ids[-1] == tokenizer.eos_token_id)


def test_stop_strings_cut_exactly(text_model, tokenizer):
    engine = Engine(text_model, tokenizer)
    params = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
    checked = 0
    for full in engine.generate(TEXTS, params):
        text = tokenizer.decode(full.token_ids)
        for start, length in ((3, 3), (8, 2), (1, 5)):
            stop = text[start:start + length]
            if len(stop) < length or stop.isspace():
                continue
            with_stop = dataclasses.replace(params, stop_strings=(stop, "@@@"))
            cut = engine.generate([full.prompt_ids], with_stop)[0]
            spec = Engine(text_model, tokenizer, speculative=True).generate([full.prompt_ids], with_stop)[0]
            assert (spec.token_ids, spec.text) == (cut.token_ids, cut.text)
            # The first token whose text completes the stop string ends the row; the text stops before it.
            end = next(i for i in range(1, len(full.token_ids) + 1) if stop in tokenizer.decode(full.token_ids[:i]))
            assert cut.token_ids == full.token_ids[:end] and cut.logprobs == pytest.approx(full.logprobs[:end])
            assert cut.text == text[:text.index(stop)]
            assert cut.finish_reason == "stop" and cut.stop == stop
            checked += 1
    assert checked >= 6


# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("main_attention", [None, 0.0, 0.5])
def test_speculative_greedy_is_token_identical(main_attention):
    model = tiny_model(2)
    if main_attention is not None:
        agreeing_mtp(model, main_attention)
    params = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)
    plain = Engine(model).generate(PROMPTS, params)
    spec = Engine(model, speculative=True).generate(PROMPTS, params)
    for a, b in zip(plain, spec):
        assert a.token_ids == b.token_ids and a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    rate = acceptance_rate(spec)
    assert {None: rate < 0.3, 0.0: rate == 1.0, 0.5: 0.2 < rate < 0.9}[main_attention], rate


def test_speculative_stops_and_compaction_match_plain():
    model = agreeing_mtp(tiny_model(3), 0.5)
    full = Engine(model).generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=15, ignore_eos=True))
    stops = (full[0].token_ids[5], full[3].token_ids[2])
    params = SamplingParams(temperature=0, max_new_tokens=15, ignore_eos=True, stop_token_ids=stops)
    plain = Engine(model).generate(PROMPTS, params)
    for fraction in (0.01, 2.0):
        spec = Engine(model, speculative=True, compact_fraction=fraction).generate(PROMPTS, params)
        assert [c.token_ids for c in spec] == [c.token_ids for c in plain]
        assert [c.finish_reason for c in spec] == [c.finish_reason for c in plain]


def test_speculative_sampling_keeps_the_target_distribution():
    """Marginals of tokens 2 and 3 (the first verified draft and the bonus token) over 20000 seeded rows
    against the exact distribution, computed by enumerating the first tokens: Pearson's χ² stays under 35
    (df ≤ 11; p ≈ 3e-4 under the null). Accepting 1.3× too often gives χ² ≈ 137."""
    model = tiny_model(4, vocab_size=12)
    params = SamplingParams(temperature=0.9, top_k=8, max_new_tokens=3, ignore_eos=True, seed=0, n=20000)
    prompt = [3, 4, 5]
    out = Engine(model, speculative=True).generate([prompt], params)
    assert 0.2 < acceptance_rate(out) < 0.8  # both acceptance and rejection are exercised

    from frugal_r1.generate.sampling import filtered_probs

    def next_probs(prefixes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return filtered_probs(model(prefixes).logits[:, -1], params)

    vocab = model.config.vocab_size
    base = torch.tensor([prompt])
    p1 = next_probs(base)[0]
    grid1 = torch.cat([base.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
    p2_given_1 = next_probs(grid1)  # [t1, t2]
    grid2 = torch.cat([grid1.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(vocab)[:, None]], dim=1)
    p3_given_12 = next_probs(grid2).view(vocab, vocab, vocab)
    joint12 = p1[:, None] * p2_given_1
    tokens = torch.tensor([c.token_ids for c in out])
    for column, expected in ((0, p1), (1, joint12.sum(0)), (2, (joint12[:, :, None] * p3_given_12).sum((0, 1)))):
        counts = torch.bincount(tokens[:, column], minlength=vocab).double()
        expected = expected.double() * len(out)
        assert torch.all(counts[expected == 0] == 0)
        chi2 = ((counts - expected)[expected > 0] ** 2 / expected[expected > 0]).sum()
        assert chi2 < 35, (column, chi2, counts, expected)


def test_speculative_needs_mtp():
    with pytest.raises(UserError):
        Engine(tiny_model(0, num_nextn_predict_layers=0), speculative=True)


# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("qwen")
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(5)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.model.norm.weight.fill_(4.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_backend_greedy_logprobs_and_padding(qwen_dir):
    backend = load_backend(qwen_dir)
    assert isinstance(backend, HFBackend)
    hf = backend.model
    greedy = backend.generate(TEXTS, SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True))
    for completion in greedy:
        assert completion.token_ids == greedy_reference(hf, completion.prompt_ids, 10)
    alone = backend.generate([TEXTS[0]], SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True))
    assert alone[0].token_ids == greedy[0].token_ids
    sampled = backend.generate(TEXTS, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=3))
    for completion in sampled:
        logits = full_forward_logits(hf, completion.prompt_ids, completion.token_ids)
        expected = logits.log_softmax(-1).gather(1, torch.tensor(completion.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)
        assert completion.text is not None


def test_hf_backend_and_engine_agree_on_our_checkpoint(model, tmp_path):
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = HFBackend.from_pretrained(tmp_path)
    ours = load_backend(tmp_path)
    assert isinstance(ours, Engine)
    params = SamplingParams(temperature=0.7, max_new_tokens=8, ignore_eos=True, seed=11)
    for a, b in zip(ours.generate(PROMPTS, params), hf.generate(PROMPTS, params)):
        assert a.token_ids == b.token_ids and a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert generate(model, PROMPTS[:1], temperature=0, max_new_tokens=3, ignore_eos=True)[0].token_ids == \
        ours.generate(PROMPTS[:1], SamplingParams(temperature=0, max_new_tokens=3, ignore_eos=True))[0].token_ids


def test_filters_match_their_definitions():
    from frugal_r1.generate.sampling import filtered_probs, sample_from, uniform

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    logits[:2, 7] += 12  # rows whose top token alone makes the nucleus, beside rows that need the sorted mass
    for temperature, top_k, top_p in ((1.0, 0, 0.8), (0.7, 10, 1.0), (1.3, 20, 0.5), (1.0, 0, 1e-6), (0.6, 0, 0.95)):
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
        probs = (logits / temperature).softmax(-1)
        if top_k:
            probs = probs.masked_fill(probs < probs.topk(top_k).values[:, -1:], 0)
            probs = probs / probs.sum(-1, keepdim=True)
        expected = torch.zeros_like(probs)
        for row in range(len(probs)):  # sorted definition: add tokens until the mass reaches top_p
            mass = 0.0
            for token in probs[row].argsort(descending=True).tolist():
                if mass >= top_p:
                    break
                expected[row, token] = probs[row, token]
                mass += probs[row, token].item()
        expected = expected / expected.sum(-1, keepdim=True)
        assert torch.allclose(filtered_probs(logits, params), expected, atol=1e-6)
    probs = filtered_probs(logits, SamplingParams(top_k=3))
    keys = torch.arange(6)
    draws = torch.stack([sample_from(probs, uniform(keys, counter, 0)) for counter in range(2000)])
    assert torch.all(probs.gather(1, draws.T) > 0)
    frequency = torch.stack([torch.bincount(draws[:, row], minlength=50) for row in range(6)]) / 2000
    assert (frequency - probs).abs().max() < 0.05


def test_generation_leaves_a_training_model_as_it_was(model):
    model.train()
    try:
        loads = [moe.expert_load.clone() for moe in model.moe_layers()]
        out = Engine(model).generate(PROMPTS[:2], GREEDY)
        assert model.training
        assert all(torch.equal(a, moe.expert_load) for a, moe in zip(loads, model.moe_layers()))
    finally:
        model.eval()
    assert [c.token_ids for c in out] == [c.token_ids for c in Engine(model).generate(PROMPTS[:2], GREEDY)]
