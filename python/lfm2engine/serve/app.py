"""The HTTP routes (FastAPI on uvicorn): /v1/completions, /v1/chat/completions, /v1/models,
/health, /metrics.

Each generation request is read and validated here (body size, JSON, fields, model name,
prompt -> token ids, ids in range, prompt + max_tokens within a slot's context), handed to the
scheduler, and answered from the events the engine thread sends back: as one JSON body, or
as server-sent events in OpenAI's chunk format ending with a usage chunk and `data: [DONE]`.
A client that disconnects is cancelled: its slot is freed at the next step. Every error is
OpenAI's JSON error body; nothing here runs the model.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError
from ..sampling import Sampler
from . import protocol as P
from .request import GenRequest, TextTracker
from .scheduler import QueueFull, ShuttingDown


class ServerState:
    """What the routes need: the model's facts, tokenizer, chat template, scheduler, metrics."""

    def __init__(self, config, model_name: str, scheduler, metrics, tokenizer=None, chat_template=None,
                 max_body_bytes: int = 8 << 20):
        self.config, self.model_name = config, model_name
        self.scheduler, self.metrics = scheduler, metrics
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.max_body_bytes = int(max_body_bytes)
        self.created = int(time.time())


def _error(e: P.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="lfm2engine", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lfm2 = state

    @app.exception_handler(P.APIError)
    async def api_error(_request, e: P.APIError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error(P.APIError(e.status_code, str(e.detail), kind))

    @app.exception_handler(Exception)
    async def internal_error(_request, e: Exception):
        return _error(P.APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

    @app.get("/health")
    async def health():
        sch = state.scheduler
        if sch.error or sch.stopping:
            return _error(P.APIError(503, sch.error or "shutting down", "server_error"))
        return {"status": "ok", **sch.load()}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(state.scheduler.load()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "lfm2engine", "max_model_len": state.scheduler.capacity}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = P.parse(P.CompletionRequest, await _json_body(request, state))
        _check_model(state, req.model)
        prompt = req.single_prompt()
        ids = _encode(state, prompt, add_bos=True)
        return await _generate(request, state, req, ids, req.max_tokens, req.logprobs, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = P.parse(P.ChatRequest, await _json_body(request, state))
        _check_model(state, req.model)
        if state.chat_template is None or state.tokenizer is None:
            raise P.APIError(400, "this model has no chat template (tokenizer_config.json chat_template and "
                                  "tokenizer.json are needed): use /v1/completions", param="messages")
        try:
            text = state.chat_template.render(req.template_messages())
        except InputError as e:
            raise P.APIError(400, str(e), param="messages") from None
        ids = _encode(state, text, add_bos=False)
        top = (req.top_logprobs or 0) if req.logprobs else None
        return await _generate(request, state, req, ids, req.limit(), top, chat=True)

    return app


async def _json_body(request: Request, state: ServerState):
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > state.max_body_bytes:
        raise P.APIError(413, f"request body of {size} bytes exceeds the limit of {state.max_body_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > state.max_body_bytes:
            raise P.APIError(413, f"request body exceeds the limit of {state.max_body_bytes} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise P.APIError(400, f"the request body is not valid JSON ({e})") from None


def _check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise P.APIError(404, f"The model '{name}' does not exist; this server serves '{state.model_name}'",
                         "invalid_request_error", "model", "model_not_found")


def _encode(state: ServerState, prompt, add_bos: bool) -> list[int]:
    cfg = state.config
    if isinstance(prompt, str):
        if state.tokenizer is None:
            raise P.APIError(400, "this model has no tokenizer.json: send the prompt as a list of token ids",
                             param="prompt")
        ids = state.tokenizer.encode(prompt, add_bos=cfg.bos_token_id if add_bos else None)
        if not ids:
            raise P.APIError(400, "the prompt encodes to no tokens", param="prompt")
        return ids
    bad = [t for t in prompt if not 0 <= t < cfg.vocab_size]
    if bad:
        raise P.APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {cfg.vocab_size})", param="prompt")
    return list(prompt)


async def _generate(request: Request, state: ServerState, req, ids: list[int], limit, top_logprobs, chat: bool):
    sch = state.scheduler
    cap = sch.capacity
    if len(ids) >= cap:
        raise P.APIError(400, f"the prompt has {len(ids)} tokens; this server's context is {cap} tokens per request",
                         param="messages" if chat else "prompt", code="context_length_exceeded")
    if limit is None:
        limit = cap - len(ids)
    if len(ids) + limit > cap:
        raise P.APIError(400, f"{len(ids)} prompt tokens + max_tokens {limit} exceed this server's context of "
                              f"{cap} tokens per request", param="max_tokens", code="context_length_exceeded")
    if req.stop_list() and state.tokenizer is None:
        raise P.APIError(400, "stop strings need a tokenizer; this model serves token ids", param="stop")
    seed = req.seed if req.seed is not None else int(np.random.SeedSequence().entropy % (1 << 63))
    try:
        sampler = Sampler(req.temperature, req.top_k, req.top_p, seed, [0])
    except InputError as e:
        raise P.APIError(400, str(e)) from None
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    def emit(ev):  # called on the engine thread; the loop may be gone when the server shuts down
        try:
            loop.call_soon_threadsafe(queue.put_nowait, ev)
        except RuntimeError:
            pass

    g = GenRequest(ids, limit, sampler, frozenset(state.config.eos_ids), TextTracker(state.tokenizer, req.stop_list()),
                   top_logprobs, emit=emit)
    try:
        sch.submit(g)
    except QueueFull as e:
        raise P.APIError(429, str(e), "rate_limit_error", code="queue_full") from None
    except ShuttingDown as e:
        raise P.APIError(503, str(e), "server_error") from None
    state.metrics.prompt(len(ids))
    rid = ("chatcmpl-" if chat else "cmpl-") + g.rid
    if req.stream:
        return _EventStream(_stream(state, g, queue, rid, chat), lambda: _abandon(state, g))
    return await _collect(request, state, g, queue, rid, chat)


class _EventStream(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends (also when the client went
    away before the first chunk, when the body generator never started)."""

    def __init__(self, body, on_close):
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _abandon(state: ServerState, g: GenRequest) -> None:
    """The response is over: a request still running has lost its client; free its slot."""
    if g.finish_reason is None:
        state.scheduler.cancel(g)


async def _next_event(queue: asyncio.Queue, request: Request | None, g: GenRequest, sch, poll: float = 0.25):
    """The next event; with `request` (non-streaming), checks every `poll` seconds whether the
    client went away and then cancels the request (-> None)."""
    if request is None:
        return await queue.get()
    while True:
        if time.monotonic() - g.checked >= poll:
            g.checked = time.monotonic()
            if await request.is_disconnected():
                sch.cancel(g)
                return None
        try:
            return await asyncio.wait_for(queue.get(), timeout=poll)
        except asyncio.TimeoutError:
            pass


async def _collect(request, state, g: GenRequest, queue, rid: str, chat: bool):
    ids, texts, lps, text = [], [], [], ""
    while True:
        ev = await _next_event(queue, request, g, state.scheduler)
        if ev is None:
            return JSONResponse({}, status_code=499)
        if ev.error:
            raise P.APIError(503, ev.error, "server_error")
        ids += ev.token_ids
        text += ev.text
        texts += [e["token"] for e in ev.logprobs]
        lps += ev.logprobs
        if ev.finish_reason:
            break
    out = P.envelope("chat.completion" if chat else "text_completion", rid, state.model_name)
    choice = {"index": 0, "finish_reason": ev.finish_reason, "token_ids": ids}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
        choice["logprobs"] = P.chat_logprobs(lps) if g.logprobs is not None else None
    else:
        choice["text"] = text
        choice["logprobs"] = P.completion_logprobs(lps, 0, texts) if g.logprobs is not None else None
    out["choices"] = [choice]
    out["usage"] = P.usage(len(g.prompt), len(ids))
    return JSONResponse(out)


async def _stream(state, g: GenRequest, queue, rid: str, chat: bool):
    """SSE chunks; the generator is closed when the client goes away, which cancels the request."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())
    n_out, offset = 0, 0

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    try:
        if chat:
            head = P.envelope(kind, rid, state.model_name, created)
            head["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "token_ids": [],
                                "logprobs": None}]
            yield sse(head)
        while True:
            ev = await _next_event(queue, None, g, state.scheduler)
            if ev.error:
                err = P.APIError(503, ev.error, "server_error").body()
                yield sse(err)
                break
            n_out += len(ev.token_ids)
            c = P.envelope(kind, rid, state.model_name, created)
            choice = {"index": 0, "finish_reason": ev.finish_reason, "token_ids": ev.token_ids}
            if chat:
                choice["delta"] = {"content": ev.text}
                choice["logprobs"] = P.chat_logprobs(ev.logprobs) if g.logprobs is not None else None
            else:
                choice["text"] = ev.text
                texts = [e["token"] for e in ev.logprobs]
                choice["logprobs"] = P.completion_logprobs(ev.logprobs, offset, texts) if g.logprobs is not None \
                    else None
                offset += len(ev.text)
            c["choices"] = [choice]
            yield sse(c)
            if ev.finish_reason:
                u = P.envelope(kind, rid, state.model_name, created)
                u["choices"] = []
                u["usage"] = P.usage(len(g.prompt), n_out)
                yield sse(u)
                break
        yield "data: [DONE]\n\n"
    finally:
        _abandon(state, g)
