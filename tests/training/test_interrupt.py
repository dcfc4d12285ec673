"""Ctrl-C during `modelport train`: the step finishes, a checkpoint is saved, one line says how to resume, exit 130.

A real process gets a real SIGINT once its first step is logged (the test polls metrics.jsonl; no sleep stands
in for an assertion), and the printed resume command then finishes the run from that checkpoint."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time

import pytest

from tests.conftest import cli_process, run_cli
from tests.factory import chat_model

TEXT = "The capital of France is Paris. The capital of Italy is Rome. Hello, how are you today?\n" * 40
STEPS = 30


def first_logged_step(metrics, proc, timeout: float = 300) -> None:
    """Wait until the run has logged a step (or has ended, which the caller's assertions then catch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().strip():
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    model = chat_model(tmp_path / "tiny")
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    argv, env = cli_process("train", model, data, "--method", "full", "--out", out, "--max-steps", STEPS,
                            "--save-steps", "0", "--logging-steps", "1", "--seq-len", "32", "--batch", "2", "--fp32")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_logged_step(out / "metrics.jsonl", proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("modelport:")]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1, checkpoints
    stopped = int(checkpoints[0].name.split("-")[1])
    assert 1 <= stopped < STEPS
    assert f"checkpoint {checkpoints[0]} saved" in lines[0]
    assert not (out / "model").exists()            # only a finished run writes the final model
    assert f"Interrupted after step {stopped}" in stdout
    assert f"step      1/{STEPS}  loss " in stdout.splitlines()[0]   # not a terminal: plain lines, one a step

    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[:2] == ["modelport", "train"] and command[-1] == "--resume"
    resumed = run_cli(*command[1:], "--json")
    assert resumed.code == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == str(checkpoints[0]) and summary["steps"] == STEPS
    assert summary["steps_run"] == STEPS - stopped
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))      # one row a step: the resumed rows follow the saved ones
