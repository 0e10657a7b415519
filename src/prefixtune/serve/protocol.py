"""The API's request and response bodies (pydantic models, the OpenAPI schema's source).

Requests are strict: no coercion (``"stream": "yes"``, ``"max_tokens": true`` or
``"temperature": "0.5"`` are 400s naming the field; an int is a valid float). Text fields have
lone UTF-16 surrogates (``"\\ud800"`` in the JSON) replaced by U+FFFD, as a decoder with
``errors="replace"`` would, since no tokenizer can encode them.

Implemented beyond the basics: ``seed``, ``presence_penalty``, ``frequency_penalty``,
``logprobs`` (completions: an int; chat: a bool with ``top_logprobs``) and
``stream_options.include_usage``. OpenAI parameters the server does not implement are refused by :func:`check_supported` with a
400 naming them, and so is any other unknown field; ``user`` (OpenAI's end-user id) is accepted
and ignored. A parameter sent as ``null``, or as its no-op value (``echo: false``,
``best_of: 1``, ``logit_bias: {}``, ...), is taken as not sent.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from prefixtune.serve.errors import APIError

_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


#: a text field: a JSON string, lone surrogates replaced
Text = Annotated[str, AfterValidator(_replace_surrogates)]
#: a JSON number, finite
Number = Annotated[float, Field(allow_inf_nan=False)]
#: the most top tokens a request may ask log-probabilities of (OpenAI's chat limit)
MAX_TOP_LOGPROBS = 20

#: OpenAI parameters taken as not sent at these values
_NO_OP: dict[str, Any] = {"echo": False, "best_of": 1, "logit_bias": {}, "tools": [], "tool_choice": "none",
                          "response_format": {"type": "text"}, "suffix": "", "parallel_tool_calls": False}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class GenerationBody(BaseModel):
    """Fields both completion kinds take. Unknown fields are kept (``model_extra``) for
    :func:`check_supported` to name; the schema says none are allowed (they are refused)."""

    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"additionalProperties": False})
    model: Text
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[Number, Field(gt=0.0, le=1.0)] = 1.0
    stream: bool = False
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    ignore_eos: bool = False  # vLLM's extension: keep generating past EOS (benchmarks)
    user: Text | None = None  # OpenAI's end-user id: accepted and ignored
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    presence_penalty: Annotated[Number, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[Number, Field(ge=-2.0, le=2.0)] = 0.0
    stream_options: StreamOptions | None = None

    def checked(self) -> None:
        """Raises a 400 for what the server refuses: unsupported fields (:func:`check_supported`),
        ``stream_options`` without ``stream``."""
        check_supported(self)
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")

    @property
    def top_logprobs_count(self) -> int | None:
        """How many top tokens to report per generated token (0: the chosen one only; None: no log-probs)."""
        return None


class CompletionBody(GenerationBody):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    def checked(self) -> None:
        super().checked()
        if self.logprobs is not None and self.stream:
            raise APIError(400, "logprobs are not served with stream: true", param="logprobs")

    @property
    def top_logprobs_count(self) -> int | None:
        return self.logprobs


class Message(_Strict):
    #: the roles a chat template renders; ``tool`` messages need tools, which are refused
    role: Literal["system", "user", "assistant"]
    content: Text | None = ""
    name: Text | None = None


class ChatBody(GenerationBody):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    def checked(self) -> None:
        super().checked()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if self.logprobs and self.stream:
            raise APIError(400, "logprobs are not served with stream: true", param="logprobs")

    @property
    def top_logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class LoadBody(_Strict):
    name: Annotated[Text, Field(min_length=1)]
    path: Annotated[Text, Field(min_length=1)]
    replace: bool = False


def check_supported(body: GenerationBody) -> None:
    """Raises a 400 naming the fields of ``body`` that the server does not take (see the module
    docstring); ``param`` is the first of them."""
    extra = body.model_extra or {}
    refused = [k for k, v in extra.items()
               if v is not None and not (k in _NO_OP and v == _NO_OP[k])]
    if refused:
        raise APIError(400, f"unsupported parameter(s): {', '.join(refused)}", param=refused[0],
                       code="unsupported_parameter")


# ------------------------------------------------------------------------------------ responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """The legacy format: per generated token its text, log-probability, the top tokens'
    log-probabilities and its character offset in the completion."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class _Answer(BaseModel):
    """The fields every completion response starts with (``object`` is each one's own)."""

    id: str
    object: str
    created: int
    model: str


class Completion(_Answer):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(_Answer):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "prefixtune"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class Health(BaseModel):
    status: Literal["ok", "draining"]
    adapters: int
    queued: int


class Loaded(BaseModel):
    loaded: str
    adapters: list[str]


class Unloaded(BaseModel):
    unloaded: str
    adapters: list[str]
