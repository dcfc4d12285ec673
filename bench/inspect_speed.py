"""`inspect` time by format: modelport (scan + open + summary) vs the format's own library listing names and shapes.

Issue 4 asks for `inspect` in under 0.2 s whatever the file size. Two files per format, made by the real
libraries: "many" (1,000 tensors of 64x64 f32, the count is what costs) and "big" (16 tensors of 4 MiB f32,
64 MiB: the size must cost nothing). The anchor reads only what it needs to name the tensors and their shapes
(h5py visit, onnx.load without external data, gguf-py's GGUFReader, safetensors safe_open, torch.load with
mmap, msgpack_restore for Flax), so the ratio says what modelport's safety checks and summary cost on top.

    .venv/bin/python bench/inspect_speed.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _harness import OUT, measure

MODELPORT = "from modelport.inspection import inspect"


def _arrays(kind: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "many":
        return {f"layers.{i // 10}.w{i % 10}": rng.standard_normal((64, 64)).astype(np.float32) for i in range(1000)}
    return {f"layers.{i}.weight": rng.standard_normal((1024, 1024)).astype(np.float32) for i in range(16)}


def _make(fmt: str, kind: str) -> Path:
    ext = {"safetensors": "safetensors", "torch": "bin", "gguf": "gguf", "hdf5": "h5", "onnx": "onnx",
           "flax": "msgpack"}[fmt]
    path = OUT / f"inspect_{kind}.{ext}"
    if path.exists():
        return path
    OUT.mkdir(exist_ok=True)
    arrays = _arrays(kind)
    if fmt == "safetensors":
        from safetensors.numpy import save_file
        save_file(arrays, str(path))
    elif fmt == "torch":
        import torch
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    elif fmt == "gguf":
        import gguf
        w = gguf.GGUFWriter(str(path), "llama")
        for k, v in arrays.items():
            w.add_tensor(k, v)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    elif fmt == "hdf5":
        import h5py
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k.replace(".", "/"), data=v)
    elif fmt == "onnx":
        import onnx
        from onnx import helper, numpy_helper
        inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
        graph = helper.make_graph([], "weights", [], [helper.make_tensor_value_info(inits[0].name, onnx.TensorProto.FLOAT,
                                                                                    None)], inits)
        onnx.save(helper.make_model(graph), str(path))
    elif fmt == "flax":
        from flax.serialization import to_bytes
        tree: dict = {}
        for k, v in arrays.items():
            node = tree
            *parents, leaf = k.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
        path.write_bytes(to_bytes(tree))
    return path


ANCHORS = {
    "safetensors": ("from safetensors import safe_open",
                    "with safe_open(P, 'np') as f:\n    s = [f.get_slice(k).get_shape() for k in f.keys()]"),
    "torch": ("import torch", "s = [t.shape for t in torch.load(P, weights_only=True, mmap=True).values()]"),
    "gguf": ("from gguf import GGUFReader", "s = [t.shape for t in GGUFReader(P).tensors]"),
    "hdf5": ("import h5py", "with h5py.File(P, 'r') as f:\n    s = []\n"
                            "    f.visititems(lambda n, o: s.append(o.shape) if isinstance(o, h5py.Dataset) else None)"),
    "onnx": ("import onnx", "s = [tuple(t.dims) for t in onnx.load(P, load_external_data=False).graph.initializer]"),
    "flax": ("from flax.serialization import msgpack_restore", "s = msgpack_restore(open(P, 'rb').read())"),
}


def main() -> None:
    print(f"{'format':<12}{'file':<6}{'MB':>7}{'modelport s':>13}{'anchor s':>10}{'ratio':>8}   anchor")
    for fmt, (setup, work) in ANCHORS.items():
        for kind in ("many", "big"):
            path = _make(fmt, kind)
            p = repr(str(path))
            ours = measure(MODELPORT, f"inspect({p})", repeat=5)
            theirs = measure(f"{setup}\nP = {p}", work, repeat=5)
            print(f"{fmt:<12}{kind:<6}{path.stat().st_size / 1e6:>7.1f}{ours['seconds']:>13.3f}{theirs['seconds']:>10.3f}"
                  f"{ours['seconds'] / theirs['seconds']:>8.2f}   {setup.split()[-1]}")
    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    for name in ("tf_ckpt", "tf_saved_model", "tf_graph.pb", "model_int8.tflite", "keras3.keras"):
        ours = measure(MODELPORT, f"inspect({str(fixtures / name)!r})", repeat=5)
        print(f"{name:<18}{'':>7}{ours['seconds']:>13.3f}{'-':>10}{'-':>8}   (fixture; no anchor without TensorFlow)")


if __name__ == "__main__":
    main()
