"""`modelport serve` on an encoder: embeddings through the real `openai` and `ollama` clients, equal to `embed`'s vectors
(unit length, as OpenAI's and Ollama's /api/embed are); the generating routes refuse in each API's shape."""

from __future__ import annotations

import httpx
import numpy as np
import ollama
import openai
import pytest

from modelport.runtime import embed
from tests.factory import bert_model

from .conftest import start_server

KEY = "embed-key"
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "quantum chromodynamics"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return bert_model(tmp_path_factory.mktemp("serve-bert") / "bert", pooling="mean", normalize=False)


@pytest.fixture(scope="module")
def server(bert, tmp_path_factory):
    served = start_server(bert, "--api-key", KEY, log=tmp_path_factory.mktemp("serve-bert-log") / "server.log")
    yield served
    assert served.stop() == 0


def test_openai_client_gets_the_embed_vectors(server, bert):
    expected = embed(bert, TEXTS, normalize=True)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    got = client.embeddings.create(model="bert", input=TEXTS)      # the client asks for base64 and decodes it
    vectors = np.array([d.embedding for d in got.data])
    assert [d.index for d in got.data] == [0, 1, 2]
    np.testing.assert_allclose(vectors, expected.vectors, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert got.usage.prompt_tokens == sum(expected.tokens) > len(TEXTS)
    floats = client.embeddings.create(model="bert", input="the cat sat on the mat", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, expected.vectors[0], atol=1e-5)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="bert", input="x", dimensions=7)
    with pytest.raises(openai.BadRequestError, match="token ids"):
        client.embeddings.create(model="bert", input=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.chat.completions.create(model="bert", messages=[{"role": "user", "content": "hi"}])
    assert server.facts["embeds"] and server.facts["engine"] == "transformers"


def test_ollama_client_embed_and_legacy_embeddings(server, bert):
    o = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"})
    got = o.embed(model="bert", input=TEXTS)
    np.testing.assert_allclose(np.array(got.embeddings), embed(bert, TEXTS, normalize=True).vectors, atol=1e-5)
    assert got.prompt_eval_count > len(TEXTS)
    legacy = o.embeddings(model="bert", prompt=TEXTS[2])      # Ollama's older route: the model's own vector
    np.testing.assert_allclose(legacy.embedding, embed(bert, TEXTS[2:]).vectors[0], atol=1e-5)
    with pytest.raises(ollama.ResponseError, match="embedding model"):
        o.generate(model="bert", prompt="hi")
    r = httpx.post(f"{server.url}/api/embed", json={"model": "bert", "input": []}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "no text" in r.json()["error"]
    assert httpx.post(f"{server.url}/api/embed", json={"input": "x"}).status_code == 401
