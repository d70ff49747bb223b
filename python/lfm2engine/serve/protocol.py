"""The OpenAI wire format: request models with their validation, response and chunk bodies, and
the error schema.

Requests are validated strictly (pydantic, strict types, unknown fields rejected as OpenAI does:
"Unrecognized request argument supplied: x"). Fields OpenAI defines but this server does not
implement are accepted only at their neutral value (n = 1, best_of = 1, echo = false,
presence/frequency penalty 0, no logit_bias, no suffix) and refused otherwise, never silently
ignored. Extensions: top_k (0 = off) and, in every choice, `token_ids` (the generated ids).
Errors: {"error": {"message", "type", "param", "code"}} with 400 (invalid request), 404
(unknown model or path), 413 (body too large), 429 (queue full), 503 (shutting down).
"""

from __future__ import annotations

import time
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_LOGPROBS = 20
MAX_STOP = 4


class APIError(Exception):
    """An HTTP error with OpenAI's body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    seed: Optional[int] = Field(None, ge=0)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1
    user: Optional[str] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict[str, float]] = None

    def check_common(self) -> None:
        if self.n != 1:
            raise APIError(400, f"n={self.n} is not supported: this server returns one choice (n = 1)", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise APIError(400, f"{name} is not supported (only 0)", param=name)
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")
        if len(self.stop_list()) > MAX_STOP or any(not s for s in self.stop_list()):
            raise APIError(400, f"stop takes at most {MAX_STOP} non-empty strings", param="stop")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    max_tokens: Optional[int] = Field(16, ge=1)
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    def check(self) -> None:
        self.check_common()
        if self.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of must be 1", param="best_of")
        if self.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")

    def single_prompt(self) -> Union[str, list[int]]:
        """The one prompt (a list of one prompt is accepted, as n = 1 batches are)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise APIError(400, f"{len(p)} prompts in one request; send one prompt per request", param="prompt")
            p = p[0]
        if isinstance(p, (str, list)) and len(p) == 0:
            raise APIError(400, "prompt is empty", param="prompt")
        return p


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # tool fields etc. reach the template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict], None] = None
    name: Optional[str] = None

    def text(self) -> str:
        """Text content; a list of parts must hold text parts only."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        out = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, "only text content parts are supported", param="messages")
            out.append(part["text"])
        return "".join(out)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)

    def check(self) -> None:
        self.check_common()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")

    def limit(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def template_messages(self) -> list[dict]:
        out = []
        for m in self.messages:
            d = m.model_dump(exclude_none=True)
            d["content"] = m.text()
            out.append(d)
        return out


def parse(model: type[BaseModel], data) -> BaseModel:
    """Validate a decoded JSON body -> the request model; APIError 400 naming the first problem."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        req = model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            raise APIError(400, f"Unrecognized request argument supplied: {loc}", param=loc) from None
        if err.get("type") == "missing":
            raise APIError(400, f"Missing required parameter: '{loc}'", param=loc) from None
        raise APIError(400, f"Invalid value for '{loc}': {err.get('msg')}", param=loc) from None
    req.check()
    return req


# ---------------------------------------------------------------------- responses
def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_logprobs(entries: list[dict], offset0: int, texts: list[str]) -> dict:
    """OpenAI's legacy logprobs object for /v1/completions."""
    offs, off = [], offset0
    for t in texts:
        offs.append(off)
        off += len(t)
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{tok: lp for _, tok, lp in e["top"]} for e in entries], "text_offset": offs}


def chat_logprobs(entries: list[dict]) -> dict:
    def item(tok, lp):
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}

    return {"content": [dict(item(e["token"], e["logprob"]), top_logprobs=[item(t, lp) for _, t, lp in e["top"]])
                        for e in entries]}


def envelope(kind: str, rid: str, model: str, created: int | None = None) -> dict:
    return {"id": rid, "object": kind, "created": created or int(time.time()), "model": model}
