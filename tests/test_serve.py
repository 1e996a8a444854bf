"""The OpenAI-compatible server, against a live uvicorn on 127.0.0.1 with the official `openai` client:
non-streaming and streaming replies with reasoning_content before content, n, seeds, stops, usage,
concurrent clients batched together, OpenAI-style errors, disconnects freeing their rows, and a load
test of 32 streaming clients mixed with malformed requests. Below the HTTP layer: the scheduler gives
the engine's own tokens whatever shares the batch, and the streaming text split never takes text back."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
import uvicorn

from frugal_r1.chat import format_completion, render_chat
from frugal_r1.generate import HFBackend, SamplingParams, load_backend
from frugal_r1.serve import Done, Scheduler
from frugal_r1.serve.app import create_app, prepare
from frugal_r1.serve.schemas import ChatCompletionRequest
from frugal_r1.serve.stream import ChoiceStream, hold_partial, split_visible
from frugal_r1.tokenizer import encode_prompt
from tiny_model import ANSWER, REASONING, one_thread, tiny_model_dir

KEY = "test-key"
MODEL = "tiny"
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return tiny_model_dir()


@pytest.fixture(scope="module")
def backend(model_dir):
    return load_backend(model_dir)


class LiveServer:
    def __init__(self, app):
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/health").json()

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def server(backend):
    with LiveServer(create_app(backend, MODEL, api_key=KEY)) as live:
        yield live


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# --- replies ---------------------------------------------------------------------------------------
def test_models(server):
    assert [m.id for m in server.client().models.list().data] == [MODEL]
    assert server.client().models.retrieve(MODEL).id == MODEL


def test_non_streaming_splits_reasoning_from_content(server, backend):
    reply = server.client().chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40)
    message = reply.choices[0].message
    assert message.reasoning_content == REASONING and message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop" and reply.object == "chat.completion"
    prompt_tokens = len(encode_prompt(backend.tokenizer, render_chat(QUESTION, True)))
    completion_tokens = len(backend.tokenizer.encode(format_completion(REASONING, ANSWER))) + 1  # + eos
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, completion_tokens)
    assert reply.usage.total_tokens == prompt_tokens + completion_tokens


def collect(stream) -> tuple[list, dict[int, list[tuple[str, str]]], dict[int, str]]:
    chunks, deltas, finish = [], {}, {}
    for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            delta = choice.delta
            for kind in ("reasoning_content", "content"):
                value = getattr(delta, kind, None)
                if value:
                    deltas.setdefault(choice.index, []).append((kind, value))
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return chunks, deltas, finish


def test_streaming_sends_reasoning_then_content_then_usage(server):
    stream = server.client().chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40,
                                                     stream=True, stream_options={"include_usage": True})
    chunks, deltas, finish = collect(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    kinds = [kind for kind, _ in deltas[0]]
    assert kinds == sorted(kinds, key=lambda k: k == "content") and len(kinds) > 2  # reasoning first, in pieces
    assert "".join(v for k, v in deltas[0] if k == "reasoning_content") == REASONING
    assert "".join(v for k, v in deltas[0] if k == "content") == ANSWER
    assert finish == {0: "stop"}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_n_and_seed(server, backend):
    client = server.client()
    kwargs = dict(model=MODEL, messages=QUESTION, temperature=1.5, max_tokens=24, n=4)
    first = client.chat.completions.create(seed=7, **kwargs)
    again = client.chat.completions.create(seed=7, **kwargs)
    texts = lambda reply: [(c.message.reasoning_content, c.message.content) for c in reply.choices]  # noqa: E731
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert texts(first) == texts(again)
    # The tiny model is sure of its answer, and how sure depends on the machine's float kernels; a seed changes
    # what is drawn, so among a few other seeds one must give different texts.
    assert any(texts(client.chat.completions.create(seed=seed, **kwargs)) != texts(first) for seed in range(8, 16))
    # The same tokens as the engine gives this prompt alone.
    reference = backend.generate([render_chat(QUESTION, True)],
                                 SamplingParams(temperature=1.5, top_p=0.95, max_new_tokens=24, n=4, seed=7))
    assert texts(first) == [split_visible(c.text, True, True) for c in reference]
    _, _, finish = collect(client.chat.completions.create(stream=True, seed=7, **kwargs))
    assert sorted(finish) == [0, 1, 2, 3]


def test_stop_and_max_tokens(server):
    client = server.client()
    stopped = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, stop=[" plus"])
    assert stopped.choices[0].message.reasoning_content == "two" and stopped.choices[0].finish_reason == "stop"
    _, deltas, _ = collect(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                                          stop=" is", stream=True))
    assert "".join(v for _, v in deltas[0]) == "two plus two"  # a stop string is never streamed, even in part
    short = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert short.choices[0].message.content == ""  # still thinking when cut


def test_multi_turn_prompt_keeps_answers_only(server, backend):
    messages = QUESTION + [{"role": "assistant", "content": "4"}, {"role": "user", "content": "hello"}]
    body = ChatCompletionRequest.model_validate_json(json.dumps({"model": MODEL, "messages": messages}))
    expected = render_chat(QUESTION + [{"role": "assistant", "content": "<answer>4</answer>"},
                                       {"role": "user", "content": "hello"}], True)
    assert prepare(backend, body).ids == encode_prompt(backend.tokenizer, expected)
    reply = server.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=30)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_concurrent_clients_are_batched_together(server):
    before = server.stats()["max_live_rows"]
    results: list = [None] * 8

    def ask(i: int) -> None:
        results[i] = server.client().chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=120, temperature=1.0, seed=i,
            extra_body={"ignore_eos": True})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(r is not None and r.usage.completion_tokens == 120 for r in results)
    assert server.stats()["max_live_rows"] >= max(before, 4)


# --- errors ----------------------------------------------------------------------------------------
def post(server, body, key: str | None = KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(f"{server.url}/v1/chat/completions", content=raw, headers=headers, timeout=30)
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code
    return error


def test_errors_look_like_openai(server):
    ok = {"model": MODEL, "messages": QUESTION}
    assert_error(post(server, None, raw=b'{"model": "tiny", "messages": ['), 400, "json_invalid")
    assert_error(post(server, {**ok, "temperature": "hot"}), 400)
    assert_error(post(server, {**ok, "n": True}), 400)
    assert post(server, {**ok, "max_tokens": "5"}).json()["error"]["param"] == "max_tokens"
    assert_error(post(server, {"model": MODEL}), 400)
    assert_error(post(server, {**ok, "messages": []}), 400)
    assert_error(post(server, {**ok, "temperature": 3}), 400)
    assert_error(post(server, {**ok, "messages": [{"role": "wizard", "content": "hi"}]}), 400)
    assert_error(post(server, {**ok, "tools": [{"type": "function"}]}), 400, "unsupported_parameter")
    assert_error(post(server, {**ok, "stop": ["a", "b", "c", "d", "e"]}), 400)
    assert_error(post(server, {**ok, "n": 1000}), 400)
    with_reasoning = QUESTION + [{"role": "assistant", "content": "4", "reasoning_content": "two plus two"},
                                 {"role": "user", "content": "and 3+3?"}]
    error = assert_error(post(server, {**ok, "messages": with_reasoning}), 400)
    assert "reasoning_content" in error["message"]
    long = [{"role": "user", "content": "word " * 400}]
    assert_error(post(server, {**ok, "messages": long}), 400, "context_length_exceeded")
    assert_error(post(server, {**ok, "max_tokens": 100_000}), 400, "context_length_exceeded")
    assert_error(post(server, {**ok, "model": "gpt-4"}), 404, "model_not_found")
    assert_error(post(server, ok, key=None), 401, "invalid_api_key")
    assert_error(post(server, ok, key="wrong"), 401, "invalid_api_key")
    assert_error(httpx.get(f"{server.url}/v1/nothing-here"), 404)


def test_errors_through_the_openai_client(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10_000)
    assert caught.value.code == "context_length_exceeded"


# --- disconnects -----------------------------------------------------------------------------------
@pytest.fixture
def slow_steps(server, monkeypatch):
    """Decode steps of 20 ms, so a request is still running when its client goes away."""
    batch = server.app.state.scheduler.batch
    step = batch.step

    def slow(*args):
        time.sleep(0.02)
        return step(*args)

    monkeypatch.setattr(batch, "step", slow)


def test_a_client_that_disconnects_mid_stream_frees_its_rows(server, slow_steps):
    assert wait_until(lambda: server.stats()["live_rows"] == 0)
    cancelled = server.stats()["cancelled"]
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 200, "ignore_eos": True, "n": 2, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert server.stats()["live_rows"] == 2
    assert wait_until(lambda: server.stats()["live_rows"] == 0)
    assert server.stats()["cancelled"] == cancelled + 1


def test_a_non_streaming_client_that_gives_up_frees_its_rows(server, slow_steps):
    assert wait_until(lambda: server.stats()["live_rows"] == 0)
    cancelled = server.stats()["cancelled"]
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 200, "ignore_eos": True, "n": 4}
    with httpx.Client(timeout=httpx.Timeout(30, read=0.5)) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert wait_until(lambda: server.stats()["live_rows"] == 0, timeout=3)  # long before 200 steps of 20 ms
    assert server.stats()["cancelled"] == cancelled + 1


# --- load ------------------------------------------------------------------------------------------
MALFORMED = [
    b'{"model": "tiny", "messages": [',
    b'{"model": "tiny", "messages": "hello"}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "warm"}',
    b'{"model": "tiny", "messages": [{"role": "assistant", "content": "4", "reasoning_content": "x"}]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999}',
    b'not json at all',
    b'',
]


def test_load_32_streaming_clients_mixed_with_malformed_requests(server):
    statuses: list[int] = []

    async def record(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async def run() -> tuple[list, list[int]]:
        async with httpx.AsyncClient(event_hooks={"response": [record]}, timeout=120) as http:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, http_client=http)

            async def stream(i: int):
                response = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"What is 2+2? ({i})"}], stream=True,
                    max_tokens=16 + i % 9, temperature=1.0, seed=i, n=1 + (i % 4 == 0),
                    stream_options={"include_usage": True}, extra_body={"ignore_eos": i % 2 == 0})
                finish, usage = {}, None
                async for chunk in response:
                    for choice in chunk.choices:
                        if choice.finish_reason:
                            finish[choice.index] = choice.finish_reason
                    usage = chunk.usage or usage
                return i, finish, usage

            async def malformed(i: int) -> int:
                await asyncio.sleep(random.Random(i).uniform(0, 0.3))
                response = await http.post(f"{server.url}/v1/chat/completions", content=MALFORMED[i % len(MALFORMED)],
                                           headers={"Authorization": f"Bearer {KEY}"})
                return response.status_code

            jobs = [stream(i) for i in range(32)] + [malformed(i) for i in range(16)]
            random.Random(0).shuffle(jobs)
            results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=120)
            return [r for r in results if isinstance(r, tuple)], [r for r in results if isinstance(r, int)]

    start = time.time()
    streams, bad = asyncio.run(run())
    assert len(streams) == 32
    for i, finish, usage in streams:  # every choice of every valid request finished, with usage
        assert sorted(finish) == list(range(1 + (i % 4 == 0))), (i, finish)
        assert usage is not None and usage.completion_tokens > 0
    assert sorted(set(bad)) == [400]
    assert not [s for s in statuses if s >= 500] and statuses.count(200) == 32
    assert time.time() - start < 120
    assert wait_until(lambda: server.stats()["live_rows"] == 0)


# --- below HTTP ------------------------------------------------------------------------------------
def test_scheduler_gives_the_engines_tokens_whatever_shares_the_batch(backend):
    prompts = [encode_prompt(backend.tokenizer, render_chat([{"role": "user", "content": q}], True))
               for q in ["What is 2+2?", "a much longer question than the others, what is two plus two?", "x"]]
    params = [SamplingParams(temperature=1.5, top_p=0.9, top_k=20 * i, max_new_tokens=20 + 7 * i, n=1 + i,
                             seed=i, ignore_eos=i == 1) for i in range(3)]
    scheduler = Scheduler(backend, batch_window_s=0).start()
    results = {}

    def run(i: int) -> None:
        time.sleep(0.02 * i)  # later requests join a running batch
        for event in scheduler.events(prompts[i], params[i], stream=i == 0):
            if isinstance(event, Done):
                results[i] = event.completions

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    scheduler.stop()
    for i in range(3):
        reference = backend.generate([prompts[i]], params[i])
        assert [c.token_ids for c in results[i]] == [c.token_ids for c in reference]
        assert [c.text for c in results[i]] == [c.text for c in reference]


def test_hf_backend_is_served_in_batches(model_dir):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = load_backend(model_dir).tokenizer
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    hf = HFBackend(Qwen2ForCausalLM(config), tokenizer)
    prompts = [encode_prompt(tokenizer, render_chat([{"role": "user", "content": q}], True)) for q in ["a", "bb c"]]
    params = SamplingParams(temperature=1.0, max_new_tokens=10, n=2, seed=3, ignore_eos=True)
    scheduler = Scheduler(hf, batch_window_s=0.05).start()
    inboxes = [list(scheduler.events(p, params, stream=False)) for p in prompts]
    scheduler.stop()
    for prompt, events in zip(prompts, inboxes):
        assert [c.token_ids for c in events[-1].completions] == [c.token_ids for c in hf.generate([prompt], params)]


def test_stream_split_never_takes_text_back(backend):
    tokenizer = backend.tokenizer
    texts = [format_completion("let me see\n\n 2 + 2", "4") + "<|eos|>", "<think>plain</think> <answer>x</answer>",
             "no think tags at all", "two </th", "a</think>\n<answer>4</answer> trailing", "é ü 😀 </think>😀"]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        for opened in (True, False):
            for stops in ((), ("four", " 2")):
                stream = ChoiceStream(tokenizer, opened, stops)
                reasoning, content = "", ""
                for token in ids:
                    r, c = stream.feed([token])
                    assert not (c and r) or reasoning == ""  # content never precedes reasoning
                    reasoning, content = reasoning + r, content + c
                final = tokenizer.decode(ids, skip_special_tokens=False)
                r, c = stream.finish(final)
                assert (reasoning + r, content + c) == split_visible(final, True, opened)


def test_split_visible_cases():
    assert split_visible("abc\n</think>\n<answer>4</answer>", True, True) == ("abc", "4")
    assert split_visible("abc\n</think>\n<answer>4</ans", False, True) == ("abc", "4")
    assert split_visible("abc </thi", False, True) == ("abc", "")
    assert split_visible("cut short", True, True) == ("cut short", "")
    assert split_visible("<think>r</think>c", True, False) == ("r", "c")
    assert split_visible("just an answer", True, False) == ("", "just an answer")
    assert split_visible("<thi", False, False) == ("", "")
    assert hold_partial("abc</an", ["</answer>"]) == "abc" and hold_partial("abc", ["</answer>"]) == "abc"


def test_serve_command_line(model_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "frugal_r1.cli", "serve", "--model", str(model_dir),
                                "--port", str(port), "--api-key", KEY, "--log-level", "warning"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, timeout=60), process.stdout.read() if process.poll() is not None else "no answer"
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["model"]
        reply = client.chat.completions.create(model="model", messages=QUESTION, temperature=0, max_tokens=30)
        assert reply.choices[0].message.content == ANSWER
    finally:
        process.terminate()
        process.wait(30)
    bad = subprocess.run([sys.executable, "-m", "frugal_r1.cli", "serve", "--model", "/nonexistent"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
