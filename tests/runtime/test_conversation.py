"""`runtime.Conversation` and the stop/stream machinery on real engines: the tiny llama in transformers, and
SmolLM2-135M-Instruct in llama.cpp where it is installed. transformers' own template rendering is the oracle
for what each turn sends."""

from __future__ import annotations

import math

import pytest
from transformers import AutoTokenizer

from modelport import runtime
from modelport.core.errors import ModelportError, UnsupportedError
from modelport.runtime import ContextFullError, Conversation, GenerationSettings, Sampling, stream_answer
from modelport.runtime.conversation import StopText
from modelport.samples import smollm2_gguf

from .conftest import run_cli

QUESTION = "What is the capital of France?"
SAMPLED = GenerationSettings(max_tokens=16, sampling=Sampling(temperature=1.0, seed=2), ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny):
    with runtime.load(tiny) as eng:
        yield eng


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return AutoTokenizer.from_pretrained(str(tiny), local_files_only=True)


def oracle_prompt_tokens(tokenizer, messages) -> int:
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))


def collecting(conversation: Conversation) -> list[str]:
    pieces: list[str] = []
    conversation.on_text = pieces.append
    return pieces


def test_turns_carry_the_history_and_the_system_prompt(engine, tokenizer):
    chat = Conversation(engine, GenerationSettings(max_tokens=6, ignore_eos=True), system="Be brief.")
    pieces = collecting(chat)
    first = chat.send(QUESTION)
    assert "".join(pieces) == first.text and first.completion_tokens > 0
    second = chat.send("And of Italy?")
    sent = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Italy?"}]
    assert first.prompt_tokens == oracle_prompt_tokens(tokenizer, sent[:2])
    assert second.prompt_tokens == oracle_prompt_tokens(tokenizer, sent)
    assert chat.history == sent[1:] + [{"role": "assistant", "content": second.text}]


def test_reset_forgets_the_turns_and_keeps_the_system_prompt(engine, tokenizer):
    chat = Conversation(engine, GenerationSettings(max_tokens=6), system="Be brief.")
    first = chat.send(QUESTION)
    chat.send(QUESTION)
    chat.reset()
    assert chat.history == [] and chat.system == "Be brief."
    again = chat.send(QUESTION)
    assert again.prompt_tokens == first.prompt_tokens and again.tokens == first.tokens   # greedy: same answer
    chat.set_system("Answer in French.")          # a new system prompt starts over
    assert chat.history == []
    french = chat.send(QUESTION)
    assert french.prompt_tokens == oracle_prompt_tokens(
        tokenizer, [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": QUESTION}])
    chat.set_system("")                           # none: the template's own default (chatml has none)
    plain = chat.send(QUESTION)
    assert plain.prompt_tokens == oracle_prompt_tokens(tokenizer, [{"role": "user", "content": QUESTION}])


def test_a_full_context_is_one_clear_error_and_reset_recovers(tiny):
    with runtime.load(tiny, ctx=48) as small:
        chat = Conversation(small, GenerationSettings(max_tokens=8, ignore_eos=True))
        answers = []
        with pytest.raises(ContextFullError) as caught:
            for _ in range(10):
                answers.append(chat.send(QUESTION))
        error = caught.value
        assert isinstance(error, ModelportError) and error.exit_code == 2
        message = str(error)
        assert "\n" not in message and "fills the context of 48" in message and "/reset" in message
        assert error.tokens >= 48 == error.n_ctx
        # The refused turn left no trace; every answer stayed inside the window.
        assert len(chat.history) == 2 * len(answers) and len(answers) >= 1
        assert all(a.prompt_tokens + a.completion_tokens <= 48 for a in answers)
        assert answers[-1].stop_reason in ("length", "context")
        chat.reset()
        assert chat.send(QUESTION).tokens == answers[0].tokens


def test_an_answer_near_the_end_of_the_context_is_cut_to_fit(tiny, tokenizer):
    with runtime.load(tiny, ctx=48) as small:
        prompt = oracle_prompt_tokens(tokenizer, [{"role": "user", "content": QUESTION}])
        chat = Conversation(small, GenerationSettings(max_tokens=500, ignore_eos=True))
        result = chat.send(QUESTION)
        assert result.completion_tokens == 48 - prompt and result.stop_reason == "length"


def test_stop_string_cuts_the_answer_and_nothing_after_it_is_streamed(engine):
    full = Conversation(engine, SAMPLED).send(QUESTION).text
    at = next(i for i in range(1, len(full) // 2) if full[i:i + 2].isascii() and full[i:i + 2].isalnum())
    stop = full[at:at + 2]
    expected = full[:full.index(stop)]
    chat = Conversation(engine, GenerationSettings(max_tokens=16, sampling=SAMPLED.sampling, ignore_eos=True,
                                                   stop=(stop, "never seen", "")))
    pieces = collecting(chat)
    result = chat.send(QUESTION)
    assert result.text == expected and "".join(pieces) == expected
    assert result.stop_reason == "stop" and result.completion_tokens < 16
    assert chat.history[-1] == {"role": "assistant", "content": expected}       # the history keeps the cut answer


def test_the_start_of_a_stop_string_is_held_back_then_released(engine):
    full = Conversation(engine, SAMPLED).send(QUESTION).text
    ends_with_its_start = full[-2:] + "\u2603"
    chat = Conversation(engine, GenerationSettings(max_tokens=16, sampling=SAMPLED.sampling, ignore_eos=True,
                                                   stop=(ends_with_its_start,)))
    pieces = collecting(chat)
    result = chat.send(QUESTION)
    assert result.text == full and "".join(pieces) == full and result.stop_reason == "length"


def test_stream_answer_serves_raw_prompts_too(engine):
    ids = engine.tokenize(QUESTION, add_special=True)
    pieces: list[str] = []
    result = stream_answer(engine, ids, GenerationSettings(max_tokens=12, ignore_eos=True), pieces.append)
    assert result.tokens == engine.complete(ids, max_tokens=12, ignore_eos=True).tokens
    assert "".join(pieces) == result.text == engine.detokenize(result.tokens)


def test_stop_text_across_pieces():
    cut = StopText(["<end>", "###"])
    shown = [cut.feed(p) for p in ("Hello <", "en", "d> never shown")]
    assert shown == ["Hello ", "", ""] and cut.hit and cut.text == "Hello "
    held = StopText(["###"])
    assert held.feed("a #") == "a " and held.feed("#") == "" and held.feed("x") == "##x" and not held.hit
    assert held.feed("##") == "" and held.release() == "##" and held.text == "a ##x##"


def test_settings_refuse_bad_values_before_any_model_loads(tiny):
    with pytest.raises(UnsupportedError, match="--max-tokens must be at least 1"):
        GenerationSettings(max_tokens=0)
    for bad in (dict(temperature=-1.0), dict(temperature=math.nan), dict(top_p=1.5), dict(top_k=-1), dict(seed=-1),
                dict(seed=1.5)):
        with pytest.raises(UnsupportedError):
            Sampling(**bad)
    assert GenerationSettings(stop=("", "x")).stop == ("x",)
    result = run_cli("run", tiny, "-p", "x", "--seed", "-1")
    assert result.code == 2 and result.stderr.strip() == "modelport: seed must be a whole number >= 0, not -1"


def test_a_real_chat_in_llama_cpp_stops_before_the_stop_string():
    pytest.importorskip("llama_cpp")
    question = "What is the capital of France? Answer in one sentence."
    with runtime.load(smollm2_gguf(), ctx=512) as eng:
        full = Conversation(eng, GenerationSettings(max_tokens=24)).send(question)
        assert "Paris" in full.text
        chat = Conversation(eng, GenerationSettings(max_tokens=24, stop=("Paris",)))
        pieces = collecting(chat)
        cut = chat.send(question)
        assert cut.text == full.text[:full.text.index("Paris")] == "".join(pieces)
        assert cut.stop_reason == "stop" and "Paris" not in "".join(pieces)
        follow = chat.send("And of Italy?")
        assert follow.prompt_tokens > cut.prompt_tokens + cut.completion_tokens
