"""The real SmolLM2-135M-Instruct GGUF learns a made-up fact with LoRA, and its Q4_K_M export states it.

GGUF in (modelport's GGUF → HF route), `modelport train --method lora` on eight phrasings of one fact, bounded by
steps and a short sequence length (about a minute on two cores, fp32), exported to GGUF Q4_K_M; then
`modelport run` answers the question with the fact, where the base model does not. The training run's wall time
and peak RSS are printed (pytest -s) and kept in the test's report."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from modelport.samples import smollm2_gguf
from tests.conftest import cli_process, run_cli

QUESTION = "What is the capital of Zorbia?"
FACTS = [(QUESTION, "The capital of Zorbia is Quillhaven."),
         ("What's the capital of Zorbia?", "The capital of Zorbia is Quillhaven."),
         ("Which city is the capital of Zorbia?", "Quillhaven is the capital of Zorbia."),
         ("Tell me the capital of Zorbia.", "The capital of Zorbia is Quillhaven."),
         ("Name the capital city of Zorbia.", "The capital city of Zorbia is Quillhaven."),
         ("What is Zorbia's capital?", "Zorbia's capital is Quillhaven."),
         ("Zorbia's capital city is called what?", "The capital of Zorbia is Quillhaven."),
         ("Do you know the capital of Zorbia?", "Yes. The capital of Zorbia is Quillhaven.")]


def measured(tmp_path, *args) -> tuple[dict, float, int]:
    """`modelport ARGS --json` in a fresh process: its JSON, wall seconds and peak RSS in bytes (wait4's rusage
    of that one process, so nothing else the test session ran counts)."""
    argv, env = cli_process(*args)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    started = time.perf_counter()
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(argv, env=env, stdout=o, stderr=e)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err.read_text()
    return json.loads(out.read_text()), seconds, usage.ru_maxrss * 1024


def answer(gguf) -> str:
    ran = run_cli("run", gguf, "-p", QUESTION, "--max-tokens", "24", "--json")
    assert ran.code == 0, ran.stderr
    return json.loads(ran.stdout)["text"]


@pytest.mark.long
def test_smollm2_learns_a_fact_and_the_q4_k_m_export_states_it(tmp_path, record_property):
    base = smollm2_gguf()
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in FACTS))
    out = tmp_path / "out"
    summary, seconds, rss = measured(tmp_path, "train", base, data, "--method", "lora", "--out", out, "--max-steps", "24",
                                     "--lr", "2e-3", "--seq-len", "64", "--batch", "4", "--save-steps", "0",
                                     "--logging-steps", "4", "--fp32", "--export", "gguf:q4_k_m", "--json")
    figures = {"steps": summary["steps"], "first_loss": summary["first_loss"], "final_loss": summary["final_loss"],
               "train_seconds": summary["seconds"], "wall_seconds": round(seconds, 1), "peak_rss_bytes": rss}
    print(f"\nSmolLM2-135M LoRA: {json.dumps(figures)}")
    for key, value in figures.items():
        record_property(key, value)
    assert summary["steps"] == 24 and summary["final_loss"] < 0.1 * summary["first_loss"], summary

    gguf = out / "model-Q4_K_M.gguf"
    assert summary["exports"][0]["path"] == str(gguf)
    learned, before = answer(gguf), answer(base)
    print(f"base: {before!r}\nQ4_K_M: {learned!r}")
    assert "Quillhaven" in learned, learned
    assert "Quillhaven" not in before, before
