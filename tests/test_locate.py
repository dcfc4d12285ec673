"""Models by name: a fake Hugging Face cache and a fake Ollama store, built here with the real layouts
(`models--org--name/blobs/<sha>` + `snapshots/<rev>/` links + `refs/main`; `manifests/<host>/<ns>/<name>/<tag>`
+ `blobs/sha256-<hex>`), holding a tiny random model and its GGUF made by modelport's own converter."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import save_file
from typer.testing import CliRunner

import modelport
from modelport import locate
from modelport.cli import list_cmd
from modelport.cli.main import app, main, register_commands
from modelport.core.errors import FormatError, ModelportError, UnsafeFileError
from modelport.core.source import cache_link, safe_member
from tests.factory import CHATML, make_model

REV = "0123456789abcdef0123456789abcdef01234567"
OLD = "fedcba9876543210fedcba9876543210fedcba98"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_repo(hub: Path, repo_id: str, files: dict[str, Path], rev: str = REV, main: bool = True) -> Path:
    """`files` (name in the snapshot -> content) as the HF cache stores them: blobs by hash, relative links."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / rev
    for name, src in files.items():
        blob = repo / "blobs" / sha(src)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
    return repo


def ollama_model(store: Path, parts: tuple[str, str, str], tag: str, gguf: Path, template: str = "{{ .Prompt }}") -> Path:
    blobs = store / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    layers = []
    for kind, data in (("model", gguf.read_bytes()), ("template", template.encode()),
                       ("params", json.dumps({"stop": ["<|im_end|>"]}).encode())):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        layers.append({"mediaType": f"application/vnd.ollama.image.{kind}", "digest": f"sha256:{digest}",
                       "size": len(data)})
    manifest = store / "manifests" / Path(*parts) / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers,
                                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}))
    return manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny HF model and two GGUFs of it (F16, Q8_0), made once."""
    root = tmp_path_factory.mktemp("built")
    hf = make_model(root / "hf", "llama", "gpt2", hidden=64, layers=1, heads=2, kv_heads=1, ffn=128,
                    chat_template=CHATML)
    for quant in ("F16", "Q8_0"):
        modelport.convert(hf, root / "gguf" / f"tiny-llama-{quant}.gguf", quant=quant)
    return root


@pytest.fixture(scope="module")
def module_stores(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    hub, store = root / "hub", root / "ollama"
    hf_files = {p.name: p for p in sorted((built / "hf").iterdir()) if p.is_file()}
    cache_repo(hub, "tiny-org/tiny-llama", hf_files)
    cache_repo(hub, "tiny-org/tiny-llama", {"model.safetensors": hf_files["model.safetensors"],
                                            "config.json": hf_files["config.json"]}, rev=OLD, main=False)
    ggufs = {p.name: p for p in sorted((built / "gguf").glob("*.gguf"))}
    cache_repo(hub, "tiny-org/tiny-llama-GGUF", ggufs)
    cache_repo(hub, "tiny-org/one-gguf", {"tiny.gguf": ggufs["tiny-llama-Q8_0.gguf"]})
    (root / "secret.json").write_text('{"secret": true}')
    evil = cache_repo(hub, "evil/repo", {"model.safetensors": hf_files["model.safetensors"]})
    (evil / "snapshots" / REV / "config.json").symlink_to(root / "secret.json")
    ollama_model(store, ("registry.ollama.ai", "library", "tiny"), "latest", ggufs["tiny-llama-F16.gguf"])
    ollama_model(store, ("registry.ollama.ai", "library", "tiny"), "q8", ggufs["tiny-llama-Q8_0.gguf"])
    ollama_model(store, ("registry.ollama.ai", "someone", "tiny"), "v1", ggufs["tiny-llama-Q8_0.gguf"])
    ollama_model(store, ("hf.co", "tiny-org", "tiny-llama-GGUF"), "Q8_0", ggufs["tiny-llama-Q8_0.gguf"])
    return hub, store


@pytest.fixture
def stores(module_stores, monkeypatch):
    hub, store = module_stores
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    monkeypatch.setenv("COLUMNS", "200")
    return hub, store


def snapshot(hub: Path, repo_id: str, rev: str = REV) -> Path:
    return hub / ("models--" + repo_id.replace("/", "--")) / "snapshots" / rev


# --- where the stores are ------------------------------------------------------------------

def test_store_locations_follow_the_environment(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "OLLAMA_MODELS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert locate.hf_cache_dir() == tmp_path / ".cache" / "huggingface" / "hub"
    assert locate.ollama_dir() == tmp_path / ".ollama" / "models"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert locate.hf_cache_dir() == tmp_path / "hfhome" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "om"))
    assert locate.hf_cache_dir() == tmp_path / "hub"
    assert locate.ollama_dir() == tmp_path / "om"


# --- Hugging Face cache --------------------------------------------------------------------

def test_hub_id_resolves_to_the_main_snapshot(stores):
    hub, _ = stores
    assert locate.resolve("tiny-org/tiny-llama") == snapshot(hub, "tiny-org/tiny-llama")
    assert locate.resolve("TINY-ORG/Tiny-Llama") == snapshot(hub, "tiny-org/tiny-llama")   # Hub ids ignore case
    for name in (f"tiny-org/tiny-llama@{OLD}", f"tiny-org/tiny-llama:{OLD}", "tiny-org/tiny-llama@fedcba98"):
        assert locate.resolve(name) == snapshot(hub, "tiny-org/tiny-llama", OLD), name
    assert locate.resolve("tiny-org/tiny-llama@main") == snapshot(hub, "tiny-org/tiny-llama")
    with pytest.raises(ModelportError, match="revision 'v9' is not in the Hugging Face cache"):
        locate.resolve("tiny-org/tiny-llama@v9")
    assert locate.resolve("tiny-org/not-there") is None


def test_open_by_hub_id_reads_the_linked_files(stores):
    """The snapshot is all links into blobs/: weights, config and tokenizer files all come through."""
    hub, _ = stores
    with modelport.open("tiny-org/tiny-llama") as source:
        assert source.format == "safetensors"
        assert source.path == snapshot(hub, "tiny-org/tiny-llama")
        assert source.config["model_type"] == "llama"
        assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(source.side_files)
        assert all(f.is_symlink() for f in source.files)
        assert len(source) > 0


def test_sharded_snapshot_opens_through_its_links(tmp_path, monkeypatch):
    """A shard index names its shards; in the cache each is a link into blobs/, which safe_member lets through."""
    save_file({"a": np.ones(4, np.float32)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": np.zeros((2, 3), np.float16)}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cache_repo(tmp_path / "hub", "org/sharded", {p.name: p for p in tmp_path.iterdir() if p.is_file()})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with modelport.open("org/sharded") as source:
        assert source.details["shards"] == 2 and set(source.keys()) == {"a", "b"}
        assert set(source.side_files) == {"config.json"} and source.config == {"model_type": "llama"}
    assert locate.describe(locate.resolve("org/sharded")) == ("safetensors", "F32")


def test_gguf_repo_picks_a_file_by_quantization(stores):
    hub, _ = stores
    folder = snapshot(hub, "tiny-org/tiny-llama-GGUF")
    assert locate.resolve("tiny-org/tiny-llama-GGUF:Q8_0") == folder / "tiny-llama-Q8_0.gguf"
    assert locate.resolve("tiny-org/tiny-llama-GGUF:f16") == folder / "tiny-llama-F16.gguf"
    assert locate.resolve("tiny-org/tiny-llama-GGUF:tiny-llama-F16.gguf") == folder / "tiny-llama-F16.gguf"
    with pytest.raises(ModelportError, match=r"holds 2 GGUF files of it .*name one, e.g. tiny-org/tiny-llama-GGUF:F16"):
        locate.resolve("tiny-org/tiny-llama-GGUF")
    with pytest.raises(ModelportError, match="no revision or GGUF file matching 'Q4_K_M'"):
        locate.resolve("tiny-org/tiny-llama-GGUF:Q4_K_M")
    assert locate.resolve("tiny-org/one-gguf") == snapshot(hub, "tiny-org/one-gguf") / "tiny.gguf"
    with modelport.open("tiny-org/tiny-llama-GGUF:Q8_0") as source:
        assert source.format == "gguf" and source.details["file_type"] == "Q8_0"


def test_snapshot_link_out_of_its_repo_is_refused(stores, tmp_path):
    hub, _ = stores
    folder = snapshot(hub, "evil/repo")
    with pytest.raises(UnsafeFileError, match="outside its cache repo models--evil--repo; refused"):
        locate.resolve("evil/repo")
    assert not cache_link(folder / "config.json")
    assert cache_link(folder / "model.safetensors")
    with pytest.raises(FormatError, match="is a symbolic link; refused"):
        safe_member(folder, "config.json", "config")
    assert safe_member(folder, "model.safetensors", "shard") == folder / "model.safetensors"
    # A blob that is itself a link out of the repo is just as far outside.
    repo = cache_repo(tmp_path / "hub2", "a/b", {"model.safetensors": folder / "model.safetensors"})
    blob = next((repo / "blobs").iterdir())
    blob.unlink()
    blob.symlink_to((folder / "model.safetensors").resolve())
    assert not cache_link(repo / "snapshots" / REV / "model.safetensors")
    # Outside any cache layout, links stay refused as before.
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.json").symlink_to(tmp_path / "hub2")
    with pytest.raises(FormatError, match="symbolic link"):
        safe_member(tmp_path / "plain", "x.json", "config")


# --- Ollama store --------------------------------------------------------------------------

def test_ollama_names_resolve_to_the_model_blob(stores):
    _, store = stores
    manifest = json.loads((store / "manifests/registry.ollama.ai/library/tiny/latest").read_text())
    blob = store / "blobs" / manifest["layers"][0]["digest"].replace(":", "-")
    for name in ("tiny", "tiny:latest", "library/tiny", "registry.ollama.ai/library/tiny:latest"):
        assert locate.resolve(name) == blob, name
    assert locate.resolve("tiny:q8") != blob and locate.resolve("tiny:q8").name.startswith("sha256-")
    assert locate.resolve("someone/tiny:v1").parent == store / "blobs"
    assert locate.resolve("hf.co/tiny-org/tiny-llama-GGUF:Q8_0").parent == store / "blobs"
    assert locate.resolve("tiny:nope") is None and locate.resolve("someone/tiny") is None
    with modelport.open("tiny") as source:
        assert source.format == "gguf" and source.details["file_type"] == "F16"
    with modelport.open(blob) as source:   # the blob path itself opens as any file does
        assert source.format == "gguf"


def test_bad_ollama_manifests(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = tmp_path / "manifests/registry.ollama.ai/library/bad"
    folder.mkdir(parents=True)
    (folder / "escape").write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:../../../etc/passwd"}]}))
    with pytest.raises(FormatError, match="not sha256:<64 hex digits>"):
        locate.resolve("bad:escape")
    (folder / "missing").write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "ab" * 32}]}))
    with pytest.raises(ModelportError, match="which is missing"):
        locate.resolve("bad:missing")
    (folder / "nomodel").write_text(json.dumps({"layers": []}))
    with pytest.raises(FormatError, match="no model layer"):
        locate.resolve("bad:nomodel")
    assert locate.resolve("../bad:escape") is None and locate.resolve("bad:..") is None


# --- CLI -----------------------------------------------------------------------------------

def invoke(*args: str):
    register_commands()
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The real entry point in-process: where errors become one line and an exit code."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.mark.parametrize("name, fmt", [("tiny-org/tiny-llama", "safetensors"), ("tiny:q8", "gguf"),
                                       ("tiny-org/tiny-llama-GGUF:F16", "gguf")])
def test_inspect_by_name(stores, name, fmt):
    result = invoke("inspect", name, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == fmt and report["parameter_count"] > 0


@pytest.mark.parametrize("name", ["tiny:q8", "tiny-org/tiny-llama-GGUF:Q8_0"])
def test_run_by_name_with_llama_cpp(stores, name):
    result = invoke("run", name, "-p", "Hello", "-n", "4", "--ignore-eos", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["model"] == name and data["completion_tokens"] == 4


def test_run_by_hub_id_with_transformers(stores):
    result = invoke("run", "tiny-org/tiny-llama", "-p", "Hello", "-n", "3", "--ignore-eos", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["completion_tokens"] == 3


def test_missing_name_is_one_line(stores, capsys):
    hub, store = stores
    code, out, err = run_main(capsys, "run", "nope-model:7b", "-p", "hi")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelport: nope-model:7b: no such file or directory")
    for needle in (str(hub), str(store), "modelport list"):
        assert needle in lines[0]
    code, _, err = run_main(capsys, "inspect", "/no/such/model.gguf")   # a path, not a name: as before
    assert code == 2 and err.strip() == "modelport: /no/such/model.gguf: no such file or directory"
    code, _, err = run_main(capsys, "inspect", "evil/repo")
    assert code == 2 and "outside its cache repo" in err and len(err.strip().splitlines()) == 1


def test_list_plain_lines_when_piped(stores, module_stores):
    result = invoke("list")
    assert result.exit_code == 0, result.output
    rows = {line.split("\t")[1]: line.split("\t") for line in result.output.strip().splitlines()}
    assert all(len(r) == 6 for r in rows.values())
    assert rows["tiny-org/tiny-llama"][:3] == ["hf", "tiny-org/tiny-llama", "safetensors"]
    assert rows["tiny-org/tiny-llama"][4] == "float32"
    assert rows[f"tiny-org/tiny-llama@{OLD[:12]}"][2] == "safetensors"
    assert rows["tiny-org/tiny-llama-GGUF:Q8_0"][2:5:2] == ["gguf", "Q8_0"]
    assert rows["tiny-org/tiny-llama-GGUF:F16"][4] == "F16"
    assert rows["tiny-org/one-gguf"][2] == "gguf"
    assert rows["tiny:latest"][:3] == ["ollama", "tiny:latest", "gguf"] and rows["tiny:latest"][4] == "F16"
    assert rows["tiny:q8"][4] == "Q8_0" and "someone/tiny:v1" in rows and "hf.co/tiny-org/tiny-llama-GGUF:Q8_0" in rows
    assert rows["evil/repo"][2].startswith("error: ") and "outside its cache repo" in rows["evil/repo"][2]
    for name, row in rows.items():   # every name listed resolves to the path listed, and its size is on disk
        if not row[2].startswith("error"):
            assert locate.resolve(name) == Path(row[5]), name
            assert int(row[3]) > 0
    q8 = next(m for m in locate.ollama_models() if m.name == "tiny:q8")
    assert int(rows["tiny:q8"][3]) == q8.path.stat().st_size + sum(p.stat().st_size for p in q8.layers.values())


def test_list_json_and_table(stores):
    result = invoke("list", "--json")
    models = json.loads(result.output)
    tiny = next(m for m in models if m["name"] == "tiny:latest")
    assert tiny["source"] == "ollama" and tiny["format"] == "gguf" and set(tiny["layers"]) == {"template", "params"}
    assert Path(tiny["layers"]["template"]).read_text() == "{{ .Prompt }}"
    out = StringIO()
    list_cmd.render(locate.hf_cache_models() + locate.ollama_models(), Console(file=out, width=200))
    text = out.getvalue()
    assert "tiny-org/tiny-llama-GGUF:Q8_0" in text and "tiny:latest" in text and "quantization" in text


def test_list_with_no_stores(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "none"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "none2"))
    assert locate.hf_cache_models() == [] and locate.ollama_models() == []
    result = invoke("list")
    assert result.exit_code == 0 and result.output == ""


def test_scan_by_name(stores):
    result = invoke("scan", "tiny-org/tiny-llama", "tiny", "--json")
    assert result.exit_code == 0, result.output
    scanned = {Path(f["path"]).name for f in json.loads(result.output)["files"]}
    assert "model.safetensors" in scanned and any(n.startswith("sha256-") for n in scanned)
