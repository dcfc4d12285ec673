"""`--dry-run`'s memory is what a `modelport train` process really peaks at (within 30 %).

The model is a narrow, deep llama (16 layers of width 64, a 4096-entry vocabulary), so a short run on thousands
of tokens a step is quick and yet its activations and logits are a large share of the peak: the test checks the
activation model, not only the runtime constant. The peak is the kernel's (wait4's ru_maxrss) for that one
process; SmolLM2-135M's figures (measured by hand, bench/train.py) are in docs/training.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import cli_process, run_cli
from tests.factory import CHATML, chat_tokenizer, random_model, save_model

WORDS = "the of and to in is was for on with as by at from river mill grain winter spring summer village".split()


#: Runs a command and prints its peak RSS. A child forked from pytest itself would report pytest's own size
#: (Linux carries the forked copy's high-water mark through exec into ru_maxrss), so a small launcher forks it.
LAUNCHER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def peak_rss(argv, env) -> int:
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1]) * 1024


@pytest.mark.slow
def test_measured_peak_rss_is_within_30_percent_of_the_dry_run(tmp_path):
    import random

    folder = tmp_path / "deep"
    folder.mkdir()
    chat_tokenizer(folder, CHATML)
    save_model(random_model("llama", 0, vocab_size=4096, hidden_size=64, intermediate_size=172, num_hidden_layers=16,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                            tie_word_embeddings=False), folder)
    rng = random.Random(0)
    data = tmp_path / "words.txt"
    data.write_text(" ".join(rng.choice(WORDS) for _ in range(8000)))
    args = ["train", folder, data, "--method", "lora", "--out", tmp_path / "out", "--max-steps", "2", "--seq-len", "128",
            "--batch", "16", "--fp32", "--save-steps", "0"]
    plan = run_cli(*args, "--dry-run", "--json")
    assert plan.code == 0, plan.stderr
    memory = json.loads(plan.stdout)["memory"]
    assert memory["activations"] > 0.4 * memory["total"]     # the activation model carries weight here

    measured = peak_rss(*cli_process(*args, "--json"))
    error = memory["total"] / measured - 1
    print(f"\nestimate {memory['total'] / 1e6:.0f} MB, measured {measured / 1e6:.0f} MB ({error:+.1%})")
    assert abs(error) < 0.30, (memory, measured)
