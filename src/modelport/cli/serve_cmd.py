"""`modelport serve MODEL`: the model behind OpenAI's and Ollama's APIs, with a web chat page, until Ctrl-C."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from ..serving import serve
from .options import ctx_option, engine_option, quiet_libraries
from .output import console, print_json, trust_option


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        model: Path = typer.Argument(..., help="GGUF file, Hugging Face folder, or weights file with a config beside it."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless you say otherwise)."),
        port: int = typer.Option(8080, "--port", help="Port to listen on."),
        api_key: str | None = typer.Option(None, "--api-key", envvar="MODELPORT_API_KEY",
                                           help="Require 'Authorization: Bearer KEY' on every route but /health and the page."),
        parallel: int = typer.Option(1, "--parallel", help="Requests decoded together (slots)."),
        queue: int = typer.Option(16, "--queue", help="Requests that may wait for a slot; more get 503 with Retry-After."),
        ctx: int | None = ctx_option(),
        engine: str = engine_option(),
        name: str | None = typer.Option(None, "--name", help="Model id the APIs report (default: the file or folder name)."),
        grace: float = typer.Option(10.0, "--grace", help="Seconds answers in flight get to finish on Ctrl-C / SIGTERM."),
        as_json: bool = typer.Option(False, "--json", help="Print the server's facts as JSON once it is ready."),
        trust: bool = trust_option(),
    ) -> None:
        """Serve a model over HTTP: OpenAI (/v1) and Ollama (/api) APIs and a chat page at /; an encoder serves embeddings."""
        quiet_libraries()

        def ready(facts: dict[str, Any]) -> None:
            url = f"http://{facts['host']}:{facts['port']}"
            if as_json:
                print_json({**facts, "url": url})
            elif facts.get("embeds"):
                console.print(f"[bold]{facts['model']}[/bold] (embedding model, {facts['engine']}, {facts['ctx']} tokens a text) "
                              f"on [cyan]{url}[/cyan]\n  OpenAI {url}/v1/embeddings  ·  Ollama {url}/api/embed  ·  Ctrl-C stops"
                              f"{'  ·  API key required' if facts['api_key'] else ''}", highlight=False, soft_wrap=True)
            else:
                mode = "batched" if facts["batched"] else "one at a time"
                console.print(f"[bold]{facts['model']}[/bold] ({facts['engine']}, context {facts['ctx']}) on [cyan]{url}[/cyan]\n"
                              f"  {facts['parallel']} slot(s), {mode}; {facts['queue']} may wait"
                              f"{'; API key required' if facts['api_key'] else ''}\n"
                              f"  chat page {url}/  ·  OpenAI {url}/v1  ·  Ollama {url}/api  ·  Ctrl-C stops",
                              highlight=False, soft_wrap=True)
            sys.stdout.flush()     # a process reading our pipe learns the port now, not when the buffer fills

        serve(model, host=host, port=port, engine=engine, ctx=ctx, parallel=parallel, queue=queue, api_key=api_key, name=name,
              trust=trust, grace=grace, on_ready=ready)
