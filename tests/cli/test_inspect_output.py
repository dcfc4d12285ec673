"""`inspect` output as people use it: piped into grep with whole names, in a terminal cut or (--wide) wrapped,
and the whole chat template on its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import modelport
from tests.factory import CHATML, make_model

SOURCE_ROOT = str(Path(modelport.__file__).resolve().parents[1])


def inspect(*args, terminal: bool = False) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess: stdout piped (plain output), or a terminal as rich sees one."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": SOURCE_ROOT, "COLUMNS": "100"}
    if terminal:
        env.update(FORCE_COLOR="1", TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
    return subprocess.run([sys.executable, "-m", "modelport", "inspect", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("inspect") / "a-model-folder-with-a-rather-long-name-for-terminals",
                      "llama", "gpt2", hidden=64, ffn=128, heads=4, kv_heads=2, layers=3, chat_template=CHATML)


def test_piped_tensor_list_greps_whole_names(hf_dir):
    result = inspect(hf_dir, "--tensors")
    assert result.returncode == 0, result.stderr
    with modelport.open(hf_dir) as source:
        q_proj = [n for n in source if "q_proj" in n]
    lines = result.stdout.splitlines()
    assert len([line for line in lines if "q_proj" in line]) == len(q_proj) == 3
    rows = {line.split("\t")[0]: line.split("\t") for line in lines if "\t" in line}
    for name in q_proj:                      # whole names, tab-separated: name, dtype, shape, parameters, bytes
        assert rows[name][1] == "F32" and int(rows[name][4]) == 64 * 64 * 4
    assert "…" not in result.stdout and str(hf_dir) in result.stdout


def test_terminal_cuts_long_values_and_wide_wraps_them(hf_dir, tmp_path):
    gguf = tmp_path / "m.gguf"
    modelport.convert(hf_dir, gguf)
    cut = inspect(gguf, terminal=True)
    assert cut.returncode == 0 and "\x1b[" in cut.stdout and "…" in cut.stdout    # rich in a terminal, cut cells
    wide = inspect(gguf, "--wide", terminal=True)
    assert wide.returncode == 0 and "…" not in wide.stdout


def test_template_prints_the_whole_chat_template(hf_dir, tmp_path):
    result = inspect(hf_dir, "--template")
    assert result.returncode == 0 and result.stdout == CHATML + "\n"
    gguf = tmp_path / "m.gguf"
    modelport.convert(hf_dir, gguf)
    assert inspect(gguf, "--template").stdout == CHATML + "\n"
    assert (hf_dir / "chat_template.jinja").read_text() == CHATML    # where transformers 5 keeps it
