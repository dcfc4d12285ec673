"""Models by name: a Hub id found in the local Hugging Face cache, an Ollama model in its store.

    locate.resolve("HuggingFaceTB/SmolLM2-135M-Instruct")   # the snapshot folder (or its one GGUF)
    locate.resolve("llama3.2:1b")                           # the Ollama blob holding the GGUF
    locate.hf_cache_models() + locate.ollama_models()       # what `modelport list` shows

Offline only: a name resolves to files already on this machine, never to a download, and what it
resolves to then opens like any path (scanned first). `modelport.open()` asks here only when the
path it was given does not exist, so a file or folder always wins over a name.

Hugging Face names: `org/name`, with `@rev` (a branch, tag or commit, or a commit prefix) or `:rev`.
A repo of GGUF files (one per quantization) resolves to one file: `org/name:Q4_K_M` picks it (the
file name or its quantization, as llama.cpp's `-hf` and Ollama's `hf.co/...:Q4_K_M` do).
Snapshots are links into the repo's `blobs/`; `core.source.cache_link` accepts those links and
nothing else, and resolving a name checks every link of the snapshot the same way, so a name never
opens a file outside its own cache repo.

Ollama names: `[host/][namespace/]name[:tag]` (host `registry.ollama.ai`, namespace `library`, tag
`latest` by default), read from `manifests/<host>/<namespace>/<name>/<tag>`: the layer of type
`application/vnd.ollama.image.model` is the GGUF, stored as `blobs/sha256-<hex>`. The Hugging Face
cache is asked first: a repo it holds answers for its name even where Ollama has the same one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .core.errors import FormatError, ModelportError, UnsafeFileError
from .core.source import ModelSource, cache_link, read_json, safe_member
from .formats import registry

OLLAMA_HOST = "registry.ollama.ai"
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_LAYERS = {"application/vnd.ollama.image.template": "template",
                 "application/vnd.ollama.image.params": "params",
                 "application/vnd.ollama.image.system": "system",
                 "application/vnd.ollama.image.license": "license"}
MANIFEST_CAP = 1024 * 1024

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
_SHARD = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")


@dataclass
class LocalModel:
    """One model `modelport list` shows; `name` resolves back to `path`."""

    source: str                   # "hf" or "ollama"
    name: str                     # "org/name", "org/name@1a2b3c4d5e6f", "org/name:Q4_K_M", "llama3.2:1b"
    path: Path                    # what opens: a snapshot folder, a GGUF file in one, an Ollama blob
    size: int = 0                 # bytes on disk (blobs counted once)
    format: str = "-"             # by content: safetensors, gguf, ...
    quantization: str = "-"       # GGUF file type, or the dtype (and quantization method) of the weights
    revision: str | None = None   # HF commit, Ollama tag
    problem: str | None = None    # why this one will not open (a link out of its repo, a missing blob)
    layers: dict[str, Path] = field(default_factory=dict)   # Ollama template/params/system/license blobs

    def to_dict(self) -> dict:
        return {"source": self.source, "name": self.name, "format": self.format, "size": self.size,
                "quantization": self.quantization, "path": str(self.path), "revision": self.revision,
                "problem": self.problem, "layers": {k: str(v) for k, v in self.layers.items()}}


# --- where the stores are -----------------------------------------------------------------

def hf_cache_dir() -> Path:
    """`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub` (as huggingface_hub decides)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "huggingface" / "hub"


def ollama_dir() -> Path:
    """`OLLAMA_MODELS`, else `~/.ollama/models`."""
    return Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()


# --- names --------------------------------------------------------------------------------

def resolve(name: str) -> Path | None:
    """The file or folder a model name stands for, or None when neither store has it.

    A name found but unusable (an unknown revision, several GGUF files to choose from, a link out of
    its repo, a missing blob) raises a `ModelportError` saying so instead of falling through.
    """
    name = str(name)
    found = _hf_resolve(name)
    return found if found is not None else _ollama_resolve(name)


def require(name: str) -> Path:
    """`resolve`, with the one-line error naming what was looked for and where when nothing matches."""
    found = resolve(name)
    if found is None:
        where = "" if not is_name(name) else (
            f", nor a model of that name in the Hugging Face cache ({hf_cache_dir()}) or the Ollama store "
            f"({ollama_dir()}); 'modelport list' shows the models there")
        raise ModelportError(f"no such file or directory{where}", name)
    return found


def is_name(text: str) -> bool:
    """Whether `text` could be a model name at all (`org/name@rev`, `host/ns/name:tag`), not a path."""
    repo, _, _ = _split(str(text))
    parts = repo.split("/")
    return 1 <= len(parts) <= 3 and all(_PART.fullmatch(p) and ".." not in p for p in parts)


def _split(text: str) -> tuple[str, str | None, str | None]:
    """`repo@rev:sel` -> (repo, rev, sel); either may be missing."""
    repo, sel, rev = text, None, None
    if ":" in repo.rsplit("/", 1)[-1]:
        repo, sel = repo.rsplit(":", 1)
    if "@" in repo:
        repo, rev = repo.split("@", 1)
    return repo, rev, sel


# --- Hugging Face cache -------------------------------------------------------------------

def _hf_resolve(name: str) -> Path | None:
    repo_id, rev, sel = _split(name)
    parts = repo_id.split("/")
    if not (1 <= len(parts) <= 2 and all(_PART.fullmatch(p) and "--" not in p for p in parts)):
        return None
    repo = _hf_repo_dir(hf_cache_dir(), "models--" + "--".join(parts))
    if repo is None:
        return None
    if rev is None and sel is not None and _hf_commit(repo, sel, name, quiet=True):
        rev, sel = sel, None          # `org/name:rev` picks a revision when there is one of that name
    snapshot = repo / "snapshots" / _hf_commit(repo, rev or "main", name)
    check_snapshot(repo, snapshot)
    return _hf_pick(snapshot, sel, repo_id, name)


def _hf_repo_dir(cache: Path, folder: str) -> Path | None:
    exact = cache / folder
    if exact.is_dir():
        return exact
    if not cache.is_dir():
        return None
    matches = [p for p in cache.iterdir() if p.name.lower() == folder.lower() and p.is_dir()]
    return matches[0] if len(matches) == 1 else None   # Hub ids are case-insensitive


def _hf_refs(repo: Path) -> dict[str, str]:
    """Ref name -> commit, from `refs/` (`main`, tags, `refs/pr/1` stored as nested folders)."""
    refs = {}
    root = repo / "refs"
    for path in sorted(root.rglob("*")) if root.is_dir() else ():
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 256:
            commit = path.read_text("ascii", errors="replace").strip()
            if re.fullmatch(r"[0-9a-f]{40}", commit):
                refs[path.relative_to(root).as_posix()] = commit
    return refs


def _hf_commit(repo: Path, rev: str, name: str, quiet: bool = False) -> str | None:
    """The snapshot folder name for a ref, a commit or a commit prefix (7+ hex digits)."""
    snapshots = repo / "snapshots"
    have = sorted(p.name for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    commit = _hf_refs(repo).get(rev)
    if commit is None and rev in have:
        commit = rev
    if commit is None and re.fullmatch(r"[0-9a-f]{7,40}", rev):
        prefixed = [c for c in have if c.startswith(rev)]
        commit = prefixed[0] if len(prefixed) == 1 else None
    if commit is None and rev == "main" and len(have) == 1:
        commit = have[0]          # downloaded by commit only: no refs/main, one snapshot
    if commit is not None and commit in have:
        return commit
    if quiet:
        return None
    known = ", ".join([*_hf_refs(repo), *(c[:12] for c in have)]) or "none"
    raise ModelportError(f"revision {rev!r} is not in the Hugging Face cache (cached: {known})", name)


def check_snapshot(repo: Path, snapshot: Path) -> None:
    """Refuse a snapshot with any link that leaves its cache repo folder (see `core.source.cache_link`)."""
    top = repo.resolve()
    if not snapshot.resolve().is_relative_to(top):
        raise UnsafeFileError("the snapshot folder points outside its cache repo; refused", snapshot)
    for root, dirs, files in os.walk(snapshot):
        for entry in (*dirs, *files):
            path = Path(root) / entry
            if path.is_symlink() and not cache_link(path):
                target = os.path.realpath(path)
                raise UnsafeFileError(f"links to {target}, outside its cache repo {repo.name}; refused", path)


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _gguf_files(snapshot: Path) -> list[Path]:
    """The snapshot's GGUF files (by content), later shards of a split GGUF left out (llama.cpp finds them)."""
    files = [p for p in sorted(snapshot.iterdir()) if p.is_file() and _is_gguf(p)]
    return [p for p in files if not (m := _SHARD.search(p.name)) or int(m.group(1)) == 1]


def _hf_pick(snapshot: Path, sel: str | None, repo_id: str, name: str) -> Path:
    """The snapshot folder, or for a repo of GGUF files the one GGUF `sel` names (or the only one)."""
    weights = registry.weight_files(snapshot)
    ggufs = _gguf_files(snapshot)
    if sel is None and (not ggufs or any(not _is_gguf(w) for w in weights)):
        return snapshot
    if sel is not None:
        pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(sel)}(?![A-Za-z0-9_])", re.IGNORECASE)
        matches = [p for p in ggufs if sel in (p.name, p.stem) or pattern.search(p.stem)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ModelportError(f"no revision or GGUF file matching {sel!r} (GGUF files: "
                                 f"{', '.join(p.name for p in ggufs) or 'none'})", name)
        ggufs = matches
    if len(ggufs) == 1:
        return ggufs[0]
    raise ModelportError(f"the Hugging Face cache holds {len(ggufs)} GGUF files of it ({', '.join(p.name for p in ggufs[:6])}"
                         f"{', …' if len(ggufs) > 6 else ''}); name one, e.g. {repo_id}:{_quant_hint(ggufs[0])}", name)


def _quant_hint(path: Path) -> str:
    m = re.search(r"(?<![A-Za-z0-9])(I?Q\d(?:_[0-9A-Z]+)*|BF16|F16|F32)(?![A-Za-z0-9])", path.stem, re.IGNORECASE)
    return m.group(1) if m else path.stem


def hf_cache_models() -> list[LocalModel]:
    """Every model snapshot in the Hugging Face cache; a repo of GGUF files gives one row per file."""
    cache = hf_cache_dir()
    out = []
    for repo in sorted(cache.iterdir()) if cache.is_dir() else ():
        if not repo.name.startswith("models--") or not (repo / "snapshots").is_dir():
            continue
        repo_id = repo.name.removeprefix("models--").replace("--", "/")
        commits = _hf_refs(repo)
        snapshots = sorted((p for p in (repo / "snapshots").iterdir() if p.is_dir()),
                           key=lambda p: (p.name != commits.get("main"), p.name))
        for snapshot in snapshots:
            main = snapshot.name == commits.get("main") or (len(snapshots) == 1 and "main" not in commits)
            name = repo_id if main else f"{repo_id}@{snapshot.name[:12]}"
            out.extend(_hf_rows(repo, snapshot, name))
    return out


def _hf_rows(repo: Path, snapshot: Path, name: str) -> list[LocalModel]:
    row = LocalModel("hf", name, snapshot, revision=snapshot.name)
    try:
        check_snapshot(repo, snapshot)
        ggufs = _gguf_files(snapshot)
        if ggufs and all(_is_gguf(w) for w in registry.weight_files(snapshot)):
            rows = [LocalModel("hf", name if len(ggufs) == 1 else f"{name}:{_gguf_selector(p, ggufs)}", p,
                               revision=snapshot.name) for p in ggufs]
        else:
            rows = [row]
        for r in rows:
            r.size = disk_size(r.path)
            r.format, r.quantization = describe(r.path)
        return rows
    except ModelportError as exc:
        row.problem = exc.message
        return [row]


def _gguf_selector(path: Path, ggufs: list[Path]) -> str:
    """The shortest selector that picks `path` out of `ggufs` again: its quantization, else its file name."""
    hint = _quant_hint(path)
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(hint)}(?![A-Za-z0-9_])", re.IGNORECASE)
    return hint if sum(bool(pattern.search(p.stem)) for p in ggufs) == 1 else path.name


# --- Ollama store -------------------------------------------------------------------------

def _ollama_manifest(name: str) -> tuple[Path, str] | None:
    repo, rev, tag = _split(name)
    parts = repo.split("/")
    if rev is not None or not 1 <= len(parts) <= 3:
        return None
    parts = [OLLAMA_HOST, "library", *parts] if len(parts) == 1 else [OLLAMA_HOST, *parts] if len(parts) == 2 else parts
    tag = tag or "latest"
    if not all(_PART.fullmatch(p) and ".." not in p for p in (*parts, tag)):
        return None
    manifest = ollama_dir() / "manifests" / Path(*parts) / tag
    if not manifest.is_file():
        return None
    return manifest, _ollama_name(parts, tag)


def _ollama_name(parts: list[str], tag: str) -> str:
    host, namespace, model = parts
    short = model if (host, namespace) == (OLLAMA_HOST, "library") else \
        f"{namespace}/{model}" if host == OLLAMA_HOST else f"{host}/{namespace}/{model}"
    return f"{short}:{tag}"


def _ollama_resolve(name: str) -> Path | None:
    found = _ollama_manifest(name)
    return None if found is None else read_manifest(found[0])[0]


def read_manifest(manifest: Path) -> tuple[Path, dict[str, Path], int]:
    """An Ollama manifest's model blob, its other layers (template, params, ...) and their total size."""
    data = read_json(manifest, MANIFEST_CAP)
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise FormatError("not an Ollama manifest: no 'layers' list", manifest)
    model, others, size = None, {}, 0
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        kind = layer.get("mediaType")
        if kind != OLLAMA_MODEL and kind not in OLLAMA_LAYERS:
            continue
        blob = _ollama_blob(manifest, layer.get("digest"))
        size += blob.stat().st_size
        if kind == OLLAMA_MODEL:
            model = model or blob
        else:
            others[OLLAMA_LAYERS[kind]] = blob
    if model is None:
        raise FormatError(f"the manifest has no model layer ({OLLAMA_MODEL})", manifest)
    return model, others, size


def _ollama_blob(manifest: Path, digest) -> Path:
    """`sha256:<hex>` -> `blobs/sha256-<hex>`, which must be a file inside the store's `blobs/`."""
    m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise FormatError(f"layer digest {digest!r} is not sha256:<64 hex digits>", manifest)
    blobs = ollama_dir() / "blobs"
    blob = blobs / f"sha256-{m.group(1)}"
    if not blob.is_file():
        raise ModelportError(f"the manifest names blob {blob.name}, which is missing", manifest)
    if not blob.resolve().is_relative_to(blobs.resolve()):
        raise UnsafeFileError("the blob links outside the Ollama store; refused", blob)
    return blob


def ollama_models() -> list[LocalModel]:
    """Every model in the Ollama store: `manifests/<host>/<namespace>/<name>/<tag>`."""
    root = ollama_dir() / "manifests"
    out = []
    for manifest in sorted(root.glob("*/*/*/*")) if root.is_dir() else ():
        if not manifest.is_file():
            continue
        parts = list(manifest.relative_to(root).parts)
        row = LocalModel("ollama", _ollama_name(parts[:3], parts[3]), manifest, revision=parts[3])
        try:
            row.path, row.layers, row.size = read_manifest(manifest)
            row.format, row.quantization = describe(row.path)
        except ModelportError as exc:
            row.problem = exc.message
        out.append(row)
    return out


# --- what a model is ----------------------------------------------------------------------

def disk_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder, each blob counted once."""
    if path.is_file():
        return path.stat().st_size
    seen = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if p.is_file():
                seen[p.resolve()] = p.stat().st_size
    return sum(seen.values())


def describe(path: Path) -> tuple[str, str]:
    """(format, quantization) by content, from headers only: the GGUF file type, else the weights' dtype.

    Only data-only formats are parsed (GGUF, safetensors); a pickle or other format is named, not opened,
    so listing never runs anything through a reader that has not been through the scanner.
    """
    weights = registry.weight_files(path) if path.is_dir() else [path]
    if not weights:
        return "-", "-"
    first = weights[0]
    if first.name.endswith(".index.json"):
        index = read_json(first)
        shards = list(dict.fromkeys((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
        if not shards:
            return "index", "-"
        first = safe_member(first.parent, str(shards[0]), "shard")
    spec = registry.detect(first)
    quant = _config_dtype(path) if path.is_dir() else None
    if quant is None and spec.name in ("gguf", "safetensors"):
        source = registry.open_file(first)
        try:
            quant = _quantization(source)
        finally:
            source.close()
    return spec.name, quant or "-"


def _config_dtype(folder: Path) -> str | None:
    config_path = safe_member(folder, "config.json", "config")
    config = read_json(config_path) if config_path.is_file() else None
    if not isinstance(config, dict):
        return None
    dtype = config.get("torch_dtype") or config.get("dtype")
    method = (config.get("quantization_config") or {}).get("quant_method") \
        if isinstance(config.get("quantization_config"), dict) else None
    text = " ".join(str(x) for x in (method, dtype) if x)
    return text or None


def _quantization(source: ModelSource) -> str | None:
    if source.format == "gguf" and source.details.get("file_type"):
        return str(source.details["file_type"])
    weight: dict[str, int] = {}
    for ref in source.values():
        weight[ref.dtype.name] = weight.get(ref.dtype.name, 0) + ref.numel
    return max(weight, key=weight.get) if weight else None
