"""Containers, opened by content: zip (torch, npz, .keras), the legacy torch stream, tar, compressed
streams, .npy, raw pickles under any name, and the header formats.

Members are read straight from the bytes (local headers parsed here, the central directory from
`zipfile`), so the tricks that make Python's zipfile refuse a file that torch still loads (bad CRCs,
the encrypted flag, local names that differ from central ones, members hidden between entries)
become findings while the member is still analysed. Only pickles and headers are read, never
tensor data: a torch zip is its central directory plus data.pkl.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import io
import lzma
import mmap
import os
import re
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

from ..core import protobuf as pb
from ..formats import onnx as onnx_format
from ..formats import registry
from ..formats import tf as tf_format
from . import formats, pickle_vm
from .findings import DANGEROUS, SUSPICIOUS, UNKNOWN, FileReport, Finding

MAX_DEPTH = 4                 # archives inside archives
MAX_INFLATE = 256 << 20       # decompressed bytes analysed per member / stream (pickles are far smaller)
_TORCH_DATA = re.compile(r"(^|/)data/\d+$|(^|/)(byteorder|version|\.format_version|\.storage_alignment|"
                         r"\.data/serialization_id|\.data/version)$")
_UNOPENABLE = {b"7z\xbc\xaf\x27\x1c": "7z", b"Rar!\x1a\x07": "RAR", b"MSCF": "CAB", b"\x60\xea": "ARJ",
               b"\x1f\x9d": "compress (.Z)", b"\x1f\xa0": "LZH", b"xar!": "XAR", b"!<arch>": "ar",
               b"\xed\xab\xee\xdb": "RPM", b"070707": "cpio", b"070701": "cpio", b"\x04\x22\x4d\x18": "LZ4",
               b"LZIP": "lzip", b"\x89LZO": "LZO", b"\x28\xb5\x2f\xfd": "zstd"}
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
# Content that holds no model and nothing a model loader runs, recognised by its magic number.
_INERT = {b"\x7fELF": "native-code", b"\xcf\xfa\xed\xfe": "native-code", b"\xce\xfa\xed\xfe": "native-code",
          b"\xca\xfe\xba\xbe": "native-code", b"\x89PNG\r\n\x1a\n": "image", b"\xff\xd8\xff": "image",
          b"GIF87a": "image", b"GIF89a": "image", b"\x00\x00\x01\x00": "image", b"wOFF": "font", b"wOF2": "font",
          b"OTTO": "font", b"\x00\x01\x00\x00\x00": "font", b"%PDF-": "pdf", b"ID3": "audio", b"\xff\xfb": "audio",
          b"fLaC": "audio", b"OggS": "audio", b"bplist00": "plist",
          # llama.cpp weights from before GGUF (ggml, ggmf, ggjt; ggla adapters): tensors and a vocabulary, no code
          b"lmgg": "ggml-legacy", b"fmgg": "ggml-legacy", b"tjgg": "ggml-legacy", b"algg": "ggml-legacy"}
_CONTROLS = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27))   # bytes text does not hold
# Members analysed as code carriers: a CRC that does not match is a trick on scanners that zipfile trips over.
_CRC_CHECKED = {"pickle", "pytorch-legacy", "npy", "zip", "pytorch-zip", "npz", "keras", "tar", "gzip", "bzip2", "xz",
                "lzma", "zlib", "joblib-zlib"}
_NOT_CHECKED = "so nothing in it was checked; an unread file is never called safe"


class _SliceIO(io.RawIOBase):
    """buf[start:end] as a seekable file for zipfile/tarfile, copying only what they read."""

    def __init__(self, buf, start: int, end: int):
        self.buf, self.start, self.end, self.pos = buf, start, end, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self.pos, 2: self.end - self.start}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b):
        a = self.start + self.pos
        n = max(0, min(len(b), self.end - a))
        b[:n] = self.buf[a:a + n]
        self.pos += n
        return n


class Scanner:
    """Scans one file (and everything inside it) into a FileReport."""

    def __init__(self, path: Path, reader_checks: bool = True):
        self.path = path
        self.reader_checks = reader_checks
        self.report = FileReport(str(path), "unknown")
        self._seen: dict[tuple, int] = {}
        self._tmp = None          # a temporary folder for archive members checked as files

    def emit(self, severity: str, what: str, why: str, offset, member, malformed: bool = False) -> None:
        key = (severity, what, member)
        if key in self._seen:
            i = self._seen[key]
            f = self.report.findings[i]
            self.report.findings[i] = Finding(f.severity, f.what, f.why, f.file, f.member, f.offset, f.count + 1,
                                              f.malformed)
            return
        self._seen[key] = len(self.report.findings)
        self.report.findings.append(Finding(severity, what, why, str(self.path), member or None, offset,
                                            malformed=malformed))

    def _emitter(self, member: str | None):
        def emit(severity, what, why, offset, where, malformed=False):
            parts = [p for p in (member, where) if p]
            self.emit(severity, what, why, offset, ">".join(parts) or None, malformed)
        return emit

    # ---- entry point ---------------------------------------------------------------------------

    def scan(self) -> FileReport:
        path = self.path
        size = path.stat().st_size
        if size == 0:
            self.report.kind = "empty"
            return self.report
        name = path.name.lower()
        with path.open("rb") as f:
            head = f.read(64)
            if name == "saved_model.pb":
                self.report.kind = "tf-savedmodel"
                formats.check_tf_graph(path, self._emitter(None), saved_model=True)
                return self.report
            if name.endswith(".pb") and tf_format.looks_like_graphdef(head):
                self.report.kind = "tf-graphdef"
                formats.check_tf_graph(path, self._emitter(None), saved_model=False)
                return self.report
            if name.endswith(".onnx") or onnx_format.detect(path, head):
                self.report.kind = "onnx"
                formats.check_onnx(path, self._emitter(None), self.reader_checks)
                return self.report
            if head.startswith(b"GGUF"):
                self.report.kind = "gguf"
                formats.check_gguf(path, self._emitter(None))
                return self.report
            if head.startswith(b"\x89HDF\r\n\x1a\n"):
                self.report.kind = "hdf5"
                formats.check_hdf5(path, self._emitter(None), self.reader_checks)
                return self.report
            if name.endswith(".json") and self._json(path, size):
                return self.report      # (bytes that are not JSON are analysed by content below, whatever the name)
            if name.endswith(".safetensors") or (len(head) > 9 and head[8:9] == b"{"):
                self.report.kind = "safetensors"
                formats.check_safetensors(path, self._emitter(None), self.reader_checks)
                return self.report
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                self.report.kind = self.blob(mm, 0, size, None, 0, name, path)
        return self.report

    def _json(self, path: Path, size: int) -> bool:
        """A JSON file's configs checked; False when it is not JSON (or too large to parse here)."""
        import json
        if size > 64 << 20:
            return False
        try:
            data = json.loads(path.read_text("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return False
        self.report.kind = "json"
        if isinstance(data, dict) and ("class_name" in data and "config" in data):
            self.report.kind = "keras-config"
            formats.check_keras_config(data, self._emitter(None), None)
        formats.check_hf_config(data, self._emitter(None), None)
        return True

    # ---- any bytes -----------------------------------------------------------------------------

    def blob(self, buf, start: int, end: int, member: str | None, depth: int, name: str = "",
             path: Path | None = None) -> str:
        """Analyse buf[start:end] by content; returns what it was taken for. Content nothing here recognises
        is reported `unknown`. `path`: the file itself, when buf is the whole of it."""
        if end <= start:
            return "empty"
        head = bytes(buf[start:min(end, start + 300)])
        emit = self._emitter(member)
        if depth > MAX_DEPTH:
            emit(SUSPICIOUS, "deeply nested archive", "archives nested this deep are not opened.", start, None)
            return "nested"
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
            return self.zip(buf, start, end, member, depth)
        if head.startswith(b"\x93NUMPY"):
            self.npy(buf, start, end, member)
            return "npy"
        if len(head) >= 262 and head[257:262] == b"ustar":
            self.tar(buf, start, end, member, depth)
            return "tar"
        for magic, kind in _COMPRESSED.items():
            if head.startswith(magic):
                self.compressed(buf, start, end, member, depth, kind)
                return kind
        if head.startswith(b"ZF") and head[21:22] == b"\x78":   # joblib < 0.10: "ZF", hex length, a zlib stream
            self.compressed(buf, start + 21, end, member, depth, "zlib")
            return "joblib-zlib"
        if head.startswith(b"\x5d\x00\x00") and len(head) >= 13:   # .lzma ("alone"): properties, dictionary size
            self.compressed(buf, start, end, member, depth, "lzma")
            return "lzma"
        for magic, kind in _UNOPENABLE.items():
            if head.startswith(magic):
                emit(UNKNOWN, f"{kind} archive", f"modelport cannot open {kind} archives, {_NOT_CHECKED}; unpack it "
                     "and scan the contents.", start, None)
                return kind
        if depth and head.startswith(b"GGUF"):
            return "gguf"      # headers only; a GGUF carries no code (its chat template renders sandboxed)
        if depth and head.startswith(b"\x89HDF"):
            return self._nested_file(buf, start, end, member, "hdf5", formats.check_hdf5)
        if depth and onnx_format.detect(Path(name or "member"), head):
            return self._nested_file(buf, start, end, member, "onnx", formats.check_onnx)
        if member and _TORCH_DATA.search(member) and not (head[:1] == b"\x80" and end - start > 1 and head[1] <= 5):
            return "tensor-data"   # torch never unpickles its storage members; only a real protocol-2+ pickle is news
        if pickle_vm.looks_like_pickle(head) or name.endswith((".pkl", ".pickle")):
            kind = self.pickle(buf, start, end, member, name)
            if kind != "data":
                return kind
        return self.identify(buf, start, end, head, member, name, path, depth)

    def identify(self, buf, start: int, end: int, head: bytes, member: str | None, name: str,
                 path: Path | None, depth: int = 0) -> str:
        """What content that is neither an archive nor a pickle is: an inert kind, a graph or model format
        found by content, or `unknown` (a finding: nothing in it was checked)."""
        kind = _inert_kind(buf, start, end, head)
        if kind:
            return kind
        if path is not None:
            kind = _known_format(path, head)
            if kind:
                return kind
        kind = formats.detect_tf_graph(buf, start, end) if end - start < (1 << 31) else None
        if kind:
            formats.check_tf_graph(path or self.path, self._emitter(member), kind == "tf-savedmodel", buf, start, end)
            return kind
        if head[:1] == b"\x78" and len(head) > 2 and (head[0] << 8 | head[1]) % 31 == 0 and _inflates(head):
            self.compressed(buf, start, end, member, depth, "zlib")   # a bare zlib stream (joblib's "zlib" compressor)
            return "zlib"
        if name.endswith("keras_metadata.pb") and end - start < (64 << 20) \
                and formats.check_keras_metadata(bytes(buf[start:end]), self._emitter(member), None):
            return "keras-metadata"
        if name.endswith("fingerprint.pb") and _all_varints(buf, start, end):
            return "tf-fingerprint"
        if _sentencepiece(buf, start, end):
            return "sentencepiece"
        if _onnx_tensor(buf, start, end):
            return "onnx-tensor"
        self._emitter(member)(UNKNOWN, "unidentified content", f"modelport does not recognise these bytes, "
                              f"{_NOT_CHECKED}.", start, None)
        return "unknown"

    def _nested_file(self, buf, start: int, end: int, member: str | None, kind: str, check) -> str:
        """An HDF5 or ONNX file inside an archive (the weights of a .keras file, a test model in a wheel): the
        checks that need a file run on a temporary copy (an ONNX member's external data is then missing)."""
        import tempfile
        if not self.reader_checks:
            return kind   # `guard`: modelport's readers take tensors from such members, never configs or paths
        if end - start > MAX_INFLATE:
            self._emitter(member)(UNKNOWN, f"{kind} in an archive", f"too large to check inside the archive, "
                                  f"{_NOT_CHECKED}; extract it and scan it.", start, None)
            return kind
        if self._tmp is None:     # one folder per scanned file (creating and removing folders is slow on some disks)
            self._tmp = tempfile.TemporaryDirectory(prefix="modelport-scan-")
        copy = Path(self._tmp.name) / f"member.{kind}"
        with copy.open("wb") as f:
            for at in range(start, end, 1 << 20):
                f.write(buf[at:min(end, at + (1 << 20))])
        emit = self._emitter(member)
        try:
            check(copy, lambda sev, what, why, *a, **k: None if "is missing" in why else emit(sev, what, why, *a, **k),
                  self.reader_checks)
        finally:
            copy.unlink()
        return kind

    def pickle(self, buf, start: int, end: int, member: str | None, name: str = "") -> str:
        emit = self._emitter(member)
        is_data = bool(member and _TORCH_DATA.search(member))
        if is_data or not (buf[start] == 0x80 or name.endswith((".pkl", ".pickle"))):
            # weak evidence (a protocol 0/1 lookalike such as text starting with "import", a torch data member):
            # a pickle is a stream that decodes to STOP, or one a loader would import something from before
            # it breaks; text that breaks before any import is not one.
            trial = pickle_vm.scan_stream(buf, start, end, lambda *a, **k: None, max_pickles=1)
            if not trial or not (trial[0].complete or trial[0].imports):
                return "data"
        first = pickle_vm.scan_stream(buf, start, end, emit, max_pickles=1)
        r = first[0] if first else None
        if r and r.complete and isinstance(r.value, pickle_vm.Const) and r.value.value == pickle_vm.LEGACY_TORCH_MAGIC:
            # legacy torch: magic, protocol, sys info, the object, storage keys; then raw storage bytes
            pickle_vm.scan_stream(buf, r.end, end, emit, max_pickles=4, trailing_ok=True)
            return "pytorch-legacy"
        if r and r.complete and r.end < end:
            pickle_vm.scan_stream(buf, r.end, end, emit, trailing_ok=is_data)
        return "pickle"

    # ---- numpy -----------------------------------------------------------------------------------

    def npy(self, buf, start: int, end: int, member: str | None, total: int | None = None) -> None:
        """A .npy header; object arrays are pickles and get analysed as such. `total`: the member's real size
        when only its start is in `buf`."""
        emit = self._emitter(member)
        try:
            dtype, shape, data = _npy_header(buf, start, end)
        except Exception as exc:
            emit(SUSPICIOUS, "npy header", f"the .npy header does not parse ({exc}); a reader may misbehave.", start, None, malformed=True)
            return
        if dtype.hasobject:   # stored as a pickle that np.load(allow_pickle=True) runs: graded like any pickle
            pickle_vm.scan_stream(buf, data, end, emit)
            return
        import math
        need = math.prod(shape) * dtype.itemsize
        have = (start + total if total is not None else end) - data
        if need > have:
            emit(SUSPICIOUS, "npy size", f"the header describes {need} bytes of data but only {have} follow.", data, None, malformed=True)

    # ---- zip -----------------------------------------------------------------------------------

    def zip(self, buf, start: int, end: int, member: str | None, depth: int) -> str:
        emit = self._emitter(member)
        prefix = f"{member}>" if member else ""
        try:
            zf = zipfile.ZipFile(io.BufferedReader(_SliceIO(buf, start, end)))
            infos = zf.infolist()
            cd_start = getattr(zf, "start_dir", end - start)
        except Exception as exc:
            emit(SUSPICIOUS, "zip central directory", f"Python's zipfile cannot read it ({exc}); other readers "
                 "may still load it, so the local headers were scanned instead.", start, None, malformed=True)
            self._zip_local_walk(buf, start, end, member, depth)
            return "zip"
        names: dict[str, int] = {}
        spans = []
        for info in infos:
            names[info.filename] = names.get(info.filename, 0) + 1
            if names[info.filename] == 2:
                emit(SUSPICIOUS, f"duplicate zip member {info.filename!r}", "two members share a name; loaders "
                     "disagree on which one they read.", start + info.header_offset, None)
            span = self._zip_member(buf, start, end, info, member, prefix, depth)
            if span:
                spans.append(span)
        # bytes between members that hold another local header: a member the central directory hides
        spans.sort()
        cursor = start
        for a, b in spans + [(start + cd_start, start + cd_start)]:
            if a > cursor:
                gap = bytes(buf[cursor:min(a, cursor + (64 << 20))])
                i = gap.find(b"PK\x03\x04")
                if i >= 0:
                    emit(SUSPICIOUS, "hidden zip member", "a local file header that the central directory does "
                         "not list; some readers walk local headers and would load it.", cursor + i, None)
                    self._zip_local_walk(buf, cursor + i, a, member, depth)
            cursor = max(cursor, b)
        listed = [i.filename for i in infos]
        if any(n.endswith("data.pkl") for n in listed):
            return "pytorch-zip"
        if listed and all(n.endswith(".npy") for n in listed):
            return "npz"
        if "config.json" in listed and ("metadata.json" in listed or "model.weights.h5" in listed):
            return "keras"
        return "zip"

    def _zip_member(self, buf, start, end, info: zipfile.ZipInfo, member, prefix, depth):
        emit = self._emitter(member)
        name = info.filename
        where = f"{prefix}{name}"
        lh = start + info.header_offset
        if lh + 30 > end or bytes(buf[lh:lh + 4]) != b"PK\x03\x04":
            emit(SUSPICIOUS, f"zip member {name!r}", "the central directory points at no local header.", lh, None)
            return None
        (_, _, flags, method, _, _, crc, csize, usize, nlen, elen) = struct.unpack("<4sHHHHHIIIHH", buf[lh:lh + 30])
        local_name = bytes(buf[lh + 30:lh + 30 + nlen]).decode("utf-8", "replace")
        if local_name != info.orig_filename and local_name != name:
            emit(SUSPICIOUS, f"zip name mismatch {name!r} / {local_name!r}", "the local header names the member "
                 "differently from the central directory; scanners and loaders then see different files.", lh, None)
        if method != info.compress_type:
            emit(SUSPICIOUS, f"zip method mismatch in {name!r}", "local and central headers disagree on compression.",
                 lh, None)
        parts = re.split(r"[\\/]", name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            emit(DANGEROUS, f"zip path {name!r}", "the member would be written outside the extraction folder "
                 "(zip slip).", lh, None)
        elif "\\" in name:
            emit(SUSPICIOUS, f"zip name {name!r} with backslashes", "readers split such names differently, so a "
                 "scanner and a loader can see different members.", lh, None)
        if not flags & 0x8 and csize != 0xFFFFFFFF and (crc, csize) != (info.CRC, info.compress_size & 0xFFFFFFFF):
            emit(SUSPICIOUS, f"zip header mismatch in {name!r}", "local and central headers disagree on size or CRC.",
                 lh, None)
        data = lh + 30 + nlen + elen
        stop = data + info.compress_size
        if stop > end:
            emit(SUSPICIOUS, f"zip member {name!r} truncated", "the member's data runs past the end of the archive.",
                 data, None, malformed=True)
            stop = end
        method = info.compress_type
        if (flags | info.flag_bits) & 0x1:
            if not self._plain(buf, data, stop, method):
                emit(UNKNOWN, f"encrypted zip member {name!r}", f"the member is encrypted, {_NOT_CHECKED}.", lh, None)
                return (lh, stop)
            emit(SUSPICIOUS, f"zip member {name!r} flagged encrypted", "the encryption flag makes Python's zipfile "
                 "refuse the member while torch reads it anyway; a known way to hide a pickle from scanners.", lh, None)
        if method == 0:
            self._member_content(buf, data, stop, where, depth, info)
        elif method in (8, 12, 14):
            self._compressed_member(buf, data, stop, method, where, depth, info)
        else:
            emit(SUSPICIOUS, f"zip member {name!r} method {method}", "compressed with a method modelport cannot "
                 "read, so it was not checked.", data, None)
        return (lh, stop)

    def _plain(self, buf, a, b, method) -> bool:
        """Whether a member flagged encrypted is really plain: its bytes (inflated if deflated) are recognisable."""
        raw = bytes(buf[a:min(b, a + 4096)])
        if method == 8:
            try:
                raw = zlib.decompressobj(-15).decompress(bytes(buf[a:min(b, a + (1 << 16))]), 4096)
            except zlib.error:
                return False
        elif method != 0:
            return False
        return bool(raw) and (pickle_vm.looks_like_pickle(raw) and pickle_vm.decodes_as_pickle(raw, 0, len(raw))
                              or raw[:4] == b"PK\x03\x04" or raw.startswith(b"\x93NUMPY")
                              or _inert_kind(raw, 0, len(raw), raw) is not None)

    def _inflate(self, buf, a, b, method, where, limit=None):
        """Decompress a member, fed in chunks and stopped after `limit` bytes of output (bomb-proof)."""
        limit = MAX_INFLATE if limit is None else limit
        out = bytearray()
        try:
            if method == 14:  # zip lzma: 4-byte header, then the properties
                plen = struct.unpack("<H", bytes(buf[a + 2:a + 4]))[0]
                filt = lzma._decode_filter_properties(lzma.FILTER_LZMA1, bytes(buf[a + 4:a + 4 + plen]))
                d, a = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[filt]), a + 4 + plen
            else:
                d = zlib.decompressobj(-15) if method == 8 else bz2.BZ2Decompressor()
            pos = a
            while pos < b and len(out) <= limit:
                chunk = bytes(buf[pos:min(b, pos + (1 << 20))])
                pos += len(chunk)
                out += d.decompress(chunk, limit + 1 - len(out))
                if getattr(d, "eof", False):
                    break
        except Exception as exc:
            self.emit(SUSPICIOUS, "corrupt compressed member", f"it does not decompress ({exc}).", a, where, malformed=True)
            return None
        if len(out) > limit:
            if limit < MAX_INFLATE:
                return bytes(out[:limit])
            self.emit(SUSPICIOUS, "oversized compressed member", f"it inflates past {MAX_INFLATE >> 20} MB; only "
                      "the start was checked (a decompression bomb, or a huge pickle).", a, where)
            out = out[:MAX_INFLATE]
        return bytes(out)

    def _compressed_member(self, buf, a, b, method, where, depth, info) -> None:
        """Inflate the start; inflate everything only for what is analysed whole (pickles, archives, object arrays)."""
        head = self._inflate(buf, a, b, method, where, limit=1 << 16)
        if head is None:
            return
        name = info.filename.lower() if info else ""
        if head.startswith(b"\x93NUMPY"):
            try:
                dtype, _shape, _start = _npy_header(head, 0, len(head))
                full = dtype.hasobject
            except Exception:
                full = True
            if not full:
                self.npy(head, 0, len(head), where, total=info.file_size if info else None)
                return
        elif not (pickle_vm.looks_like_pickle(head) or head[:4] in (b"PK\x03\x04", b"PK\x05\x06")
                  or head[257:262] == b"ustar" or any(head.startswith(m) for m in (*_COMPRESSED, *_UNOPENABLE))
                  or name.endswith((".pkl", ".pickle", ".json"))) and _inert_kind(head, 0, len(head), head):
            return     # text, native code, images: the start says it all
        raw = self._inflate(buf, a, b, method, where)
        if raw is not None:
            self._member_content(raw, 0, len(raw), where, depth, info)

    def _member_content(self, buf, a, b, where, depth, info) -> None:
        kind = self.blob(buf, a, b, where, depth + 1, info.filename.lower() if info else "")
        if kind in _CRC_CHECKED and info is not None and b - a <= MAX_INFLATE:
            if _crc32(buf, a, b) != info.CRC:
                self.emit(SUSPICIOUS, "bad CRC", "the member's CRC does not match its bytes; Python's zipfile refuses "
                          "it (scanners crash) while torch loads it.", a, where)
        if kind == "text" and info is not None and info.filename.endswith("config.json") and b - a < (16 << 20):
            import json
            try:
                config = json.loads(bytes(buf[a:b]))
            except ValueError:
                return
            formats.check_keras_config(config, self._emitter(where), None)
            formats.check_hf_config(config, self._emitter(where), None)

    def _zip_local_walk(self, buf, start, end, member, depth) -> None:
        """Walk local headers one after another (when the central directory cannot be trusted)."""
        prefix = f"{member}>" if member else ""
        pos, n = start, 0
        while pos + 30 <= end and bytes(buf[pos:pos + 4]) == b"PK\x03\x04":
            (_, _, flags, method, _, _, crc, csize, usize, nlen, elen) = struct.unpack("<4sHHHHHIIIHH", buf[pos:pos + 30])
            name = bytes(buf[pos + 30:pos + 30 + nlen]).decode("utf-8", "replace")
            data = pos + 30 + nlen + elen
            if flags & 0x8 or csize == 0xFFFFFFFF:
                nxt = buf.find(b"PK\x03\x04", data, end)
                stop = nxt if nxt >= 0 else end
            else:
                stop = min(end, data + csize)
            where = f"{prefix}{name}"
            if method == 0:
                self._member_content(buf, data, stop, where, depth, None)
            elif method in (8, 12, 14):
                self._compressed_member(buf, data, stop, method, where, depth, None)
            pos = stop + (16 if flags & 0x8 else 0)
            if pos < end and bytes(buf[pos:pos + 4]) != b"PK\x03\x04":
                nxt = buf.find(b"PK\x03\x04", pos, end)
                pos = nxt if nxt >= 0 else end
            n += 1

    # ---- tar and compressed streams --------------------------------------------------------------

    def tar(self, buf, start, end, member, depth) -> None:
        """A plain tar inside `buf`: members analysed in place."""
        emit = self._emitter(member)
        try:
            with tarfile.open(fileobj=io.BufferedReader(_SliceIO(buf, start, end)), mode="r:") as tf:
                for ti in tf:
                    self._tar_entry(ti, start + ti.offset, member, emit)
                    if ti.isfile():
                        a = start + ti.offset_data
                        self.blob(buf, a, min(end, a + ti.size), self._tar_name(member, ti), depth + 1, ti.name.lower())
        except tarfile.TarError as exc:
            emit(SUSPICIOUS, "tar archive", f"it does not read as tar ({exc}).", start, None, malformed=True)

    def _tar_stream(self, stream, member, depth, kind) -> None:
        """A compressed tar (.tar.gz sdists, checkpoints): read as a stream, one member in memory at a time, so
        its size is not bounded by MAX_INFLATE; a member larger than that is checked by its start only."""
        emit = self._emitter(member)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for ti in tf:
                    self._tar_entry(ti, None, member, emit)
                    if not ti.isfile():
                        continue
                    f = tf.extractfile(ti)
                    name = self._tar_name(member, ti)
                    if ti.size <= MAX_INFLATE:
                        data = f.read()
                        self.blob(data, 0, len(data), name, depth + 1, ti.name.lower())
                        continue
                    head = f.read(1 << 16)
                    if _inert_kind(head, 0, len(head), head) is None:
                        self.emit(UNKNOWN, "oversized member of a compressed tar", f"{ti.size} bytes, past the "
                                  f"{MAX_INFLATE >> 20} MB the scanner holds in memory, {_NOT_CHECKED}; extract it "
                                  "and scan it.", None, name)
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            emit(SUSPICIOUS, f"corrupt {kind} tar", f"it stops decompressing or reading as tar ({exc}).", None, None,
                 malformed=True)

    @staticmethod
    def _tar_name(member, ti) -> str:
        return f"{member}>{ti.name}" if member else ti.name

    @staticmethod
    def _tar_entry(ti, offset, member, emit) -> None:
        """Links and paths that leave the extraction folder."""
        if ti.issym() or ti.islnk():
            emit(SUSPICIOUS, f"tar link {ti.name!r} -> {ti.linkname!r}", "links in an archive can point "
                 "outside the extraction folder.", offset, None)
        elif ti.name.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", ti.name):
            emit(DANGEROUS, f"tar path {ti.name!r}", "the member would be written outside the "
                 "extraction folder.", offset, None)

    def compressed(self, buf, start, end, member, depth, kind) -> None:
        raw = None
        emit = self._emitter(member)
        try:
            src = io.BufferedReader(_SliceIO(buf, start, end))
            if kind == "zlib":
                d = zlib.decompressobj()
                raw = d.decompress(src.read(), MAX_INFLATE + 1)
            else:
                opener = {"gzip": lambda f: gzip.GzipFile(fileobj=f), "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile,
                          "lzma": lambda f: lzma.LZMAFile(f, format=lzma.FORMAT_ALONE)}[kind]
                with opener(src) as f:
                    raw = f.read(512)
                    if raw[257:262] == b"ustar":
                        f.seek(0)
                        self._tar_stream(f, f"{member + '>' if member else ''}<{kind}>", depth + 1, kind)
                        return
                    raw += f.read(MAX_INFLATE + 1 - len(raw))
        except Exception as exc:
            emit(SUSPICIOUS, f"corrupt {kind} stream", f"it does not decompress ({exc}).", start, None, malformed=True)
            if not raw:
                return
        if len(raw) > MAX_INFLATE:
            emit(SUSPICIOUS, f"oversized {kind} stream", f"it inflates past {MAX_INFLATE >> 20} MB; only the start was "
                 "checked (a decompression bomb hides what follows from scanners).", start, None)
            raw = raw[:MAX_INFLATE]
        self.blob(raw, 0, len(raw), f"{member + '>' if member else ''}<{kind}>", depth + 1)


def _inert_kind(buf, start: int, end: int, head: bytes) -> str | None:
    """Text, native code, images, fonts: recognised from the first bytes (`buf` may hold only the start)."""
    for magic, kind in _INERT.items():
        if head.startswith(magic):
            return kind
    if head.startswith(b"MZ") and _is_pe(buf, start, end):
        return "native-code"
    if head[4:8] == b"ftyp":
        return "video"
    if head.startswith(b"RIFF") and head[8:12] in (b"WEBP", b"WAVE"):
        return "image" if head[8:12] == b"WEBP" else "audio"
    if _is_text(bytes(buf[start:min(end, start + 8192)]), end - start <= 8192):
        return "text"
    return None


def _crc32(buf, a: int, b: int) -> int:
    crc = 0
    for at in range(a, b, 1 << 20):
        crc = zlib.crc32(buf[at:min(b, at + (1 << 20))], crc)
    return crc


def _inflates(head: bytes) -> bool:
    """Whether the start of some bytes decompresses as a zlib stream."""
    try:
        zlib.decompressobj().decompress(head, 64)
        return True
    except zlib.error:
        return False


def _is_text(sample: bytes, whole: bool) -> bool:
    """UTF-8 (or UTF-16 with a byte-order mark) text without NUL bytes: source, docs, configs, vocabularies."""
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return bool(sample[2:len(sample) & ~1].decode("utf-16-be" if sample[0] == 0xFE else "utf-16-le"))
        except UnicodeDecodeError:
            return False
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if whole or exc.start < len(sample) - 3:   # a character cut by the sample's end is fine
            return False
    controls = len(sample) - len(sample.translate(None, _CONTROLS))
    return controls * 100 <= len(sample)


def _is_pe(buf, start: int, end: int) -> bool:
    """A Windows executable or DLL: MZ header pointing at a PE signature."""
    if end - start < 64:
        return False
    (pe,) = struct.unpack("<I", bytes(buf[start + 60:start + 64]))
    return start + pe + 4 <= end and bytes(buf[start + pe:start + pe + 4]) == b"PE\x00\x00"


def _sentencepiece(buf, start: int, end: int) -> bool:
    """A SentencePiece model (tokenizer.model): ModelProto whose first pieces are (piece, score) messages."""
    if bytes(buf[start:start + 1]) != b"\x0a" or end - start > (1 << 30):
        return False
    try:
        pieces = 0
        for f, w, a, b in pb.fields(buf, start, end):
            if f == 1 and w == pb.LEN:
                inner = {(g, v) for g, v, _x, _y in pb.fields(buf, a, b)}
                if not inner <= {(1, pb.LEN), (2, pb.I32), (3, pb.VARINT)} or (1, pb.LEN) not in inner:
                    return False
                pieces += 1
            elif f not in (2, 3, 4, 5) or w != pb.LEN:
                return False
        return pieces > 0
    except Exception:
        return False


def _all_varints(buf, start: int, end: int) -> bool:
    """A small protobuf of numbers only (a SavedModel's fingerprint.pb: hashes and a version)."""
    try:
        return end - start < 4096 and all(w in (pb.VARINT, pb.LEN) and (w == pb.VARINT or f == 7)
                                          for f, w, _a, _b in pb.fields(buf, start, end))
    except Exception:
        return False


def _onnx_tensor(buf, start: int, end: int) -> bool:
    """An ONNX TensorProto (the .pb test data of ONNX models): dims, data_type, name and data fields only,
    with no external data (field 13, a file path)."""
    allowed = {(1, pb.VARINT), (1, pb.LEN), (2, pb.VARINT), (3, pb.LEN), (4, pb.LEN), (4, pb.I32), (5, pb.LEN),
               (5, pb.VARINT), (6, pb.LEN), (6, pb.VARINT), (7, pb.LEN), (7, pb.VARINT), (8, pb.LEN), (9, pb.LEN),
               (10, pb.LEN), (10, pb.I64), (11, pb.LEN), (11, pb.VARINT), (12, pb.LEN), (14, pb.VARINT), (16, pb.LEN)}
    if end - start > (1 << 30):
        return False
    try:
        seen = {(f, w) for f, w, _a, _b in pb.fields(buf, start, end)}
    except Exception:
        return False
    return (2, pb.VARINT) in seen and seen <= allowed


def _known_format(path: Path, head: bytes) -> str | None:
    """Formats modelport reads that hold only data (TFLite flatbuffers, TF bundles, Flax msgpack), and the
    raw tensor files that an ONNX model next to this one names as its external data."""
    if len(head) < registry.HEAD_BYTES:
        with path.open("rb") as f:
            head = f.read(registry.HEAD_BYTES)
    for name in ("tflite", "tf", "flax"):
        try:
            if registry.get(name).detect(path, head):
                return name if name != "tf" else "tf-bundle"
        except Exception:
            continue
    if path.resolve() in _onnx_external_files(path.parent.resolve()):
        return "onnx-external-data"
    return None


def _onnx_external_files(folder: Path) -> set[Path]:
    """Files that the ONNX models in a folder (at most 16) name as external data, resolved."""
    found: set[Path] = set()
    try:
        models = sorted(folder.glob("*.onnx"))[:16]
    except OSError:
        return found
    for model in models:
        try:
            for _name, info in onnx_format.external_entries(model):
                loc = info.get("location", "")
                if loc:
                    found.add((folder / loc).resolve())
        except Exception:
            continue
    return found


def _npy_header(buf, start: int, end: int):
    """(dtype, shape, data offset) of a .npy header, parsed as a literal (numpy's own rules), never evaluated."""
    import numpy as np
    major = buf[start + 6]
    if major == 1:
        (hlen,) = struct.unpack("<H", buf[start + 8:start + 10])
        hstart = start + 10
    else:
        (hlen,) = struct.unpack("<I", buf[start + 8:start + 12])
        hstart = start + 12
    if hlen > 1 << 20 or hstart + hlen > end:
        raise ValueError(f"header length {hlen} runs past the data")
    text = re.sub(r"(\d+)L\b", r"\1", bytes(buf[hstart:hstart + hlen]).decode("latin-1"))   # Python 2 longs
    header = ast.literal_eval(text)
    dtype = np.lib.format.descr_to_dtype(header["descr"])
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"bad shape {shape!r}")
    return dtype, shape, hstart + hlen


def scan_file(path: Path, reader_checks: bool = True) -> FileReport:
    """One file's report. A file the scanner cannot read is unknown, one it cannot analyse suspicious: never clean.

    `reader_checks=False` skips opening the file with modelport's own reader to grade its layout
    (HDF5, ONNX): `guard` passes it because the reader about to open the file refuses those itself."""
    scanner = Scanner(path, reader_checks)
    try:
        return scanner.scan()
    except OSError as exc:
        report = FileReport(str(path), "unreadable")
        report.findings.append(Finding(UNKNOWN, "unreadable", f"cannot read: {exc.strerror or exc}; {_NOT_CHECKED}",
                                       str(path)))
        return report
    except Exception as exc:  # a malformed structure the checks above did not anticipate
        scanner.emit(SUSPICIOUS, "unanalysable structure", f"the scanner could not finish ({type(exc).__name__}: "
                     f"{str(exc)[:120]}); treat the file as unchecked.", None, None)
        return scanner.report
    finally:
        if scanner._tmp is not None:
            scanner._tmp.cleanup()


def iter_files(path: Path):
    """Every file under a folder (symlinks followed, as the Hugging Face cache needs), or the file itself."""
    if path.is_dir():
        for root, dirs, files in os.walk(path, followlinks=False):
            dirs[:] = sorted(d for d in dirs if d != ".git")
            for name in sorted(files):
                p = Path(root) / name
                if p.is_file():
                    yield p
    else:
        yield path
