"""Serving a model over HTTP: OpenAI's and Ollama's APIs and a web chat page, on FastAPI + uvicorn.

    import modelport
    modelport.serve("model.gguf", port=8080, parallel=2)           # blocks; Ctrl-C finishes answers, then exits

    from modelport.serving.app import create_app                  # the ASGI app, for another server
    app = create_app("model.gguf", parallel=2, api_key="secret")

`app` holds the routes, `openai_api` / `ollama_api` the request and response shapes, `scheduler` the
worker thread that owns the engine (slots, bounded queue, cancellation). FastAPI and uvicorn are the
`serve` extra: this module imports them only when a server starts.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, Callable

from ..core.errors import MissingDependencyError, ModelportError


def serve(model: str | os.PathLike, host: str = "127.0.0.1", port: int = 8080, *, engine: str = "auto", ctx: int | None = None,
          threads: int | None = None, parallel: int = 1, queue: int = 16, api_key: str | None = None, name: str | None = None,
          trust: bool = False, grace: float = 10.0, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Load `model` and serve it until SIGINT/SIGTERM: new connections stop, answers in flight get `grace` seconds
    to finish, then the process returns normally. Binds to loopback unless `host` says otherwise.
    `on_ready(facts)` is called once the model is loaded, before the port opens (the CLI prints them)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "fastapi", "serve", "serving a model") from None
    sock = bind(host, port)
    try:
        app = create_app(model, engine=engine, ctx=ctx, threads=threads, parallel=parallel, queue=queue, api_key=api_key,
                         name=name, trust=trust, grace=grace)
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]
    server = app.state.server
    access_log()
    if on_ready is not None:
        on_ready({**server.facts(), "queue": queue, "host": host, "port": port, "api_key": bool(api_key)})
    # uvicorn's own graceful timeout is a backstop: the scheduler ends answers at `grace` with an error event first
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=grace + 5, lifespan="on")
    Quiet = quiet_exit_server(uvicorn.Server, lambda: server.drain(grace))
    Quiet(config).run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """The listening address, taken before the model loads: a port in use is a one-line error at once, and port 0
    picks a free one (reported to `on_ready`). Nothing is accepted until the server runs."""
    if not 0 <= port <= 65535:
        raise ModelportError(f"--port must be 0-65535, not {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ModelportError(f"--host {host}: {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ModelportError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def quiet_exit_server(base: type, on_signal: Callable[[], None]) -> type:
    """uvicorn's Server that calls `on_signal` at SIGINT/SIGTERM (the scheduler starts its grace period) and, after
    the graceful stop, returns instead of re-raising the signal (which would end the process with KeyboardInterrupt
    or a SIGTERM status rather than exit 0)."""

    class QuietExit(base):
        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            self._captured_signals.clear()
            on_signal()

    return QuietExit


def access_log() -> None:
    """One line per request on stderr (the `modelport.serve` logger), unless the host application configured it."""
    logger = logging.getLogger("modelport.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


__all__ = ["serve"]
