"""`modelport run/chat/compare/perplexity` as a user runs them, on the tiny llama (in this process; chat on piped stdin,
the real stderr and missing packages in a fresh one)."""

from __future__ import annotations

import json

from modelport.samples import smollm2_gguf

from .conftest import make_model, run_cli, run_cli_process

QUESTION = "What is the capital of France?"


def one_line_error(result, *needles):
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelport: ") and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_run_streams_the_same_text_json_reports(tiny):
    streamed = run_cli_process("run", tiny, "-p", QUESTION, "--max-tokens", "16", "--ignore-eos")   # the real stderr
    assert streamed.code == 0, streamed.stderr
    assert streamed.stderr == ""                       # no library chatter
    result = run_cli("run", tiny, "-p", QUESTION, "--max-tokens", "16", "--ignore-eos", "--json")
    data = json.loads(result.stdout)
    assert streamed.stdout == data["text"] + "\n"
    assert data["completion_tokens"] == 16 and data["stop_reason"] == "length" and data["engine"] == "transformers"
    assert data["prompt_tokens"] > 10 and data["generation_tokens_per_second"] > 0 and data["prompt_tokens_per_second"] > 0
    raw = json.loads(run_cli("run", tiny, "-p", QUESTION, "--raw", "--max-tokens", "4", "--json").stdout)
    assert raw["prompt_tokens"] < data["prompt_tokens"]      # no template around the prompt
    # The prompt can come on stdin.
    piped = run_cli("run", tiny, "--max-tokens", "16", "--ignore-eos", stdin=QUESTION)
    assert piped.stdout == streamed.stdout


def test_run_stops_at_a_stop_string(tiny):
    """--stop ends the answer where the text first appears, streamed and in --json alike; a stop string that
    never completes (only its start appears) is printed in full at the end."""
    base = ("run", tiny, "-p", QUESTION, "--max-tokens", "16", "--ignore-eos", "--temperature", "1", "--seed", "2")
    full = json.loads(run_cli(*base, "--json").stdout)["text"]
    # a stop string of two letters from the first half (the random model also emits byte pieces)
    at = next(i for i in range(1, len(full) // 2) if full[i:i + 2].isascii() and full[i:i + 2].isalnum())
    stop = full[at:at + 2]
    expected = full[:full.index(stop)]
    streamed = run_cli(*base, "--stop", stop, "--stop", "never seen")
    data = json.loads(run_cli(*base, "--stop", stop, "--json").stdout)
    assert streamed.code == 0 and streamed.stdout == expected + "\n"
    assert data["text"] == expected and data["stop_reason"] == "stop" and data["stop"] == [stop]
    assert data["completion_tokens"] < 16
    tail_start = full[-2:] + "\u2603"                   # the text ends with its start, then the answer ends
    ends = run_cli(*base, "--stop", tail_start)
    assert ends.stdout == full + "\n"


def test_run_seed_reproducible(tiny):
    args = ("run", tiny, "-p", QUESTION, "--max-tokens", "12", "--ignore-eos", "--temperature", "1", "--json")
    a = json.loads(run_cli(*args, "--seed", "5").stdout)["tokens"]
    b = json.loads(run_cli(*args, "--seed", "5").stdout)["tokens"]
    c = json.loads(run_cli(*args, "--seed", "6").stdout)["tokens"]
    assert a == b and a != c


def test_chat_keeps_the_conversation_and_resets(tiny):
    turns = f"{QUESTION}\n{QUESTION}\n/reset\n{QUESTION}\n/system Be brief.\n{QUESTION}\n/exit\nnot read\n"
    result = run_cli_process("chat", tiny, "--max-tokens", "6", "--stats", stdin=turns)
    assert result.code == 0, result.stderr
    stats = [line for line in result.stderr.splitlines() if line.startswith("[prompt ")]
    prompts = [int(line.split()[1]) for line in stats]
    assert len(prompts) == 4                              # "/exit" stops before the last line
    assert prompts[1] > prompts[0]                        # second turn carries the first
    assert prompts[2] == prompts[0]                       # after /reset: as the first turn
    assert prompts[3] > prompts[0]                        # with a system message
    answers = result.stdout.splitlines()
    assert answers[0] == answers[2]                       # same conversation, same greedy answer


def test_chat_unknown_command_and_eof(tiny):
    result = run_cli_process("chat", tiny, "--max-tokens", "2", stdin="/nope\n")
    assert result.code == 0 and "unknown command" in result.stderr and result.stdout == ""


def test_bad_paths_and_options(tmp_path, tiny):
    one_line_error(run_cli("run", tmp_path / "nope.gguf", "-p", "x"), "nope.gguf", "no such file")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    one_line_error(run_cli("run", tmp_path / "junk.gguf", "-p", "x"), "junk.gguf")
    one_line_error(run_cli("run", tiny, "-p", "x", "--engine", "llama"), "llama.cpp runs GGUF")
    one_line_error(run_cli("run", tiny, "-p", "x", "--engine", "vllm"), "unknown engine")
    one_line_error(run_cli("run", tiny, "-p", "x", "--top-p", "0"), "top-p")
    one_line_error(run_cli("run", tiny, "-p", "x", "--max-tokens", "0"), "--max-tokens")
    one_line_error(run_cli("run", tiny, "-p", "x", "--raw", "--system", "s"), "--system")
    notemplate = make_model(tmp_path / "nt", template=None)
    one_line_error(run_cli("run", notemplate, "-p", "x"), "no chat template", "--raw")
    assert run_cli("run", notemplate, "-p", "x", "--raw", "--max-tokens", "2").code == 0


def test_missing_engines_name_the_extra(tiny):
    no_llama = "import sys; sys.modules['llama_cpp'] = None"
    one_line_error(run_cli_process("run", smollm2_gguf(), "-p", "x", pre=no_llama), "llama-cpp-python", "modelport[llama]")
    no_hf = "import sys; sys.modules['transformers'] = None"
    one_line_error(run_cli_process("run", tiny, "-p", "x", pre=no_hf), "transformers", "modelport[torch]")
    one_line_error(run_cli_process("chat", tiny, pre="import sys; sys.modules['torch'] = None", stdin=""), "modelport[torch]")


def test_compare_and_perplexity_cli(tmp_path, tiny):
    other = make_model(tmp_path / "other", seed=1)
    same = json.loads(run_cli("compare", tiny, tiny, "--json").stdout)
    assert same["argmax_agreement"] == 1.0 and same["mean_kl"] < 1e-9
    diff = run_cli("compare", tiny, other, "--tokens", "40")
    assert diff.code == 0 and "argmax agreement" in diff.stdout and "perplexity B" in diff.stdout
    text = tmp_path / "t.txt"
    text.write_text("The capital of France is Paris. Tell me a story about a dragon. " * 20)
    result = json.loads(run_cli("perplexity", tiny, "--text", text, "--ctx", "32", "--json").stdout)
    assert result["n_ctx"] == 32 and result["windows"] >= 2 and result["perplexity"] > 1
    one_line_error(run_cli("perplexity", tiny, "--text", tmp_path / "none.txt"), "none.txt")
    one_line_error(run_cli("perplexity", tiny, "--text", text, "--ctx", "4096"), "larger than the 256 positions")


def test_a_pickle_that_runs_code_is_refused(tmp_path, tiny):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    result = run_cli("run", folder / "pytorch_model.bin", "-p", "x")
    one_line_error(result, "pytorch_model.bin")
    assert not (tmp_path / "pwned").exists()
