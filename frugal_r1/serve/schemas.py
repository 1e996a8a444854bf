"""Request and response bodies of the OpenAI-compatible API (chat.completions), as pydantic models.

Requests are validated strictly (`strict=True`, from JSON): "0.5" is not a temperature and true is not
an n, as in OpenAI's API. Fields OpenAI defines that this server cannot honour (tools, logprobs,
penalties, response_format…) are refused with 400 when set to anything but their neutral value, rather
than silently ignored; unknown fields are ignored, as OpenAI-compatible servers commonly do.

Extensions, as vLLM names them: `top_k` (0 or -1: off) and `ignore_eos`. Defaults follow DeepSeek-R1's
recommendation (temperature 0.6, top-p 0.95) rather than OpenAI's 1.0. An input message that carries
`reasoning_content` (non-null) is refused with 400, as DeepSeek's API does: earlier reasoning is never fed
back to the model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95
MAX_N = 16
MAX_STOP = 4


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    reasoning_content: Any = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    user: str | None = None
    # OpenAI fields this server refuses unless neutral (see `unsupported`).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> str | None:
        """The first field set to something this server cannot do, or None."""
        if self.presence_penalty not in (None, 0, 0.0):
            return "presence_penalty"
        if self.frequency_penalty not in (None, 0, 0.0):
            return "frequency_penalty"
        if self.logprobs or self.top_logprobs:
            return "logprobs"
        if self.logit_bias:
            return "logit_bias"
        if self.tools or self.functions or self.tool_choice not in (None, "none"):
            return "tools"
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        return None

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


def error_payload(message: str, type_: str = "invalid_request_error", param: str | None = None,
                  code: str | None = None) -> dict[str, Any]:
    return {"error": ErrorBody(message=message, type=type_, param=param, code=code).model_dump()}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "frugal-r1"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


__all__ = ["ChatCompletionRequest", "Message", "ChatCompletion", "ChatCompletionChunk", "Choice", "ChunkChoice",
           "Delta", "ResponseMessage", "Usage", "ModelCard", "ModelList", "error_payload", "DEFAULT_TEMPERATURE",
           "DEFAULT_TOP_P", "MAX_N", "MAX_STOP"]
