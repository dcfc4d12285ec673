"""The real `modelport` process, for what only a process shows: the exit status the shell sees, what reaches the
real stderr (one line, or the traceback under --debug), and Ctrl-C. Everything else runs the CLI in-process."""

from __future__ import annotations

import os
import signal
import subprocess

import torch

from tests.conftest import assert_one_line_error, cli_process, run_cli_process
from tests.factory import chat_model


def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path):
    assert_one_line_error(run_cli_process("inspect", tmp_path / "nope.safetensors"), "nope.safetensors", "no such file")


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli_process("--debug", "inspect", tmp_path / "nope")
    assert result.code != 0 and "Traceback" in result.stderr


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo never",))


def test_a_finding_exits_1(tmp_path):
    torch.save({"x": _Payload()}, tmp_path / "evil.bin")
    result = run_cli_process("scan", tmp_path / "evil.bin")
    assert result.code == 1 and "dangerous" in result.stdout and "Traceback" not in result.stderr


def test_ctrl_c_exits_130_without_a_traceback(tmp_path):
    """SIGINT while `run` streams an answer: the process ends with 130, the shell's code for Ctrl-C, quietly.
    (`chat` is different on purpose: Ctrl-C stops the answer and keeps the conversation; tests/cli/test_ux.py.)"""
    # 8192 positions: the answer outlasts a loaded machine's delay between the first character and the signal
    argv, env = cli_process("run", chat_model(tmp_path / "tiny", positions=8192), "-p", "Hello", "--max-tokens", "100000",
                            "--ignore-eos", "--raw")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdout.read(1)                 # the answer is streaming: the model is loaded and generating
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err)
