"""Tour step 7: `estimate` and `recommend` for this model and for a 7B model of the same family (a Llama config:
modelport sizes a model from its config alone), then `serve` started for a few seconds and asked one question
through its OpenAI API (`POST /v1/chat/completions`, plain HTTP from the standard library).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..core.errors import ModelportError
from ..estimate import estimate
from ..recommend import GOALS, recommend
from .journal import Journal

#: A 7B model of SmolLM2's family (Llama): Llama-2-7B's shape.
LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float16"}
METHODS = ("full", "lora", "qlora")
CTX = 2048          # the context the estimates assume and the server gets


def sizes(journal: Journal, models: dict[str, Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    big = folder / "llama-7b"
    big.mkdir(exist_ok=True)
    (big / "config.json").write_text(json.dumps(LLAMA_7B, indent=2) + "\n")
    models = {**models, "Llama 7B (config only)": big}
    with journal.step("estimate", "estimate: memory to run and to train, this model and a 7B of its family") as step:
        rows: dict[str, Any] = {}
        for label, path in models.items():
            report = estimate(path, ctx=CTX)
            training = {m: estimate(path, method=m, seq_len=512, train_batch=1)["training"] for m in METHODS}
            rows[label] = {"path": str(path), "parameters": report["parameters"],
                           "weights": {k: v["bytes"] for k, v in report["weights"].items()},
                           "inference_total": (report.get("inference") or {}).get("total"),
                           "training": {m: {"total": t["total"], "trainable_parameters": t.get("trainable_parameters")}
                                        for m, t in training.items()}}
            inference = rows[label]["inference_total"] or {}
            journal.say(f"{label}: {report['parameters'] / 1e6:,.0f} M parameters; run (ctx {CTX}) "
                        + ", ".join(f"{q} {inference[q] / 1e9:.2f} GB" for q in ("F16", "Q8_0", "Q4_K_M") if q in inference)
                        + "; train " + ", ".join(f"{m} {t['total'] / 1e9:.2f} GB" for m, t in training.items()))
        step.figures["models"] = rows
    with journal.step("recommend", "recommend: the format for each goal, this model and the 7B") as step:
        advice: dict[str, dict[str, Any]] = {}
        for label, path in models.items():
            advice[label] = {}
            for goal in GOALS:
                r = recommend(path, goal)
                advice[label][goal] = {"format": r["format"], "precision": r["precision"], "size": r.get("size"),
                                       "memory_needed": r.get("memory_needed"), "fits": r.get("fits"),
                                       "device": (r.get("device") or {}).get("name"), "method": r.get("method"),
                                       "why": r.get("why", [])[-1:] }
                journal.say(f"{label:24} {goal:14} {r['format']}, {r['precision']}"
                            + (f" ({r['method']})" if r.get("method") else ""))
        step.figures["advice"] = advice


def serve(journal: Journal, model: Path, question: str, threads: int) -> None:
    """`modelport serve MODEL --port 0 --json` as a user starts it (its own process: uvicorn owns its signals), asked
    once, then stopped with Ctrl-C's signal (answers in flight finish first). It gets `threads` of this process's
    cores (its CPU affinity: the engine runs a thread per core it may use)."""
    with journal.step("serve", "serve: an OpenAI-compatible server for a few seconds, asked one question") as step:
        started = time.perf_counter()
        argv = [sys.executable, "-m", "modelport", "serve", str(model), "--port", "0", "--ctx", str(CTX), "--json"]
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, sorted(mine)[:threads])      # this thread's mask, which the child inherits
        try:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            os.sched_setaffinity(0, mine)
        try:
            facts = ready_facts(process)
            url = f"{facts['url']}/v1/chat/completions"
            body = {"model": facts["model"], "messages": [{"role": "user", "content": question}], "max_tokens": 32,
                    "temperature": 0}
            reply, answer_s = post_when_listening(url, body)
            ready_s = time.perf_counter() - started - answer_s
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        text = reply["choices"][0]["message"]["content"]
        step.figures.update(url=url, model=str(model), engine=facts.get("engine"), question=question, answer=text, cores=threads,
                            ready_s=round(ready_s, 2), answer_s=round(answer_s, 2), usage=reply.get("usage"),
                            exit_code=process.returncode)
        journal.say(f"$ modelport serve {Path(model).name} --port 0  →  {facts['url']} ({facts.get('engine')}, up in {ready_s:.1f} s)")
        journal.say(f"POST /v1/chat/completions: {question} → {' '.join(text.split())}")
        journal.say(f"stopped with SIGINT: exit {process.returncode}")


def ready_facts(process: subprocess.Popen) -> dict[str, Any]:
    """The JSON `serve --json` prints once the model is loaded (it may span several lines)."""
    text = ""
    for line in process.stdout:
        text += line
        try:
            return json.loads(text)
        except ValueError:
            continue
    raise ModelportError(f"modelport serve exited {process.wait()} before it was ready: {process.stderr.read().strip()[-400:]}")


def post_when_listening(url: str, body: dict[str, Any], wait: float = 30.0) -> tuple[dict[str, Any], float]:
    """POST `body`; the port opens just after the facts are printed, so a refused connection is tried again."""
    deadline = time.monotonic() + wait
    while True:
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        asked = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read()), time.perf_counter() - asked
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
