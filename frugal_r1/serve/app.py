"""The OpenAI-compatible HTTP API, with DeepSeek's `reasoning_content`: `create_app(backend, model_name)`.

    GET  /v1/models               the one model served (also /v1/models/{id})
    POST /v1/chat/completions     JSON, or SSE when "stream": true
    GET  /health                  liveness and the scheduler's counters (no key needed)

Prompt: the messages rendered by the model's chat template (`eval.chat_prompt`: R1's format for our
tokenizers, which opens `<think>\\n`). With our template an assistant message's content is wrapped back
in `<answer>…</answer>` before rendering (unless it already has tags) — the inverse of the reply's
unwrapping — so a multi-turn conversation looks to the model like the ones it was trained on.

Replies (stream.py): `message.reasoning_content` is the text inside `<think>…</think>` (null when the
model did not think at all), `message.content` the text after it with the `<answer>` wrapper removed. In
a stream each choice gets a first chunk with `role`, then `delta.reasoning_content` chunks, then
`delta.content` chunks, then a chunk with its `finish_reason`; with `stream_options.include_usage` a last
chunk with empty `choices` carries `usage`; the stream ends with `data: [DONE]`. `usage` counts the prompt
once and every token of every choice (a stop token included).

Errors have OpenAI's body `{"error": {"message", "type", "param", "code"}}`:
- 400 invalid JSON, a wrong type or a value out of range (OpenAI answers 400 where FastAPI would say
  422); an unsupported feature set to a non-neutral value; `reasoning_content` in an input message
  (DeepSeek's rule); a prompt that fills the context; `max_tokens` (or `max_completion_tokens`) that
  does not fit beside the prompt — refused with code `context_length_exceeded` as OpenAI does, not
  clamped. Without max_tokens a reply may use the rest of the context.
- 401 a missing or wrong key when the server has one (`Authorization: Bearer KEY`).
- 404 an unknown model or route; 500 only if decoding itself fails.
A client that disconnects — mid-stream or while waiting for a JSON reply — cancels its request, whose
rows leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from frugal_r1.chat import ANSWER_START, THINK_END
from frugal_r1.errors import UserError
from frugal_r1.eval import chat_prompt, opens_thinking, uses_own_template
from frugal_r1.generate.backend import Backend, Completion, SamplingParams
from frugal_r1.serve.batcher import Done, Failed, Scheduler, Update
from frugal_r1.serve.schemas import (DEFAULT_TEMPERATURE, DEFAULT_TOP_P, MAX_STOP, ChatCompletion,
                                     ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice, Delta,
                                     ModelCard, ModelList, ResponseMessage, Usage, error_payload)
from frugal_r1.serve.stream import ChoiceStream, split_visible, thinks
from frugal_r1.tokenizer import encode_prompt

DISCONNECT_POLL_S = 0.5


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        return JSONResponse(error_payload(self.message, self.type, self.param, self.code), status_code=self.status)


class Prepared:
    """A validated request: prompt ids, sampling parameters, and how to read the reply."""

    def __init__(self, ids: list[int], params: SamplingParams, opened: bool):
        self.ids, self.params, self.opened = ids, params, opened


def create_app(backend: Backend, model_name: str, api_key: str | None = None, *, max_batch_rows: int = 64,
               batch_window_s: float = 0.005, scheduler: Scheduler | None = None) -> FastAPI:
    """The FastAPI app serving `backend` as `model_name`; its scheduler runs while the app is up."""
    if backend.tokenizer is None:
        raise UserError("serving needs a tokenizer: the model directory has none")
    scheduler = scheduler or Scheduler(backend, max_batch_rows=max_batch_rows, batch_window_s=batch_window_s)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="frugal-r1", lifespan=lifespan)
    app.state.scheduler = scheduler
    card = ModelCard(id=model_name, created=created, max_model_len=backend.context_length)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ApiError(401, "You didn't provide an API key. Pass it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return JSONResponse(error_payload(str(error.detail), code=code), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_response(error.errors())

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(error_payload(f"internal error: {type(error).__name__}", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **scheduler.stats()}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        return ModelList(data=[card]).model_dump()

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if model_id != model_name:
            raise ApiError(404, f"The model `{model_id}` does not exist.", "model", "model_not_found")
        return card.model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        try:
            body = ChatCompletionRequest.model_validate_json(await request.body())
        except ValidationError as error:
            return _validation_response(error.errors())
        if body.model != model_name:
            raise ApiError(404, f"The model `{body.model}` does not exist.", "model", "model_not_found")
        prepared = prepare(backend, body)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        try:
            handle = scheduler.submit(prepared.ids, prepared.params,
                                      lambda event: loop.call_soon_threadsafe(inbox.put_nowait, event),
                                      stream=body.stream)
        except UserError as error:
            raise ApiError(400, str(error)) from None
        reply = Reply(model_name, body, prepared, backend.tokenizer)
        if body.stream:
            return StreamingResponse(reply.stream(inbox, handle), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        while True:
            try:
                event = await asyncio.wait_for(inbox.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    handle.cancel()
                    return JSONResponse(error_payload("client disconnected"), status_code=400)
                continue
            except asyncio.CancelledError:
                handle.cancel()
                raise
            if isinstance(event, Done):
                return JSONResponse(reply.completion(event.completions))
            if isinstance(event, Failed):
                raise ApiError(500, event.message, type_="server_error")

    return app


def _validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        message = f"We could not parse the JSON body of your request: {message}"
    elif param:
        message = f"{param}: {message}"
    return JSONResponse(error_payload(message, param=param, code=first.get("type")), status_code=400)


def _message_text(index: int, message) -> str:
    content = message.content
    if content is None:
        if message.role == "assistant":
            return ""
        raise ApiError(400, f"messages[{index}].content is required", f"messages.{index}.content")
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"messages[{index}].content: only text parts are supported, got {part.type!r}",
                           f"messages.{index}.content")
        texts.append(part.text)
    return "".join(texts)


def prepare(backend: Backend, body: ChatCompletionRequest) -> Prepared:
    """Check a request against the model and build its prompt ids and sampling parameters."""
    unsupported = body.unsupported()
    if unsupported:
        raise ApiError(400, f"{unsupported} is not supported by this server", unsupported, "unsupported_parameter")
    own_template = uses_own_template(backend.tokenizer)
    messages = []
    for index, message in enumerate(body.messages):
        if message.reasoning_content is not None:
            raise ApiError(400, f"messages[{index}]: reasoning_content must not be sent back in input messages; "
                                "send only the content of earlier replies",
                           f"messages.{index}.reasoning_content", "invalid_request_error")
        if message.role in ("tool", "function"):
            raise ApiError(400, f"messages[{index}]: role {message.role!r} is not supported",
                           f"messages.{index}.role")
        text = _message_text(index, message)
        role = "system" if message.role == "developer" else message.role
        if role == "assistant" and not own_template and ANSWER_START not in text and THINK_END not in text:
            text = f"{ANSWER_START}{text}</answer>"
        messages.append({"role": role, "content": text})
    try:
        prompt = chat_prompt(backend.tokenizer, messages)
    except UserError as error:
        raise ApiError(400, str(error), "messages") from None
    ids = encode_prompt(backend.tokenizer, prompt)
    context = backend.context_length
    if len(ids) >= context:
        raise ApiError(400, f"This model's maximum context length is {context} tokens. However, your messages "
                            f"resulted in {len(ids)} tokens. Please reduce the length of the messages.",
                       "messages", "context_length_exceeded")
    max_tokens = body.max_completion_tokens or body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    if max_tokens is None:
        max_tokens = context - len(ids)
    elif len(ids) + max_tokens > context:
        raise ApiError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{len(ids) + max_tokens} tokens ({len(ids)} in the messages, {max_tokens} in the "
                            "completion). Please reduce the length of the messages or completion.",
                       param, "context_length_exceeded")
    stops = body.stop_strings()
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise ApiError(400, f"stop: at most {MAX_STOP} non-empty strings", "stop")
    top_k = body.top_k if body.top_k and body.top_k > 0 else 0
    try:
        params = SamplingParams(
            temperature=DEFAULT_TEMPERATURE if body.temperature is None else float(body.temperature),
            top_p=DEFAULT_TOP_P if body.top_p is None else float(body.top_p), top_k=top_k,
            max_new_tokens=max_tokens, stop_strings=tuple(stops), ignore_eos=body.ignore_eos,
            seed=body.seed, n=body.n)
    except UserError as error:
        raise ApiError(400, str(error)) from None
    return Prepared(ids, params, opens_thinking(prompt))


class Reply:
    """Builds the response of one request: a ChatCompletion, or its stream of chunks."""

    def __init__(self, model_name: str, body: ChatCompletionRequest, prepared: Prepared, tokenizer: Any):
        self.model = model_name
        self.body = body
        self.prepared = prepared
        self.tokenizer = tokenizer
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def usage(self, completion_tokens: int) -> Usage:
        prompt = len(self.prepared.ids)
        return Usage(prompt_tokens=prompt, completion_tokens=completion_tokens, total_tokens=prompt + completion_tokens)

    def completion(self, completions: list[Completion]) -> dict[str, Any]:
        choices = []
        for c in completions:
            reasoning, content = split_visible(c.text, True, self.prepared.opened)
            message = ResponseMessage(content=content,
                                      reasoning_content=reasoning if thinks(c.text, self.prepared.opened) else None)
            choices.append(Choice(index=c.sample_index, message=message, finish_reason=c.finish_reason))
        usage = self.usage(sum(len(c.token_ids) for c in completions))
        return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=choices,
                              usage=usage).model_dump()

    def _chunk(self, index: int | None, delta: dict[str, str] | None = None, finish: str | None = None,
               usage: Usage | None = None) -> str:
        choices = [] if index is None else [ChunkChoice(index=index, delta=Delta(**(delta or {})), finish_reason=finish)]
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        data = chunk.model_dump()
        for choice in data["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        if not self._include_usage:
            data.pop("usage")
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    @property
    def _include_usage(self) -> bool:
        return bool(self.body.stream_options and self.body.stream_options.include_usage)

    def _deltas(self, index: int, reasoning: str, content: str) -> list[str]:
        out = []
        if reasoning:
            out.append(self._chunk(index, {"reasoning_content": reasoning}))
        if content:
            out.append(self._chunk(index, {"content": content}))
        return out

    async def stream(self, inbox: asyncio.Queue, handle) -> AsyncIterator[str]:
        n, prepared = self.body.n, self.prepared
        streams = [ChoiceStream(self.tokenizer, prepared.opened, prepared.params.stop_strings, prepared.ids)
                   for _ in range(n)]
        finished = False
        completion_tokens = 0
        try:
            yield "".join(self._chunk(i, {"role": "assistant", "content": ""}) for i in range(n))
            while True:
                events = [await inbox.get()]
                while not inbox.empty():
                    events.append(inbox.get_nowait())
                out: list[str] = []
                for event in events:
                    if isinstance(event, Update):
                        for index, token in event.tokens.items():
                            out += self._deltas(index, *streams[index].feed([token]))
                        for index, completion in event.finished.items():
                            out += self._deltas(index, *streams[index].finish(completion.text))
                            out.append(self._chunk(index, {}, completion.finish_reason))
                            completion_tokens += len(completion.token_ids)
                    elif isinstance(event, Done):
                        if self._include_usage:
                            out.append(self._chunk(None, usage=self.usage(completion_tokens)))
                        out.append("data: [DONE]\n\n")
                        finished = True
                    elif isinstance(event, Failed):
                        out.append(f"data: {json.dumps(error_payload(event.message, 'server_error'))}\n\n")
                        finished = True
                if out:
                    yield "".join(out)
                if finished:
                    return
        finally:
            if not finished:
                handle.cancel()


__all__ = ["create_app", "prepare", "ApiError"]
