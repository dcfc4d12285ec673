"""Folders: SavedModel (`saved_model.pb` + `variables/variables.index`) and checkpoint folders.

A checkpoint folder's `checkpoint` text file names the latest prefix, which is resolved inside the
folder only. The SavedModel's own graph is read as data for its tags, signatures and TF version.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path

from ...core import protobuf as pb
from ...core.errors import FormatError, require
from ...core.source import ModelSource, safe_member
from .bundle import open_bundle


def _latest_prefix(folder: Path) -> Path | None:
    state = folder / "checkpoint"
    if not state.is_file() or state.stat().st_size > 1 << 20:
        return None
    m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text("utf-8", "replace"), re.M)
    if not m:
        return None
    name = m[1]
    if name.startswith("/"):  # absolute paths are accepted only when they point into this folder
        p = Path(name)
        if p.parent.resolve() != folder.resolve():
            raise FormatError(f"checkpoint file points at {name!r}, outside this folder", folder)
        name = p.name
    return safe_member(folder, name + ".index", "checkpoint")


def detect_folder(folder: Path) -> bool:
    """A SavedModel folder, or a checkpoint folder whose `checkpoint` file names an existing bundle."""
    if (folder / "variables" / "variables.index").is_file() and \
            ((folder / "saved_model.pb").is_file() or (folder / "saved_model.pbtxt").is_file()):
        return True
    try:
        index = _latest_prefix(folder)
    except FormatError:
        return True  # ours, and open() will say why it is refused
    return index is not None and index.is_file()


def _saved_model_info(pbfile: Path) -> dict:
    """Tags, signatures and TF version of `saved_model.pb`, parsed as data."""
    info: dict = {"tags": [], "signatures": []}
    if not pbfile.is_file():
        return info
    with pbfile.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for num, wire, a, b in pb.fields(buf, 0, len(buf), pbfile):
            if num != 2 or wire != pb.LEN:
                continue
            for n2, w2, c, d in pb.fields(buf, a, b, pbfile):
                if n2 == 1 and w2 == pb.LEN:  # MetaInfoDef
                    for n3, w3, e, g in pb.fields(buf, c, d, pbfile):
                        if n3 == 4 and w3 == pb.LEN:
                            info["tags"].append(pb.text(buf, e, g, "tag", pbfile))
                        elif n3 == 5 and w3 == pb.LEN:
                            info["tensorflow_version"] = pb.text(buf, e, g, "version", pbfile)
                elif n2 == 5 and w2 == pb.LEN:  # signature_def map entry
                    for n3, w3, e, g in pb.fields(buf, c, d, pbfile):
                        if n3 == 1 and w3 == pb.LEN:
                            info["signatures"].append(pb.text(buf, e, g, "signature name", pbfile))
    return info


def open_folder(folder: Path) -> ModelSource:
    """The variables of a SavedModel folder, or the latest bundle of a checkpoint folder."""
    variables = folder / "variables" / "variables.index"
    if variables.is_file():
        require(not variables.is_symlink(), "variables/variables.index is a symbolic link; refused", folder)
        source = open_bundle(variables)
        source.details = {**source.details, "container": "SavedModel variables",
                          **_saved_model_info(folder / "saved_model.pb")}
    else:
        index = _latest_prefix(folder)
        require(index is not None and index.is_file(), "the checkpoint file names no existing .index", folder)
        source = open_bundle(index)
        source.details["checkpoint"] = index.name[: -len(".index")]
    source.path = folder
    return source

