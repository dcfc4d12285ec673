"""Seed files for the fuzzer: small files that the real libraries write, one or more per format.

Each seed is a `Seed(format, path, target)`: `path` is what `modelport.open` is given (a file, or the folder of
a multi-file format), `target` the file inside it that the fuzzer damages (the same file for one-file formats).
TensorFlow, Keras, TFLite and Flax seeds are the committed fixtures (their writers are not test dependencies);
the rest are written here by torch, safetensors, NumPy, gguf-py and onnx.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclass(frozen=True)
class Seed:
    format: str         # the family the counts are reported under: "safetensors", "torch-zip", "npz", ...
    root: Path          # the seed's own folder: the fuzzer copies it whole for each input
    path: Path          # what modelport.open is given, relative to root
    target: Path        # the file the fuzzer damages, relative to root (== path for one-file formats)
    kind: str           # mutation family: "json-header", "zip", "gguf", "protobuf", "msgpack", "hdf5", "flatbuffer", "npy", "pickle"


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"embed.weight": rng.standard_normal((8, 4)).astype(np.float32),
            "norm.bias": rng.standard_normal(4).astype(np.float16),
            "head.idx": np.arange(6, dtype=np.int64).reshape(2, 3)}


def _fixed_storage_keys(data: bytes) -> bytes:
    """The legacy format names storages by their memory address: renamed (same length) so the seed's bytes, and
    hence every mutation of them, are the same on every run."""
    keys = list(dict.fromkeys(re.findall(rb"X[\x08-\x14]\x00\x00\x00(\d{8,20})", data)))
    for i, key in enumerate(keys):
        data = data.replace(key, str(10 ** (len(key) - 1) + i).encode())
    return data


def make_seeds(folder: Path) -> list[Seed]:
    """Write every seed in its own folder under `folder`; returns them in a fixed order."""
    import h5py
    import onnx
    import torch
    from onnx import helper, numpy_helper
    from safetensors.numpy import save_file

    import gguf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = _arrays(rng)
    seeds: list[Seed] = []

    def one(fmt: str, name: str, kind: str) -> Path:
        root = folder / name.replace(".", "-")
        root.mkdir()
        seeds.append(Seed(fmt, root, Path(name), Path(name), kind))
        return root / name

    save_file(arrays, one("safetensors", "model.safetensors", "json-header"), metadata={"format": "pt"})

    state = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    state["tied"] = state["embed.weight"]                       # a shared storage: the pickle's memo
    state["view"] = state["embed.weight"][2:4]                  # a view with an offset
    torch.save(state, one("torch-zip", "model.pt", "zip"))
    legacy = one("torch-legacy", "legacy.bin", "pickle")
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(_fixed_storage_keys(legacy.read_bytes()))

    np.save(one("npy", "array.npy", "npy"), arrays["embed.weight"])
    np.savez(one("npz", "arrays.npz", "zip"), **arrays)
    np.savez_compressed(one("npz-compressed", "compressed.npz", "zip"), **arrays)

    writer = gguf.GGUFWriter(str(one("gguf", "model.gguf", "gguf")), "llama")
    writer.add_block_count(1)
    writer.add_string("general.name", "fuzz seed")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
    writer.add_tensor("token_embd.weight", arrays["embed.weight"])
    writer.add_tensor("output_norm.weight", arrays["norm.bias"])
    q8 = rng.standard_normal((2, 64)).astype(np.float32)
    writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(q8, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    inits = [numpy_helper.from_array(arrays["embed.weight"], "embed.weight"),
             numpy_helper.from_array(arrays["head.idx"], "head.idx")]
    node = helper.make_node("Gather", ["embed.weight", "ids"], ["out"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [2, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), one("onnx", "model.onnx", "protobuf"))

    for name, fmt, kind in (("keras2_model.h5", "hdf5-keras2", "hdf5"), ("keras2_weights.h5", "hdf5-keras2", "hdf5"),
                            ("keras3.keras", "keras3-zip", "zip"), ("flax_state.msgpack", "flax", "msgpack"),
                            ("flax_chunked.msgpack", "flax", "msgpack"), ("model_f32.tflite", "tflite", "flatbuffer"),
                            ("model_int8.tflite", "tflite", "flatbuffer"), ("tf_graph.pb", "tf-graphdef", "protobuf")):
        shutil.copyfile(FIXTURES / name, one(fmt, name, kind))

    # A plain HDF5 file as h5py writes it (modelport's own writer's layout: one dataset per tensor, gzip on one).
    with h5py.File(one("hdf5", "plain.h5", "hdf5"), "w", track_order=True) as f:
        f.create_dataset("embed.weight", data=arrays["embed.weight"])
        f.create_dataset("head.idx", data=arrays["head.idx"], compression="gzip", chunks=(1, 3))
        f["alias"] = f["embed.weight"]

    for name, fmt, members in (("tf_ckpt", "tf-bundle", ("ckpt-1.index", "ckpt-1.data-00000-of-00001")),
                               ("tf_saved_model", "tf-savedmodel", ("saved_model.pb", "variables/variables.index",
                                                                     "variables/variables.data-00000-of-00001"))):
        for member in members:
            root = folder / f"{name}-{Path(member).name}"
            shutil.copytree(FIXTURES / name, root / name)
            kind = "protobuf" if member.endswith(".pb") else "table" if member.endswith(".index") else "raw"
            opened = Path(name, "ckpt-1.index") if fmt == "tf-bundle" else Path(name)
            seeds.append(Seed(fmt, root, opened, Path(name, member), kind))
    return seeds

