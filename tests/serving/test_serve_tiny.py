"""`modelport serve` on the tiny GGUF, through the real `openai` and `ollama` clients and raw HTTP: answers, streams,
errors in OpenAI's shape, the API key, and a bounded load test (32 streaming clients against 2 slots and a queue of 16)."""

from __future__ import annotations

import json
import threading

import httpx
import ollama
import openai
import psutil
import pytest

from .conftest import start_server

KEY = "serve-test-key"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    served = start_server(tiny_gguf, "--parallel", "2", "--queue", "16", "--api-key", KEY,
                          log=tmp_path_factory.mktemp("serve-log") / "server.log")
    yield served
    assert served.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def greedy_chat(client, content: str, max_tokens: int = 8):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], temperature=0,
                                          max_tokens=max_tokens)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    health = httpx.get(f"{server.url}/health").json()     # no key needed
    assert health["status"] == "ok" and health["engine"] == "llama.cpp"
    assert server.facts["host"] == "127.0.0.1"          # loopback unless told otherwise


def test_chat_streaming_matches_non_streaming(client):
    whole = greedy_chat(client, "Hello, how are you today?", max_tokens=12)
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    assert whole.usage.completion_tokens >= 1 and whole.usage.prompt_tokens > 5
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello, how are you today?"}],
                                                 temperature=0, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == choice.message.content and finishes == [choice.finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    timings = chunks[-1].model_extra["timings"]
    assert timings["predicted_n"] == whole.usage.completion_tokens and timings["predicted_ms"] >= 0


def test_completions_max_tokens_seed_and_stop(client):
    done = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 6
    text = done.choices[0].text
    # a stop string cut out of the middle of the answer, wherever the tokens split it
    stop = text[2:4]
    cut = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[:text.index(stop)]
    streamed = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text[:text.index(stop)]
    sampled = [client.completions.create(model="tiny", prompt="Tell me a story", max_tokens=10, temperature=1.0, seed=s)
               .choices[0].text for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_ollama_client_chat_generate_and_streams(server, client):
    o = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"})
    expected = greedy_chat(client, "What is the capital of France?").choices[0].message.content
    answer = o.chat(model="tiny", messages=[{"role": "user", "content": "What is the capital of France?"}],
                    options={"temperature": 0, "num_predict": 8})
    assert answer.message.content == expected and answer.done and answer.done_reason in ("stop", "length")
    assert answer.eval_count >= 1 and answer.prompt_eval_count > 5
    parts = list(o.chat(model="tiny", messages=[{"role": "user", "content": "What is the capital of France?"}], stream=True,
                        options={"temperature": 0, "num_predict": 8}))
    assert "".join(p.message.content for p in parts) == expected and parts[-1].done and not parts[0].done
    generated = list(o.generate(model="tiny", prompt="What is the capital of France?", stream=True,
                                options={"temperature": 0, "num_predict": 8}))
    assert "".join(g.response for g in generated) == expected and generated[-1].done_reason
    raw = o.generate(model="tiny", prompt="The capital of France is", raw=True, options={"temperature": 0, "num_predict": 6})
    assert raw.response == client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6,
                                                     temperature=0).choices[0].text
    assert [m.model for m in o.list().models] == ["tiny"]
    shown = o.show("tiny")
    assert shown.details.format == "gguf" and shown.details.family == "llama" and "im_start" in shown.template


def error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in response.text
    return body["error"]


def test_bad_requests_get_openai_errors(server):
    h = {"Authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    r = httpx.post(url, content=b'{"messages": [', headers=h)
    assert r.status_code == 400 and "not valid JSON" in error(r)["message"]
    r = httpx.post(url, json={"messages": hi, "temperature": "hot"}, headers=h)
    assert r.status_code == 400 and error(r)["param"] == "temperature"
    r = httpx.post(url, json={"messages": "hi"}, headers=h)
    assert r.status_code == 400 and error(r)["param"] == "messages"
    r = httpx.post(url, json={"messages": hi, "max_tokens": 10**9}, headers=h)
    assert r.status_code == 400 and error(r)["param"] == "max_tokens"
    r = httpx.post(url, json={"messages": hi, "max_tokens": 0}, headers=h)
    assert r.status_code == 400 and error(r)["param"] == "max_tokens"
    r = httpx.post(url, json={"messages": hi, "n": 2}, headers=h)
    assert r.status_code == 400 and "n=1" in error(r)["message"]
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "dragon knight " * 300}]}, headers=h)
    assert r.status_code == 400 and error(r)["code"] == "context_length_exceeded"
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": [10**7]}, headers=h)
    assert r.status_code == 400 and "vocabulary" in error(r)["message"]
    r = httpx.post(url, content=b" " * (16 * 2**20 + 1), headers=h)
    assert r.status_code == 413 and error(r)["code"] == "request_too_large"
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": "hello"}, headers=h)
    assert r.status_code == 400 and "does not embed" in error(r)["message"]
    r = httpx.post(f"{server.url}/api/embed", json={"model": "tiny", "input": "hello"}, headers=h)
    assert r.status_code == 400 and "does not embed" in r.json()["error"]
    r = httpx.get(f"{server.url}/v1/nothing", headers=h)
    assert r.status_code == 404 and error(r)["type"] == "not_found_error"
    # Ollama's routes answer in Ollama's shape; curl's form content type is read as JSON, as Ollama does
    r = httpx.post(f"{server.url}/api/chat", content=b'{"model": "tiny", "messages": [{"role": "robot"}]}', headers=h)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    assert httpx.get(f"{server.url}/health").status_code == 200      # still alive


def test_api_key_on_every_route_but_health(server):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/api/tags"), ("POST", "/api/chat")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}x"}):
            r = httpx.request(method, f"{server.url}{path}", json={}, headers=headers)
            assert r.status_code == 401, (path, headers)
        refused = httpx.request(method, f"{server.url}{path}", json={})
        if path.startswith("/api/"):     # Ollama's shape
            assert "API key" in refused.json()["error"]
        else:
            assert error(refused)["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_access_log_has_a_line_per_request(server, client):
    greedy_chat(client, "Be brief.", max_tokens=3)
    lines = [line for line in server.log_text().splitlines() if "POST /v1/chat/completions 200" in line]
    assert lines and lines[-1].endswith("3 tokens") and " ms " in lines[-1]


PROMPTS = [f"Tell me about {w} number {i}" for i, w in enumerate(["the dragon", "a knight", "Paris", "Rome", "the fox",
                                                                     "café", "the sky", "my friend"] * 4)]


def stream_answer(client, prompt: str, seed: int) -> tuple[str, str | None]:
    """One streaming chat, sampled with its own seed; (text, finish_reason), or ("503", retry-after) when refused."""
    try:
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}], temperature=1.0,
                                                seed=seed, max_tokens=10, stream=True)
    except openai.APIStatusError as exc:
        assert exc.status_code == 503 and error(exc.response)["type"] == "server_error", exc
        return "503", exc.response.headers.get("retry-after")
    text, finish = "", None
    for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_32_streaming_clients_against_2_slots_and_a_queue_of_16(server, client):
    expected = {p: stream_answer(client, p, i) for i, p in enumerate(PROMPTS)}   # one at a time: the answers; a warm server
    assert all(finish in ("stop", "length") for _, finish in expected.values())
    assert len({text for text, _ in expected.values()}) >= 28       # distinct enough that a mix-up would show
    rss = psutil.Process(server.proc.pid).memory_info().rss
    results: dict[int, tuple[str, str | None]] = {}
    capacity = server.facts["parallel"] + server.facts["queue"]
    for _ in range(2):
        barrier = threading.Barrier(len(PROMPTS))

        def one(i: int, barrier: threading.Barrier) -> None:
            barrier.wait()
            results[i] = stream_answer(client, PROMPTS[i], i)

        threads = [threading.Thread(target=one, args=(i, barrier)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert len(results) == len(PROMPTS)                         # none lost
        answered = [i for i, (text, _) in results.items() if text != "503"]
        refused = [i for i in results if i not in answered]
        for i in answered:
            assert results[i] == expected[PROMPTS[i]]               # its own text, finished, nothing mixed in
        for i in refused:
            assert results[i][1] and int(results[i][1]) >= 1          # Retry-After
        assert len(answered) == len(PROMPTS) or len(answered) >= capacity
        results.clear()
    health = httpx.get(f"{server.url}/health").json()
    assert health["running"] == 0 and health["waiting"] == 0
    assert psutil.Process(server.proc.pid).memory_info().rss - rss < 50 * 2**20


def test_sse_wire_format(server):
    """What a client without the SDK sees: `data: {json}` events, a finish reason, then `data: [DONE]`."""
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")
