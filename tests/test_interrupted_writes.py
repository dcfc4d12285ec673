"""Nothing half-written, ever: a conversion killed (SIGKILL at random points), interrupted (Ctrl-C, SIGTERM) or out
of disk (RLIMIT_FSIZE in the child) leaves no file at the destination, at most a recognisable temporary that the
next write of the same output removes; the input is never modified. Real `modelport` processes, real signals."""

from __future__ import annotations

import hashlib
import random
import resource
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import modelport
from tests.conftest import cli_process

N_KILLS = 10


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """64 MB of float32 in 16 tensors, written by the safetensors library."""
    path = tmp_path_factory.mktemp("interrupt") / "src.safetensors"
    rng = np.random.default_rng(0)
    save_file({f"layer.{i}.weight": rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(16)}, path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".modelport-" in p.name and p.name.endswith(".tmp")]


def _outputs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith("out")]


def _convert(src: Path, dst: Path, *extra: str, preexec=None) -> subprocess.Popen:
    argv, env = cli_process("convert", src, dst, "--to", "gguf", "--dtype", "f16", "-q", *extra)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def _when_writing(proc: subprocess.Popen, folder: Path, timeout: float = 300) -> float:
    """Wait until the process has a temporary output (the write has begun); the time it was seen."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if _temporaries(folder):
            return time.monotonic()
        time.sleep(0.002)
    return time.monotonic()


def _check_complete(path: Path, src: Path) -> None:
    with modelport.open(path) as out, modelport.open(src) as ref:
        assert list(out.tensors) == list(ref.tensors)
        for name, t in ref.tensors.items():
            assert np.array_equal(out.tensors[name].read(), t.read().astype(np.float16))


@pytest.mark.slow
def test_killed_at_random_points_leaves_nothing_and_the_next_run_cleans_up(source, tmp_path):
    before = _sha(source)
    folder = tmp_path / "kills"
    folder.mkdir()
    dst = folder / "out.gguf"
    # how long a whole write takes here, from its temporary's appearance to the process's end
    proc = _convert(source, tmp_path / "timing.gguf")
    seen = _when_writing(proc, tmp_path)
    assert proc.wait() == 0, proc.stderr.read()
    write_time = max(time.monotonic() - seen, 0.05)
    rng = random.Random(0)
    finished = 0
    for k in range(N_KILLS):
        split = ("--split-max-size", "12MB") if k % 2 else ()
        proc = _convert(source, dst, *split)
        _when_writing(proc, folder)
        time.sleep(rng.uniform(0, write_time))
        proc.kill()
        code = proc.wait()
        assert code in (0, -signal.SIGKILL)
        if _outputs(folder):    # killed after the rename (or not at all): then it is whole
            out = next(folder.glob("out-00001-of-*.gguf")) if split else dst
            _check_complete(out, source)
            finished += 1
            for p in _outputs(folder):
                p.unlink()
        assert len(_temporaries(folder)) <= k + 1
    assert finished < N_KILLS // 2      # most kills landed during the write
    # the next writes of the same outputs remove what the killed ones left, then write whole files
    for split in ((), ("--split-max-size", "12MB")):
        proc = _convert(source, dst, *split)
        assert proc.wait() == 0, proc.stderr.read()
    assert not _temporaries(folder), [p.name for p in folder.iterdir()]
    parts = [f"out-{i:05d}-of-00004.gguf" for i in (1, 2, 3, 4)]   # 16 tensors of 2 MB: 5 + 5 + 5 + 1
    assert sorted(p.name for p in _outputs(folder)) == [*parts, "out.gguf"]
    _check_complete(dst, source)
    _check_complete(folder / parts[2], source)
    assert _sha(source) == before


@pytest.mark.slow
@pytest.mark.parametrize("split", [(), ("--split-max-size", "12MB")], ids=["file", "split"])
def test_a_full_disk_is_a_one_line_error_and_leaves_nothing(source, tmp_path, split):
    before = _sha(source)
    limit = (6 if split else 20) * 2**20   # per file (parts of ~10 MB, or 32 MB): EFBIG part way, as on a full disk

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _convert(source, tmp_path / "out.gguf", *split, preexec=small_disk)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "out" in lines[0] and "the disk is full" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], [p.name for p in tmp_path.iterdir()]
    assert _sha(source) == before


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_remove_the_temporary(source, tmp_path, sig, code, word):
    proc = _convert(source, tmp_path / "out.gguf")
    _when_writing(proc, tmp_path)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=600)
    if proc.returncode == 0:    # the write beat the signal: it is whole
        _check_complete(tmp_path / "out.gguf", source)
        return
    assert proc.returncode == code, (out, err)
    assert err.strip() == f"modelport: {word}", err
    assert list(tmp_path.iterdir()) == []
