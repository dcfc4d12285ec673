"""The bounded fuzz run of the suite, and every input the fuzzer ever broke a reader with, replayed.

The run is seeded and deterministic (the same inputs every time); `FUZZ_INPUTS` changes its size and `make fuzz`
runs a much longer one through `python -m tests.fuzz.harness`. A failure names the seed format, the input's index
and what escaped; `python -m tests.fuzz.harness --inputs N --seed 0 --save DIR` writes the inputs to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import modelport
from modelport.core.errors import FormatError
from tests.conftest import assert_one_line_error

from .harness import Worker, replay, run, table
from .seeds import make_seeds

CORPUS = Path(__file__).resolve().parent / "corpus"
INPUTS = int(os.environ.get("FUZZ_INPUTS", "2100"))


@pytest.mark.slow
def test_bounded_fuzz_run(seeds, tmp_path):
    """2,100 damaged files over the 16 seed formats, each scanned, opened, fully read and inspected in a worker
    process (one per core): no exception but a one-line ModelportError, no allocation past the bound, no hang.
    Its time goes to HDF5 (h5py and the preflight's fork) and to the scanner's TF graph walks."""
    check_run(INPUTS, seeds, tmp_path)


def check_run(inputs: int, seeds: list, tmp_path: Path) -> None:
    result = run(inputs, seed=0, work=tmp_path, seeds=seeds)
    print("\n" + table(result))
    assert sum(sum(c.values()) for c in result.counts.values()) == inputs
    assert set(result.counts) == {s.format for s in seeds}    # every seed format (16) was damaged
    assert all(c["refused"] for c in result.counts.values())   # and each format refused some of what it was given
    assert not result.failures, "\n\n".join(f"[{f.index}] {f.format} {f.target}: {f.problem}\n{f.detail}"
                                            for f in result.failures[:5])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def worker():
    worker = Worker()
    yield worker
    worker.close()


@pytest.mark.parametrize("entry", sorted(p.name for p in CORPUS.iterdir() if "~" in p.name), ids=str)
def test_corpus_input_is_refused_or_read(entry, seeds, worker, tmp_path):
    """Each input that once escaped as a traceback, an allocation or a hang: now a one-line error (or read)."""
    fmt, target, _ = entry.split("~")
    outcome, detail = replay((CORPUS / entry).read_bytes(), fmt, target, seeds, tmp_path, worker)
    assert outcome in ("read", "refused"), detail


def test_damage_surfacing_only_when_a_tensor_is_read(tmp_path, cli):
    """The issue's case: a compressed .npz whose member header is intact (open succeeds) but whose deflate stream
    is damaged further on; the zlib error or bad CRC comes when the tensor is read, in the middle of a convert.
    The boundary around every loader makes it the one-line error, naming the file and the tensor."""
    path = tmp_path / "damaged.npz"
    np.savez_compressed(path, w=np.random.default_rng(0).standard_normal(50_000).astype("f4"))
    data = bytearray(path.read_bytes())
    for at in range(len(data) // 2, len(data) // 2 + 64):
        data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    with modelport.open(path, trust=True) as src:                 # the header at the member's start reads fine
        with pytest.raises(FormatError, match=r"damaged or truncated numpy file: tensor 'w': .*\((error|BadZipFile)\)"):
            src["w"].read()
    result = cli("convert", path, tmp_path / "out.safetensors", "--trust")
    assert_one_line_error(result, str(path), "tensor 'w'")
    assert not (tmp_path / "out.safetensors").exists()


def test_zip_of_an_unknown_version_is_a_one_line_error(tmp_path, cli):
    """Found by `make fuzz`: a central directory entry whose "version needed" is 10.9 makes Python's zipfile raise
    NotImplementedError while listing the archive, which escaped .npz detection as a traceback."""
    path = tmp_path / "arrays.npz"
    np.savez(path, w=np.arange(4, dtype="f4"))
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")
    data[entry + 6:entry + 8] = (109).to_bytes(2, "little")        # version needed to extract: 10.9
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="zip archive whose central directory cannot be read"):
        modelport.open(path)
    assert_one_line_error(cli("inspect", path), str(path), "central directory")
