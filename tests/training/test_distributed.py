"""The same `modelport train` under `accelerate launch` (2 processes, DDP over gloo on this CPU) follows the loss
curve of one process with the same global batch, and only rank 0 writes metrics, the model and the summary."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.conftest import cli_process, run_cli
from tests.factory import chat_model

TEXT = "The capital of France is Paris. The capital of Italy is Rome. Hello, how are you today?\n" * 40
STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora"])
def test_two_processes_follow_the_single_process_loss_curve(tmp_path, method):
    model = chat_model(tmp_path / "tiny")
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    common = ["--method", method, "--max-steps", STEPS, "--seq-len", "32", "--lr", "3e-3", "--save-steps", "0",
              "--logging-steps", "1", "--fp32", "--seed", "5", "--json"]
    single = tmp_path / "single"
    one = run_cli("train", model, data, "--out", single, "--batch", "4", *common)
    assert one.code == 0, one.stderr

    # the launch line `--dry-run` prints, with a port of our own (other test runs may hold accelerate's default)
    plan = json.loads(run_cli("train", model, data, "--out", tmp_path / "ddp", "--batch", "2", "--dry-run",
                              *common).stdout)
    line = plan["accelerate"].split()
    assert line[:3] == ["accelerate", "launch", "--multi_gpu"] and line[line.index("-m") + 1] == "modelport"
    argv, env = cli_process()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()), *line[2:],
              "--json"]
    env["HF_HOME"] = str(tmp_path / "hf")           # no accelerate config file from elsewhere
    two = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    summary = json.loads(two.stdout)                # one summary: rank 1 prints nothing
    assert summary["steps"] == STEPS and summary["main_process"]
    a, b = losses(single), losses(tmp_path / "ddp")
    assert len(a) == len(b) == STEPS                # one writer of metrics.jsonl
    assert a[-1] < a[0]                             # a curve, not a constant
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4, (a, b)
    assert (tmp_path / "ddp" / ("model" if method == "full" else "adapter")).is_dir()
