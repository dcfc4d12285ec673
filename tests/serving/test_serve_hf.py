"""`modelport serve` on a Hugging Face folder: the transformers engine behind the same APIs, its slots serialized
(and saying so), the chat template read from the folder's tokenizer_config."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from .conftest import start_server

pytestmark = pytest.mark.slow


def test_hf_folder_served_through_transformers(tiny_folder, tmp_path):
    server = start_server(tiny_folder, "--parallel", "2", "--name", "tiny-hf", log=tmp_path / "server.log")
    try:
        health = httpx.get(f"{server.url}/health").json()
        assert health["engine"] == "transformers" and health["batched"] is False and server.facts["model"] == "tiny-hf"
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)
        ask = {"model": "tiny-hf", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0, "max_tokens": 8}
        alone = client.chat.completions.create(**ask)
        assert alone.choices[0].finish_reason in ("stop", "length") and alone.usage.completion_tokens >= 1
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(client.chat.completions.create(**ask))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert [a.choices[0].message.content for a in answers] == [alone.choices[0].message.content] * 2
    finally:
        assert server.stop() == 0
