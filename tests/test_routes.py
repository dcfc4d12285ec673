"""convert as routes: the source is opened (and scanned) once and handed to the first route that takes it;
`modelport.save` writes named arrays like any other output."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import modelport
from modelport import conversion, opening
from modelport.cli.main import app, register_commands
from modelport.conversion import ROUTES, Request
from modelport.core.errors import UnsupportedError
from modelport.formats import registry
from tests.factory import make_model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("routes") / "tiny", "llama", "gpt2", hidden=64, ffn=128, heads=4,
                      kv_heads=2)


class OpenCounter:
    """Counts the scans (`guard`) and the reader opens of one path, around the real functions."""

    def __init__(self, monkeypatch, path: Path):
        self.path, self.scans, self.opens = path.resolve(), 0, 0
        guard, open_folder, open_file = opening.guard, registry.open_folder, registry.open_file

        def counted_guard(p, *a, **k):
            self.scans += Path(p).resolve() == self.path
            return guard(p, *a, **k)

        def counted_folder(p, *a, **k):
            self.opens += Path(p).resolve() == self.path
            return open_folder(p, *a, **k)

        def counted_file(p, *a, **k):
            self.opens += Path(p).resolve() == self.path
            return open_file(p, *a, **k)

        monkeypatch.setattr(opening, "guard", counted_guard)
        monkeypatch.setattr(registry, "open_folder", counted_folder)
        monkeypatch.setattr(registry, "open_file", counted_file)


def test_cli_hf_to_gguf_scans_and_opens_its_source_once(hf_dir, tmp_path, monkeypatch):
    counter = OpenCounter(monkeypatch, hf_dir)
    register_commands()
    out = tmp_path / "tiny-Q4_K_M.gguf"
    result = CliRunner().invoke(app, ["convert", str(hf_dir), str(out), "--quant", "Q4_K_M", "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.read_bytes()[:4] == b"GGUF"
    assert (counter.scans, counter.opens) == (1, 1)


def test_api_convert_takes_an_open_source(hf_dir, tmp_path, monkeypatch):
    with modelport.open(hf_dir) as source:
        counter = OpenCounter(monkeypatch, hf_dir)
        result = conversion.convert(source, tmp_path / "tiny.gguf", quant="Q8_0")
        assert (counter.scans, counter.opens) == (0, 0)
    assert result.format == "gguf" and Path(result.output).is_file()


@pytest.mark.parametrize("dst, options, route", [
    ("out.gguf", {"quant": "Q4_K_M"}, "hf-to-gguf"),
    ("out.gguf", {}, "hf-to-gguf"),
    ("out.safetensors", {}, "weights"),
    ("out", {}, "weights"),
])
def test_first_matching_route_for_an_hf_folder(hf_dir, tmp_path, dst, options, route):
    with modelport.open(hf_dir) as source:
        request = Request(tmp_path / dst, **options)
        assert next(r for r in ROUTES if r.matches(source, request)).name == route


def test_routes_for_a_gguf(hf_dir, tmp_path):
    f16 = tmp_path / "f16.gguf"
    modelport.convert(hf_dir, f16)
    with modelport.open(f16) as source:
        def route(dst, **options):
            return next(r for r in ROUTES if r.matches(source, Request(tmp_path / dst, **options))).name
        assert route("q.gguf", quant="Q4_0") == "gguf-requantize"
        assert route("copy.gguf") == "weights"
        assert route("hf_out") == "gguf-to-hf"
        assert route("hf_out", to="hf") == "gguf-to-hf"
        assert route("w.safetensors") == "weights"


def test_quant_without_a_config_is_refused(tmp_path):
    weights = tmp_path / "w.safetensors"
    modelport.save({"a": np.ones((4, 4), np.float32)}, weights)
    with pytest.raises(UnsupportedError, match="config.json"):
        modelport.convert(weights, tmp_path / "w.gguf", quant="Q8_0")
    assert not (tmp_path / "w.gguf").exists()


def test_save_writes_arrays_in_any_format_and_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"layer.weight": rng.standard_normal((8, 4)).astype(np.float32), "layer.bias": np.arange(8, dtype=np.int64)}
    for name in ("t.safetensors", "t.pt", "t.npz", "t.gguf"):
        result = modelport.save(tensors, tmp_path / name, verify=True)
        assert result.verified and result.tensors == 2
        with modelport.open(tmp_path / name) as back:
            for key, value in tensors.items():
                assert np.array_equal(back[key].read(), value)


def test_save_to_a_folder_shards_with_an_index(tmp_path):
    tensors = {f"w{i}": np.full((256, 256), i, np.float32) for i in range(4)}
    result = modelport.save(tensors, tmp_path / "sharded", shard_size="300KB")
    names = sorted(Path(f).name for f in result.files)
    assert "model.safetensors.index.json" in names and len(names) == 5
    with modelport.open(tmp_path / "sharded") as back:
        assert sorted(back.keys()) == sorted(tensors) and float(back["w3"].read()[0, 0]) == 3.0


def test_save_keeps_an_existing_output_unless_forced(tmp_path):
    modelport.save({"a": np.zeros(3, np.float32)}, tmp_path / "a.safetensors")
    with pytest.raises(modelport.ModelportError, match="already exists"):
        modelport.save({"a": np.zeros(3, np.float32)}, tmp_path / "a.safetensors")
    modelport.save({"a": np.ones(3, np.float32)}, tmp_path / "a.safetensors", force=True)


def test_outputs_honour_the_umask(tmp_path):
    """Files come out 0644 and folders 0755 under umask 022 (mkstemp/mkdtemp's private modes do not survive)."""
    old = os.umask(0o022)
    try:
        modelport.save({"a": np.zeros(3, np.float32)}, tmp_path / "a.safetensors")
        modelport.save({"a": np.zeros(3, np.float32)}, tmp_path / "folder")
        os.umask(0o077)
        modelport.save({"a": np.zeros(3, np.float32)}, tmp_path / "private.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "folder" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.safetensors").stat().st_mode) == 0o600


@pytest.mark.parametrize("name, to, needle", [
    ("x.safetensors", "gguf", "name it x.gguf"),
    ("x.npy", None, "name it x.npz"),
    ("x.pt", "safetensors", "name it x.safetensors"),
])
def test_the_written_format_matches_the_name(tmp_path, name, to, needle):
    weights = tmp_path / "w.safetensors"
    modelport.save({"a": np.ones((4, 4), np.float32), "b": np.zeros(2, np.float32)}, weights)
    with pytest.raises(UnsupportedError, match=needle):
        modelport.convert(weights, tmp_path / name, to=to)
    assert not (tmp_path / name).exists()


def test_quantize_refuses_a_non_gguf_name(hf_dir, tmp_path):
    f16 = tmp_path / "f16.gguf"
    modelport.convert(hf_dir, f16)
    register_commands()
    result = CliRunner().invoke(app, ["quantize", str(f16), str(tmp_path / "q.safetensors"), "--type", "Q8_0"])
    assert result.exit_code != 0 and isinstance(result.exception, UnsupportedError)
    assert "name it q.gguf" in str(result.exception) and not (tmp_path / "q.safetensors").exists()


def test_shard_size_on_a_single_file_output_is_refused(tmp_path):
    with pytest.raises(UnsupportedError, match="--shard-size needs a folder"):
        modelport.save({"a": np.ones(3, np.float32)}, tmp_path / "a.safetensors", format="safetensors", shard_size="1MB")


def test_a_sentence_transformers_folder_keeps_its_side_folders(tmp_path):
    """modules.json names 1_Pooling/ and 2_Normalize/: a converted folder keeps them, and every other side file."""
    folder = tmp_path / "st"
    modelport.save({"embeddings.word_embeddings.weight": np.ones((8, 4), np.float32)}, folder)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.'
                                         'Transformer"}, {"idx": 1, "name": "1", "path": "1_Pooling", "type": '
                                         '"sentence_transformers.models.Pooling"}]')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / "2_Normalize").mkdir()
    with modelport.open(folder) as source:
        assert {"config.json", "modules.json", "1_Pooling/config.json"} <= set(source.side_files)
    modelport.convert(folder, tmp_path / "out", dtype="f16")
    assert (tmp_path / "out" / "1_Pooling" / "config.json").read_text() == '{"pooling_mode_mean_tokens": true}'
    assert (tmp_path / "out" / "modules.json").is_file()


def test_api_errors_name_the_keyword_and_the_cli_prints_the_option(tmp_path, capsys):
    from modelport.cli.main import main

    modelport.save({"a": np.zeros(3, np.float32)}, tmp_path / "a.safetensors")
    with pytest.raises(modelport.ModelportError) as caught:
        modelport.save({"a": np.zeros(3, np.float32)}, tmp_path / "a.safetensors")
    assert "use --force (force=True) to replace it" in str(caught.value)
    with pytest.raises(SystemExit) as exited:
        main(["convert", str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors.copy.safetensors")])
    with pytest.raises(SystemExit) as exited:
        main(["convert", str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors.copy.safetensors")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("already exists; use --force to replace it") and "force=True" not in err


def test_model_source_repr_is_short(tmp_path):
    modelport.save({f"w{i}": np.zeros((4, 4), np.float32) for i in range(500)}, tmp_path / "many.safetensors")
    with modelport.open(tmp_path / "many.safetensors") as source:
        text = repr(source)
    assert text.startswith("<ModelSource safetensors") and "500 tensors, 8,000 parameters" in text and len(text) < 200


def test_model_source_is_a_mapping_of_names(tmp_path):
    tensors = {"b": np.ones(2, np.float32), "a": np.zeros(3, np.float32)}
    modelport.save(tensors, tmp_path / "m.safetensors")
    with modelport.open(tmp_path / "m.safetensors") as src:
        assert sorted(src) == ["a", "b"] and len(src) == 2 and "a" in src and "c" not in src
        for name in src:
            assert np.array_equal(src[name].read(), tensors[name])
        assert {n: r.shape for n, r in src.items()} == {"a": (3,), "b": (2,)}
        assert src.get("c") is None and all(r.dtype.name == "F32" for r in src.values())


def test_a_folder_of_several_ggufs_is_not_one_model(hf_dir, tmp_path):
    for quant in ("Q8_0", "Q4_0"):
        modelport.convert(hf_dir, tmp_path / "ggufs" / f"tiny-{quant}.gguf", quant=quant)
    with pytest.raises(modelport.FormatError, match="2 GGUF files .*open one of them"):
        modelport.open(tmp_path / "ggufs")
