"""`modelport serve` on the real SmolLM2-135M-Instruct GGUF: the France question through the `openai` and `ollama`
clients, `response_format` JSON that validates, disconnects that free their slots, and SIGTERM finishing an answer."""

from __future__ import annotations

import json
import re
import signal
import socket
import time

import httpx
import jsonschema
import ollama
import openai
import pytest

from modelport.samples import smollm2_gguf

from .conftest import start_server

pytestmark = pytest.mark.slow
FRANCE = "What is the capital of France? Answer in one sentence."
STORY = "Write a very long story about a dragon and a knight."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    served = start_server(smollm2_gguf(), "--ctx", "512", "--parallel", "2", "--queue", "1", "--grace", "120",
                          log=tmp_path_factory.mktemp("serve-smollm2") / "server.log")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)


def test_france_through_openai_and_ollama(server, client):
    answer = client.chat.completions.create(model=server.facts["model"], messages=[{"role": "user", "content": FRANCE}],
                                            temperature=0, max_tokens=24)
    assert "Paris" in answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    assert server.facts["batched"] is True and server.facts["parallel"] == 2
    o = ollama.Client(host=server.url)
    streamed = "".join(part.message.content for part in o.chat(model="smollm2", messages=[{"role": "user", "content": FRANCE}],
                                                                stream=True, options={"temperature": 0, "num_predict": 24}))
    assert streamed == answer.choices[0].message.content


SCHEMA = {"type": "object", "properties": {"country": {"type": "string", "maxLength": 20},
                                           "capital": {"type": "string", "maxLength": 20}},
          "required": ["country", "capital"], "additionalProperties": False}


def test_response_format_json_schema_validates(server, client):
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": f"{FRANCE} Reply in JSON."}], temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": SCHEMA, "strict": True}})
    assert answer.choices[0].finish_reason == "stop"
    data = json.loads(answer.choices[0].message.content)
    jsonschema.validate(data, SCHEMA)
    anything = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": FRANCE}], temperature=0,
                                              max_tokens=60, response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)
    o = ollama.Client(host=server.url)
    jsonschema.validate(json.loads(o.generate(model="smollm2", prompt=FRANCE, format=SCHEMA,
                                              options={"temperature": 0, "num_predict": 60}).response), SCHEMA)
    bad = httpx.post(f"{server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wibble"}}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"


def health(server) -> dict:
    return httpx.get(f"{server.url}/health").json()


def wait_for(server, **want) -> dict:
    """Poll /health (bounded by polls, not seconds) until it shows `want`."""
    for _ in range(600):
        h = health(server)
        if all(h[k] == v for k, v in want.items()):
            return h
        time.sleep(0.05)
    raise AssertionError(f"/health never showed {want}: {h}\n{server.log_text()[-3000:]}")


def test_disconnects_free_their_slots(server, client):
    body = {"messages": [{"role": "user", "content": STORY}], "max_tokens": 300, "temperature": 0, "stream": True}
    streams = []
    for _ in range(2):          # both slots: read a few chunks, then keep the connection open
        cm = httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=300)
        lines = cm.__enter__().iter_lines()
        got = [line for line in (next(lines) for _ in range(6)) if line]
        assert got and got[0].startswith("data: ")
        streams.append((cm, lines))     # keep the reader too: a line iterator closed by the GC closes its connection
    # a third waits in the queue (no slot free) on a raw connection, and leaves before it is served
    payload = json.dumps(body).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as queued:
        queued.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        wait_for(server, running=2, waiting=1)
    wait_for(server, running=2, waiting=0)
    for cm, _ in streams:            # the two streaming clients leave mid-answer
        cm.__exit__(None, None, None)
    wait_for(server, running=0, waiting=0)
    answer = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": FRANCE}], temperature=0,
                                            max_tokens=24)
    assert "Paris" in answer.choices[0].message.content
    cut = [int(m.group(1)) for m in re.finditer(r"POST /v1/chat/completions 200 [\d.]+ ms (\d+) tokens", server.log_text())]
    assert sum(1 for n in cut if n < 300) >= 2       # the two left streams stopped generating long before max_tokens


def test_sigterm_finishes_the_answer_in_flight_and_exits_0(server):
    body = {"messages": [{"role": "user", "content": STORY}], "max_tokens": 24, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=300) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith("data: ")
        server.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"    # all 24 tokens, not cut short
    assert server.proc.wait(timeout=300) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health")
