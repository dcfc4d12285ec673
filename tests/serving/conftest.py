"""`modelport serve` as a real process on a free loopback port, and the models it serves in these tests.

`start_server` runs the CLI in a fresh interpreter with `--port 0 --json`, reads the port it bound from its
first output, and waits for /health; the server's stderr (its access log) is kept in a file the tests read.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import cli_process
from tests.factory import chat_model


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log: Path
    facts: dict

    def log_text(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def start_server(model, *args, log: Path, timeout: float = 300) -> Served:
    """`modelport serve MODEL --port 0 --json ARGS`, ready to answer (its /health says ok)."""
    argv, env = cli_process("serve", model, "--port", "0", "--json", *args)
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    facts: dict = {}

    def read_facts():   # the --json facts are the first thing on stdout; then stdout stays quiet
        text = ""
        for line in proc.stdout:
            text += line
            try:
                facts.update(json.loads(text))
                return
            except json.JSONDecodeError:
                continue

    reader = threading.Thread(target=read_facts, daemon=True)
    reader.start()
    reader.join(timeout)
    if not facts:
        proc.kill()
        raise AssertionError(f"the server did not start: {log.read_text()}")
    url = facts["url"]
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return Served(proc, url, log, facts)
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        threading.Event().wait(0.1)
    proc.kill()
    raise AssertionError(f"the server never answered /health: {log.read_text()}")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """The runtime tests' tiny llama with a ChatML template (Hugging Face folder)."""
    return chat_model(tmp_path_factory.mktemp("serve-tiny") / "model")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_folder, tmp_path_factory) -> Path:
    """The same model as a GGUF (llama.cpp: fast enough for load tests)."""
    import modelport

    out = tmp_path_factory.mktemp("serve-gguf") / "tiny.gguf"
    modelport.convert(tiny_folder, out)
    return out
