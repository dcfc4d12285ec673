"""The HTTP routes: OpenAI's /v1 API, Ollama's /api, /health, and the web chat page at /.

Every generating route goes the same way: check the request (pydantic; any problem is a 400 in the
API's own error shape), render the chat with the model's template and tokenize it off the event loop,
refuse a prompt the context cannot hold (400 `context_length_exceeded`, as OpenAI answers), hand the job
to the scheduler (503 with Retry-After when its queue is full), wait for a slot while watching for the
client leaving, then stream or collect the text. A client that goes away cancels its job; every answer
ends with a finish reason (`stop`, `length`) or, if the server itself stops it, an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import runtime
from ..core.errors import ModelportError
from ..inspection import inspect
from ..opening import open as open_model
from ..runtime import ContextFullError, Engine, Sampling
from ..runtime.batching import Job
from ..runtime.embedding import Encoder, architecture
from ..runtime.structured import Constraint, json_constraint
from . import embeddings, ollama_api, openai_api
from .embeddings import EmbeddingServer, EmbedRequest, LegacyEmbedRequest
from .openai_api import ApiError
from .scheduler import Busy, Event, Scheduler, Ticket

WEB = Path(__file__).parent / "web"
try:    # the installed distribution's version (modelport/__init__.py imports this package: no import back up)
    VERSION = metadata.version("modelport")
except metadata.PackageNotFoundError:
    VERSION = "0+unknown"
log = logging.getLogger("modelport.serve")
POLL = 0.25          # seconds between checks that a waiting client is still there
MAX_BODY = 16 * 2**20   # a request body larger than this is refused (413) before it is read


class Server:
    """What the routes share: the engine, its scheduler, the model's name and description, the API key."""

    def __init__(self, engine: Engine, scheduler: Scheduler, name: str, info: dict[str, Any], api_key: str | None,
                 grace: float, owns_engine: bool):
        self.engine, self.scheduler, self.name, self.info = engine, scheduler, name, info
        self.api_key = api_key.encode() if api_key else None
        self.grace = grace
        self.owns_engine = owns_engine
        self.created = int(time.time())

    def facts(self) -> dict[str, Any]:
        """What `serve` reports once the model is loaded."""
        return {"model": self.name, "engine": self.engine.name, "ctx": self.scheduler.n_ctx,
                "parallel": self.scheduler.parallel, "batched": self.scheduler.batcher.batched, "embeds": False}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.name, "engine": self.engine.name, "batched": self.scheduler.batcher.batched,
                "ctx": self.scheduler.n_ctx, **self.scheduler.load()}

    def drain(self, grace: float) -> None:
        """Stop: new requests are refused, answers in flight get `grace` seconds (at SIGINT/SIGTERM)."""
        self.scheduler.drain(grace)

    # --- turning a request into a job ------------------------------------------------------------
    def tokenize_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if self.engine.template is None:
            raise ApiError(400, "this model has no chat template: use /v1/completions (or /api/generate with raw) instead",
                           param="messages")
        with self.scheduler.tokenizer_lock:
            return self.engine.chat_ids(messages)

    def tokenize_text(self, text: str) -> list[int]:
        with self.scheduler.tokenizer_lock:
            return self.engine.tokenize(text, add_special=True)

    async def ids(self, make: Callable[[], list[int]], param: str) -> list[int]:
        try:
            ids = await run_in_threadpool(make)
        except ModelportError as exc:
            raise ApiError(400, exc.message, param=param) from None
        if not ids:
            raise ApiError(400, "the prompt is empty (no tokens)", param=param)
        n_ctx = self.scheduler.n_ctx
        if len(ids) >= n_ctx:
            raise ApiError(400, f"the prompt is {len(ids)} tokens long and the context holds {n_ctx} "
                                "(with room for at least one new token)", param=param, code="context_length_exceeded")
        bad = next((i for i in ids if not 0 <= i < self.engine.n_vocab), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary of {self.engine.n_vocab}", param=param)
        return ids

    def job(self, ids: list[int], max_tokens: int | None, temperature: float, top_p: float, top_k: int,
            seed: int | None, param: str = "max_tokens") -> Job:
        """`max_tokens` None: until the context is full; more than the context: refused (it cannot be honoured)."""
        n_ctx = self.scheduler.n_ctx
        room = n_ctx - len(ids)
        if max_tokens is None:
            max_tokens = room
        elif max_tokens < 1:
            raise ApiError(400, f"{param} must be at least 1, not {max_tokens}", param=param)
        elif max_tokens > n_ctx:
            raise ApiError(400, f"{param} {max_tokens} is more than the context of {n_ctx} tokens", param=param)
        try:
            sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        except ModelportError as exc:
            raise ApiError(400, exc.message) from None
        return Job(ids=ids, max_tokens=min(max_tokens, room), sampling=sampling)

    # --- running it --------------------------------------------------------------------------------
    async def start(self, job: Job, stops: list[str], request: Request) -> Ticket | None:
        """Queue the job and wait until it has a slot; None if the client left while it waited."""
        ticket = Ticket(job, stops)
        try:
            self.scheduler.submit(ticket)
        except Busy as exc:
            raise ApiError(503, str(exc), type="server_error", code="server_busy",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        event = await self.next_event(ticket, request)
        if event is None:
            return None
        if event.kind == "error":
            raise failure(event.error)
        return ticket

    async def next_event(self, ticket: Ticket, request: Request, watch: bool = True) -> Event | None:
        """The ticket's next event; when watching, None (and the job cancelled) once the client has gone. (A streaming
        response does not watch: Starlette itself cancels it when the client disconnects.)"""
        getter = asyncio.ensure_future(ticket.events.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=POLL if watch else None)
                if done:
                    return getter.result()
                if await request.is_disconnected():
                    self.scheduler.cancel(ticket)
                    return None
        finally:
            if not getter.done():
                getter.cancel()

    async def events(self, ticket: Ticket, request: Request, watch: bool = True) -> AsyncIterator[Event]:
        """Text events to the end ("done" or "error" last); cancels the job if the consumer stops early."""
        finished = False
        try:
            while True:
                event = await self.next_event(ticket, request, watch)
                if event is None:
                    return
                if event.kind == "admitted":
                    continue
                finished = event.kind in ("done", "error")
                if finished:
                    request_state(request, ticket)
                yield event
                if finished:
                    return
        finally:
            if not finished:
                self.scheduler.cancel(ticket)
                request_state(request, ticket)

    async def collect(self, ticket: Ticket, request: Request) -> Ticket | None:
        """Run a non-streaming job to its end; None if the client left."""
        async for event in self.events(ticket, request):
            if event.kind == "error":
                raise failure(event.error)
            if event.kind == "done":
                return ticket
        return None

    async def constraint(self, schema: dict[str, Any] | None, param: str) -> Constraint:
        """The token mask that makes the answer JSON (valid against `schema` when given), for every engine."""
        def make() -> Constraint:
            with self.scheduler.tokenizer_lock:     # the first one reads the engine's whole vocabulary
                return json_constraint(self.engine, schema)

        try:
            return await run_in_threadpool(make)
        except ModelportError as exc:
            raise ApiError(400, exc.message, param=param) from None


def request_state(request: Request, ticket: Ticket) -> None:
    """What the access log line reports for this request."""
    request.state.tokens = len(ticket.job.result.tokens)


def failure(error: Exception | None) -> ApiError:
    if isinstance(error, Busy):
        return ApiError(503, str(error), type="server_error", code="server_busy", headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, ContextFullError):
        return ApiError(400, f"the prompt is {error.tokens} tokens long and a slot's context holds {error.n_ctx}",
                        code="context_length_exceeded")
    if isinstance(error, ModelportError):
        return ApiError(400, error.message)
    return ApiError(500, f"the engine failed: {type(error).__name__}: {error}", type="server_error")


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def ndjson(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


def model_info(path: str | os.PathLike, name: str, engine: str, n_ctx: int, template: str | None,
               trust: bool) -> dict[str, Any]:
    """What /api/show and /api/tags say about the model (read from its header, once, at start)."""
    info: dict[str, Any] = {"name": name, "path": str(path), "format": "", "family": "", "parameter_size": "",
                            "quantization": "", "size": 0, "digest": "", "modified_at": "", "model_info": {},
                            "template": template}
    try:
        report = inspect(path, trust=trust)
    except ModelportError:
        return info
    meta, config = report.get("metadata") or {}, report.get("config") or {}
    params = report.get("parameter_count") or 0
    info.update(format=report["format"], size=report.get("file_size") or 0,
                family=str(meta.get("general.architecture") or config.get("model_type") or ""),
                parameter_size=f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.0f}M",
                quantization="/".join(sorted(report.get("dtypes") or {})),
                model_info={"general.parameter_count": params, "context_length": n_ctx, "engine": engine})
    stat = Path(path).stat()
    info["modified_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stat.st_mtime))
    info["digest"] = hashlib.sha256(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return info


class Gate:
    """Pure ASGI middleware: the API key on every route but /health and the page's static files, and one access-log
    line per request (method, path, status, milliseconds, tokens generated) once its response has ended."""

    OPEN = ("/health", "/", "/favicon.ico")

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [0]
        scope.setdefault("state", {})

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope["path"]
        try:
            if self.server.api_key and not (path in self.OPEN or path.startswith("/web/")) and not self.allowed(scope):
                error = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", type="authentication_error",
                                 code="invalid_api_key")
                await error_response(path, error)(scope, receive, sending)
            elif self.too_large(scope):
                error = ApiError(413, f"the request body is larger than {MAX_BODY // 2**20} MiB", code="request_too_large")
                await error_response(path, error)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            tokens = scope["state"].get("tokens")
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %s %.1f ms%s", client[0], scope["method"], path, status[0] or "-",
                     (time.perf_counter() - start) * 1000, f" {tokens} tokens" if tokens is not None else "")

    @staticmethod
    def too_large(scope) -> bool:
        length = dict(scope["headers"]).get(b"content-length", b"0")
        return length.isdigit() and int(length) > MAX_BODY

    def allowed(self, scope) -> bool:
        headers = dict(scope["headers"])
        value = headers.get(b"authorization", b"")
        key = value[7:].strip() if value[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        return hmac.compare_digest(key, self.server.api_key)


def error_response(path: str, error: ApiError) -> JSONResponse:
    """OpenAI's error shape, or Ollama's (`{"error": message}`) under /api/."""
    body = {"error": error.message} if path.startswith("/api/") else error.body()
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def parse(request: Request, shape: type[BaseModel]) -> Any:
    """The JSON body as `shape`, whatever the Content-Type says (curl -d sends a form type; Ollama's docs use it)."""
    try:
        return shape.model_validate_json(await request.body() or b"{}")
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise ApiError(400, message, param=param) from None


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The first problem pydantic found, as a sentence, and the field it concerns."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'malformed')})", None
    if first.get("type") == "model_type":
        return "the body must be a JSON object", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        return f"{param}: a required field is missing", param
    if param and not message.startswith(param.split(".")[0]):
        message = f"{param}: {message}"
        if "input" in first and first.get("type") != "model_attributes_type":
            message += f" (got {json.dumps(first['input'], default=str)[:80]})"
    return message, param


def create_app(model: str | os.PathLike | Engine, *, engine: str = "auto", ctx: int | None = None, threads: int | None = None,
               parallel: int = 1, queue: int = 16, api_key: str | None = None, name: str | None = None,
               trust: bool = False, grace: float = 10.0) -> FastAPI:
    """The server for one model, as an ASGI app (mount it in another server, or run it with `serve`).

    `model`: a path (loaded here, with the chat template the runtime reads) or an engine already loaded (the caller
    keeps it). `parallel` slots run together; `queue` more requests may wait; beyond that 503. `api_key`: required on
    every route but /health and the page. `grace`: seconds in-flight answers get to finish when the server stops."""
    if not (isinstance(parallel, int) and parallel >= 1):      # checked before a model loads
        raise ModelportError(f"--parallel must be at least 1, not {parallel}")
    if not (isinstance(queue, int) and queue >= 0):
        raise ModelportError(f"--queue must be 0 or more, not {queue}")
    if grace < 0:
        raise ModelportError(f"--grace must be 0 or more, not {grace}")
    if isinstance(model, Engine):
        eng, owns, path = model, False, None
    elif encodes(model, trust):
        return create_embedding_app(model, engine=engine, threads=threads, api_key=api_key, name=name, trust=trust)
    else:
        eng, owns, path = runtime.load(model, engine=engine, ctx=ctx, threads=threads, trust=trust), True, model
    try:
        scheduler = Scheduler(eng, parallel=parallel, queue=queue)
    except Exception:
        if owns:
            eng.close()
        raise
    name = name or (Path(path).stem if path is not None and Path(path).is_file() else Path(path).name if path else eng.name)
    template = eng.template.source if eng.template else None
    info = model_info(path, name, eng.name, eng.n_ctx, template, trust) if path is not None else {
        "name": name, "path": "", "format": "", "family": "", "parameter_size": "", "quantization": "", "size": 0,
        "digest": "", "modified_at": "", "model_info": {}, "template": template}
    server = Server(eng, scheduler, name, info, api_key, grace, owns)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(scheduler.close, server.grace)
        if server.owns_engine:
            eng.close()

    app = FastAPI(title="modelport", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    add_error_handlers(app)
    add_model_routes(app, server)
    add_openai_routes(app, server)
    add_ollama_routes(app, server)

    @app.get("/health")
    async def health():
        return server.health()

    @app.get("/")
    async def page():
        index = WEB / "index.html"
        if index.is_file():
            return FileResponse(index, media_type="text/html")
        return HTMLResponse(f"<!doctype html><title>modelport</title><p>modelport serves {server.name}: "
                            "the OpenAI API at /v1 and Ollama's at /api.</p>")

    app.mount("/web", StaticFiles(directory=WEB, check_dir=False), name="web")
    app.add_middleware(Gate, server=server)
    return app


def encodes(path: str | os.PathLike, trust: bool) -> bool:
    """Whether the model at `path` is an encoder (served for embeddings), from its header and config."""
    source = open_model(path, trust=trust)
    try:
        return architecture(source)[1]
    finally:
        source.close()


def create_embedding_app(path: str | os.PathLike, *, engine: str, threads: int | None, api_key: str | None,
                         name: str | None, trust: bool) -> FastAPI:
    """The server for an encoder: embeddings on both APIs; the generating routes say it does not generate."""
    encoder = Encoder.load(path, engine=engine, trust=trust, threads=threads)
    name = name or (Path(path).stem if Path(path).is_file() else Path(path).name)
    try:
        info = model_info(path, name, encoder.engine_name, encoder.max_tokens, None, trust)
    except BaseException:
        encoder.close()
        raise
    server = EmbeddingServer(encoder, name, info, api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(server.close)

    app = FastAPI(title="modelport", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    add_error_handlers(app)
    add_model_routes(app, server)
    refusal = (f"{name} is an embedding model ({encoder.arch}): it turns text into vectors and does not generate text; "
               "use /v1/embeddings or /api/embed")

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request):
        body = await parse(request, openai_api.EmbeddingRequest)
        texts = embeddings.openai_texts(body.input)
        result = await run_in_threadpool(server.encode, texts, True)
        request.state.tokens = sum(result.tokens)
        return embeddings.openai_response(result, name, body.encoding_format, body.dimensions)

    @app.post("/api/embed")
    async def ollama_embed(request: Request):
        started = time.perf_counter()
        body = await parse(request, EmbedRequest)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        result = await run_in_threadpool(server.encode, texts, True, body.truncate)
        request.state.tokens = sum(result.tokens)
        return embeddings.ollama_embed_response(result, name, started)

    @app.post("/api/embeddings")
    async def ollama_legacy_embeddings(request: Request):
        body = await parse(request, LegacyEmbedRequest)
        result = await run_in_threadpool(server.encode, [body.prompt], False)
        return {"embedding": result.vectors[0].tolist()}

    for route in ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"):
        @app.post(route)
        async def generating(request: Request):
            raise ApiError(400, refusal, param="model", code="model_not_supported")

    @app.get("/health")
    async def health():
        return server.health()

    @app.get("/")
    async def page():
        return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>modelport · {html.escape(name)}</title>"
                            f"<p>modelport serves the embedding model <b>{html.escape(name)}</b> ({encoder.engine_name}): "
                            "POST text to <code>/v1/embeddings</code> (OpenAI) or <code>/api/embed</code> (Ollama).</p>")

    app.add_middleware(Gate, server=server)
    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return error_response(request.url.path, ApiError(400, message, param=param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return error_response(request.url.path, ApiError(exc.status_code, message, type=kind, headers=exc.headers))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))


def add_openai_routes(app: FastAPI, server: Server) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, openai_api.ChatRequest)
        ids = await server.ids(lambda: server.tokenize_chat(body.conversation()), "messages")
        job = server.job(ids, body.length(), 1.0 if body.temperature is None else body.temperature,
                         1.0 if body.top_p is None else body.top_p, 0, body.seed,
                         "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens")
        fmt = body.response_format
        if fmt is not None and fmt.type != "text":
            if fmt.type == "json_schema" and (fmt.json_schema is None or fmt.json_schema.schema_ is None):
                raise ApiError(400, "response_format json_schema needs json_schema.schema", param="response_format")
            job.constraint = await server.constraint(fmt.json_schema.schema_ if fmt.type == "json_schema" else None,
                                                     "response_format")
        return await openai_answer(server, job, body, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, openai_api.CompletionRequest)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            ids = await server.ids(lambda: list(prompt), "prompt")
        else:
            text = prompt[0] if isinstance(prompt, list) and prompt else prompt if isinstance(prompt, str) else ""
            ids = await server.ids(lambda: server.tokenize_text(text), "prompt")
        job = server.job(ids, 16 if body.max_tokens is None else body.max_tokens,
                         1.0 if body.temperature is None else body.temperature, 1.0 if body.top_p is None else body.top_p,
                         0, body.seed)
        return await openai_answer(server, job, body, request, chat=False)

    @app.post("/v1/embeddings")
    async def refuse_embeddings(request: Request):
        await parse(request, openai_api.EmbeddingRequest)
        raise does_not_embed(server)


async def openai_answer(server: Server, job: Job, body, request: Request, chat: bool):
    ticket = await server.start(job, body.stops(), request)
    if ticket is None:
        return JSONResponse({}, status_code=499)     # the client has gone; nobody reads this
    rid, created, name = openai_api.new_id("chatcmpl" if chat else "cmpl"), openai_api.now(), server.name
    if not body.stream:
        if await server.collect(ticket, request) is None:
            return JSONResponse({}, status_code=499)
        make = openai_api.chat_response if chat else openai_api.completion_response
        return make(rid, name, created, ticket)
    usage = bool(body.stream_options and body.stream_options.include_usage)
    obj = "chat.completion.chunk" if chat else "text_completion"

    def piece(text: str, finish: str | None = None) -> dict[str, Any]:
        if chat:
            return openai_api.chat_chunk(rid, name, created, {"content": text} if text or finish is None else {}, finish)
        return openai_api.completion_chunk(rid, name, created, text, finish)

    async def stream():
        if chat:
            yield sse(openai_api.chat_chunk(rid, name, created, {"role": "assistant", "content": ""}))
        async for event in server.events(ticket, request, watch=False):
            if event.kind == "text":
                yield sse(piece(event.text))
            elif event.kind == "error":
                yield sse(failure(event.error).body())
                return
            elif event.kind == "done":
                yield sse(piece("", ticket.finish_reason))
                if usage:
                    yield sse(openai_api.usage_chunk(rid, name, created, ticket, obj))
        yield sse("[DONE]")

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def does_not_embed(server: Server) -> ApiError:
    return ApiError(400, f"{server.name} does not embed: it generates text ({server.engine.name}); serve an embedding model",
                    param="model", code="model_not_supported")


def add_model_routes(app: FastAPI, server: Server | EmbeddingServer) -> None:
    """What every server answers about its one model: OpenAI's model list, Ollama's version, tags and show."""
    @app.get("/v1/models")
    async def models():
        return openai_api.model_list(server.name, server.created)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != server.name:
            raise ApiError(404, f"the model {model_id!r} does not exist: this server has {server.name!r}", param="model",
                           code="model_not_found", type="not_found_error")
        return openai_api.model_card(server.name, server.created)

    @app.get("/api/version")
    async def version():
        return {"version": VERSION}

    @app.get("/api/tags")
    async def tags():
        return ollama_api.tags(server.info)

    @app.post("/api/show")
    async def show(request: Request):
        await parse(request, ollama_api.ShowRequest)
        return ollama_api.show(server.info)


def add_ollama_routes(app: FastAPI, server: Server) -> None:
    @app.post("/api/embed")
    async def refuse_embed(request: Request):
        await parse(request, EmbedRequest)
        raise does_not_embed(server)

    @app.post("/api/embeddings")
    async def refuse_legacy_embeddings(request: Request):
        await parse(request, LegacyEmbedRequest)
        raise does_not_embed(server)

    @app.post("/api/chat")
    async def chat(request: Request):
        body = await parse(request, ollama_api.ChatRequest)
        if body.tools:
            raise ApiError(400, "tools: tool calls are not supported by this server")
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        if not messages:    # Ollama's way to load a model: an empty chat answers at once
            return {"model": server.name, "created_at": ollama_api.created_at(), "message": {"role": "assistant", "content": ""},
                    "done": True, "done_reason": "load"}
        ids = await server.ids(lambda: server.tokenize_chat(messages), "messages")
        return await ollama_answer(server, ids, body, request, chat=True)

    @app.post("/api/generate")
    async def generate(request: Request):
        body = await parse(request, ollama_api.GenerateRequest)
        if not body.prompt:
            return {"model": server.name, "created_at": ollama_api.created_at(), "response": "", "done": True,
                    "done_reason": "load"}
        if body.raw:
            ids = await server.ids(lambda: server.tokenize_text(body.prompt), "prompt")
        else:
            messages = ([{"role": "system", "content": body.system}] if body.system else []) + [{"role": "user", "content": body.prompt}]
            ids = await server.ids(lambda: server.tokenize_chat(messages), "prompt")
        return await ollama_answer(server, ids, body, request, chat=False)


async def ollama_answer(server: Server, ids: list[int], body, request: Request, chat: bool):
    started = time.perf_counter()
    o = body.options or ollama_api.Options()
    d = ollama_api.DEFAULTS
    predict = o.num_predict
    job = server.job(ids, None if predict is None or predict < 0 else predict,
                     d["temperature"] if o.temperature is None else o.temperature, d["top_p"] if o.top_p is None else o.top_p,
                     d["top_k"] if o.top_k is None else o.top_k, o.seed, param="num_predict")
    if body.format:
        job.constraint = await server.constraint(None if body.format == "json" else body.format, "format")
    ticket = await server.start(job, o.stop or [], request)
    if ticket is None:
        return JSONResponse({}, status_code=499)
    piece = ollama_api.chat_piece if chat else ollama_api.generate_piece
    done = ollama_api.chat_done if chat else ollama_api.generate_done
    if not body.stream:
        if await server.collect(ticket, request) is None:
            return JSONResponse({}, status_code=499)
        return done(server.name, ticket.text, ticket, started)

    async def stream():
        async for event in server.events(ticket, request, watch=False):
            if event.kind == "text":
                yield ndjson(piece(server.name, event.text))
            elif event.kind == "error":
                yield ndjson({"error": failure(event.error).message})
                return
            elif event.kind == "done":
                yield ndjson(done(server.name, "", ticket, started))

    return StreamingResponse(stream(), media_type="application/x-ndjson")
