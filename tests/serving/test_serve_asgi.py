"""`create_app` embedded in another ASGI host (Starlette's TestClient here): an engine the caller loaded and keeps,
the same routes, the scheduler stopped by the app's lifespan."""

from __future__ import annotations

from fastapi.testclient import TestClient

from modelport import runtime
from modelport.serving.app import create_app


def test_create_app_on_an_engine_the_caller_keeps(tiny_gguf):
    with runtime.load(tiny_gguf) as engine:
        ids = engine.chat_ids([{"role": "user", "content": "Hello"}])
        expected = engine.complete(ids, max_tokens=5).text
        app = create_app(engine, name="mine", parallel=2, queue=0)
        with TestClient(app) as http:
            assert http.get("/v1/models").json()["data"][0]["id"] == "mine"
            answer = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello"}], "temperature": 0,
                                                             "max_tokens": 5}).json()
            assert answer["choices"][0]["message"]["content"] == expected
            assert answer["usage"]["prompt_tokens"] == len(ids)
            assert http.get("/").headers["content-type"].startswith("text/html")
        assert not app.state.server.scheduler.thread.is_alive()      # the lifespan stopped the worker
        assert engine.complete(ids, max_tokens=5).text == expected      # and left the caller's engine open
