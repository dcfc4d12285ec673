"""Structured output (`runtime.structured`, `run --json-schema/--json-object`): on the real SmolLM2 GGUF (llama.cpp)
and the tiny random llama (transformers), the answer parses with `json` and validates with `jsonschema` (the
oracles) at temperature 0 and 1, while the same prompt without the mask is not JSON; the sampler never picks a
masked token; end-of-turn is allowed only once the JSON is complete; bad schemas are one line, exit 2."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from modelport import runtime
from modelport.core.errors import UnsupportedError
from modelport.runtime import Sampler, Sampling
from modelport.runtime.structured import check_schema, json_constraint, tokenizer_for
from modelport.samples import smollm2_gguf

from .conftest import run_cli

# An object with a string, an integer, an enum and an array, all required; bounded so that even a random model's
# answer (any bytes the grammar allows) ends well within max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
PERSON = "Describe a person: their name, age, favourite colour and a few tags."
SETTINGS = [(0.0, None), (1.0, 0), (1.0, 1), (1.0, 2)]


def parse_and_validate(text: str, schema: dict | None = None):
    value = json.loads(text)
    jsonschema.validate(value, schema or {"type": "object"})
    return value


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


# ------------------------------------------------------------------ the sampler over masked logits

@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0, seed=0), Sampling(temperature=2.0, seed=1),
                                      Sampling(temperature=1.0, top_p=0.9, seed=2), Sampling(temperature=1.0, top_k=5, seed=3),
                                      Sampling(temperature=0.7, top_k=40, top_p=0.5, seed=4)])
def test_sampler_never_picks_a_masked_token(sampling):
    """The best tokens masked (-inf): greedy takes the best allowed one, sampling draws only allowed ones and
    all of them in proportion; top-k larger than what is allowed keeps only what is allowed."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 1000).astype(np.float32)
    allowed = np.zeros(1000, dtype=bool)
    allowed[np.argsort(-logits)[10:13]] = True       # three allowed tokens, none among the ten best
    logits[~allowed] = -np.inf
    sampler = Sampler(sampling)
    picks = [sampler(logits.copy()) for _ in range(300)]
    assert set(picks) <= set(np.flatnonzero(allowed))
    if sampling.temperature == 0:
        assert set(picks) == {int(np.argmax(np.where(allowed, logits, -np.inf)))}
    elif sampling.top_p == 1.0 and sampling.top_k != 1:
        assert len(set(picks)) == 3                  # all three drawn, not just the first


def test_sampler_refuses_a_vector_with_nothing_allowed():
    with pytest.raises(UnsupportedError, match="every token is masked"):
        Sampler(Sampling(temperature=1.0, seed=0))(np.full(10, -np.inf, dtype=np.float32))


# ------------------------------------------------------------------ schemas

@pytest.mark.parametrize("schema, needle", [
    ({"type": "strin"}, "invalid JSON schema at type"),
    ({"type": "object", "required": "name"}, "invalid JSON schema at required"),
    ({"type": "string", "minLength": -1}, "invalid JSON schema at minLength"),
    ({"type": "string", "format": "no-such-format"}, "cannot enforce this JSON schema"),
    (["not", "a", "schema"], "a JSON schema is a JSON object, not list"),
])
def test_bad_schema_is_one_line_unsupported_error(schema, needle):
    with pytest.raises(UnsupportedError) as info:
        check_schema(schema)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def tiny_engine(tiny):
    with runtime.load(tiny) as eng:
        yield eng


def test_end_of_turn_only_once_the_json_is_complete(tiny_engine):
    """At the start only '{' (and whitespace) may come, end-of-turn may not; a complete object finishes the grammar;
    a number may end (end-of-turn allowed) but may also go on."""
    eng = tiny_engine
    assert tokenizer_for(eng) is tokenizer_for(eng)          # built once per engine
    constraint = json_constraint(eng, None)
    logits = np.zeros(eng.n_vocab, dtype=np.float32)
    constraint.apply(logits)
    allowed = np.flatnonzero(np.isfinite(logits))
    assert len(allowed) and not set(allowed) & eng.stop_ids
    assert all(eng.detokenize([int(t)]).lstrip(" \t\r\n")[:1] in ("{", "") for t in allowed)
    assert "{" in {eng.detokenize([int(t)]) for t in allowed}
    for token in eng.tokenize('{"a": [1, "x"]}'):
        assert not constraint.finished()
        constraint.accept(token)
    assert constraint.finished()

    number = json_constraint(eng, {"type": "integer"})
    for token in eng.tokenize("12"):
        number.accept(token)
    logits = np.zeros(eng.n_vocab, dtype=np.float32)
    number.apply(logits)
    assert not number.finished() and all(np.isfinite(logits[list(eng.stop_ids)]))
    assert np.isfinite(logits[eng.tokenize("3")[0]]) and not np.isfinite(logits[eng.tokenize("x")[0]])
    with pytest.raises(UnsupportedError, match="does not fit the JSON schema"):
        number.accept(eng.tokenize("x")[0])


def test_json_constraint_refuses_a_bad_schema_before_generating(tiny_engine):
    with pytest.raises(UnsupportedError, match="invalid JSON schema"):
        json_constraint(tiny_engine, {"type": 5})


# ------------------------------------------------------------------ the tiny random llama (transformers)

@pytest.mark.parametrize("temperature, seed", SETTINGS)
def test_tiny_model_answers_json_that_validates(tiny_engine, temperature, seed):
    eng = tiny_engine
    ids = eng.chat_ids([{"role": "user", "content": PERSON}])
    result = eng.complete(ids, max_tokens=200, sampling=Sampling(temperature=temperature, seed=seed),
                          constraint=json_constraint(eng, SCHEMA))
    assert result.stop_reason == "stop", result.text
    value = parse_and_validate(result.text, SCHEMA)
    assert set(value) == {"name", "age", "color", "tags"}


def test_tiny_model_without_the_mask_is_not_json_and_json_object_is(tiny_engine):
    eng = tiny_engine
    ids = eng.chat_ids([{"role": "user", "content": PERSON}])
    free = eng.complete(ids, max_tokens=60)
    assert not is_json(free.text), free.text
    for seed in (0, 1):
        answer = eng.complete(ids, max_tokens=200, sampling=Sampling(temperature=1.0, seed=seed),
                              constraint=json_constraint(eng, None))
        assert answer.stop_reason == "stop" and isinstance(parse_and_validate(answer.text), dict)


def test_a_grammar_cut_by_max_tokens_stops_with_length(tiny_engine):
    eng = tiny_engine
    ids = eng.chat_ids([{"role": "user", "content": PERSON}])
    result = eng.complete(ids, max_tokens=4, constraint=json_constraint(eng, SCHEMA))
    assert result.stop_reason == "length" and len(result.tokens) == 4 and not is_json(result.text)


# ------------------------------------------------------------------ run --json-schema / --json-object

def test_run_json_schema(tiny, tmp_path):
    schema_file = tmp_path / "person.schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    base = ("run", tiny, "-p", PERSON, "--json-schema", schema_file, "--temperature", "1", "--seed", "3")
    printed = run_cli(*base, "--max-tokens", "200")
    assert printed.code == 0, printed.stderr
    parse_and_validate(printed.stdout, SCHEMA)
    data = json.loads(run_cli(*base, "--max-tokens", "200", "--json").stdout)
    assert data["text"] == printed.stdout.rstrip("\n") and data["stop_reason"] == "stop"
    assert data["structured"] == {"schema": str(schema_file), "valid": True, "problem": None}
    obj = run_cli("run", tiny, "-p", PERSON, "--json-object", "--max-tokens", "200", "--json")
    assert obj.code == 0 and isinstance(parse_and_validate(json.loads(obj.stdout)["text"]), dict)
    # Cut by --max-tokens: the partial text is printed, then one line on stderr says why, exit 1.
    cut = run_cli(*base, "--max-tokens", "3")
    assert cut.code == 1 and not is_json(cut.stdout)
    assert cut.stderr.strip().splitlines() == [
        "modelport: the answer reached --max-tokens 3 before its JSON was complete (raise --max-tokens)"]
    cut_json = run_cli(*base, "--max-tokens", "3", "--json")
    assert cut_json.code == 1 and json.loads(cut_json.stdout)["structured"]["valid"] is False


@pytest.mark.parametrize("content, needle", [
    ('{"type": ', "not valid JSON (Expecting value at line 1 column 10)"),
    ('{"type": "strin"}', "invalid JSON schema at type"),
    ('[1, 2]', "a JSON schema is a JSON object, not list"),
    (None, "cannot read"),
])
def test_run_bad_schema_file_is_one_line_exit_2(tiny, tmp_path, content, needle):
    schema_file = tmp_path / "bad.json"
    if content is not None:
        schema_file.write_text(content)
    result = run_cli("run", tiny, "-p", PERSON, "--json-schema", schema_file)
    assert result.code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"modelport: {schema_file}: {needle}"), result.stderr


def test_run_json_schema_and_json_object_together_is_refused(tiny, tmp_path):
    schema_file = tmp_path / "s.json"
    schema_file.write_text("{}")
    result = run_cli("run", tiny, "-p", PERSON, "--json-schema", schema_file, "--json-object")
    assert result.code == 2 and "give --json-schema or --json-object, not both" in result.stderr


# ------------------------------------------------------------------ the real SmolLM2 (llama.cpp)

@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llama_cpp")
    with runtime.load(smollm2_gguf(), ctx=512) as eng:
        yield eng


@pytest.mark.slow
@pytest.mark.parametrize("temperature, seed", SETTINGS)
def test_smollm2_answers_json_that_validates(smollm2, temperature, seed):
    ids = smollm2.chat_ids([{"role": "user", "content": PERSON}])
    result = smollm2.complete(ids, max_tokens=160, sampling=Sampling(temperature=temperature, seed=seed),
                              constraint=json_constraint(smollm2, SCHEMA))
    assert result.stop_reason == "stop", result.text
    parse_and_validate(result.text, SCHEMA)


@pytest.mark.slow
def test_smollm2_without_the_mask_is_not_json_and_json_object_is(smollm2):
    ids = smollm2.chat_ids([{"role": "user", "content": PERSON}])
    free = smollm2.complete(ids, max_tokens=80)
    assert not is_json(free.text), free.text
    answer = smollm2.complete(ids, max_tokens=160, constraint=json_constraint(smollm2, None))
    assert answer.stop_reason == "stop" and isinstance(parse_and_validate(answer.text), dict)


@pytest.mark.slow
def test_smollm2_run_json_schema(tmp_path):
    pytest.importorskip("llama_cpp")
    schema_file = tmp_path / "person.schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    result = run_cli("run", smollm2_gguf(), "-p", PERSON, "--json-schema", schema_file, "--max-tokens", "160", "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["engine"] == "llama.cpp" and data["structured"]["valid"] and data["stop_reason"] == "stop"
    parse_and_validate(data["text"], SCHEMA)
