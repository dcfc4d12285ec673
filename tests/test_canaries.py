"""Issue 21 item 4: no model code runs, from any command. Canary payloads that would create a marker file
go through every verb; the marker never exists afterwards, and each verb refuses with its one-line error
(exit 2) or, for scan, reports the payload (exit 1).

`tour` takes no model (it builds its own from the bundled SmolLM2 and its own booby-trapped `.pt`, refused in
its safety step: tests/tour), so it is not in the matrix. The two payloads whose weights are sound (a chat template
that tries to leave the sandbox, a config with `auto_map`) are refused like the others (the scanner grades them
suspicious); with `--trust` they load, and the template still renders sandboxed and the repository's code is
still never imported.
"""

from __future__ import annotations

import json

import pytest

from modelport.formats import registry
from tests.factory import CHATML, chat_model
from tests.security.corpus import _h5_keras, _keras_config, _onnx, _saved_model, _str0

MARKER = "CANARY_MARKER"
_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
          "max_position_embeddings": 256, "torch_dtype": "float32"}


def _evil_pickle(marker) -> bytes:
    return b"\x80\x02cos\nsystem\n(" + _str0(f"touch {marker}") + b"tR."


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    """name -> path of each canary, all in one folder whose MARKER file must never appear."""
    root = tmp_path_factory.mktemp("canaries")
    marker = root / MARKER
    out = {}
    p = root / "pickle"
    p.mkdir()
    (p / "config.json").write_text(json.dumps(_LLAMA))
    (p / "pytorch_model.bin").write_bytes(_evil_pickle(marker))
    out["pickle"] = p
    _h5_keras(root / "lambda.h5", _keras_config(lambda_layer=True))
    out["keras_lambda"] = root / "lambda.h5"
    sm = root / "savedmodel"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(_saved_model(["Placeholder", "WriteFile", "Identity"]))
    out["tf_writefile"] = sm
    out["onnx_escape"] = _onnx(root / "onnx", "../../etc/passwd")
    # a working tiny chat model whose template tries to leave the Jinja sandbox and touch the marker
    escape = ("{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}"
              "{{ ''.__class__.__mro__[1].__subclasses__() }}" + CHATML)
    out["chat_template"] = chat_model(root / "template", template=escape)
    # a working tiny model whose config asks for its own code, which would create the marker on import
    am = chat_model(root / "automap")
    cfg = json.loads((am / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM", "AutoConfig": "modeling_evil.EvilConfig"}
    cfg["trust_remote_code"] = True
    (am / "config.json").write_text(json.dumps(cfg))
    (am / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    out["auto_map"] = am
    return root, out


CODE = ["pickle", "keras_lambda", "tf_writefile", "onnx_escape"]   # a loader would run code or read outside
SOUND = ["chat_template", "auto_map"]                               # sound weights, hostile side files
WRITERS = sorted({s.extensions[0] for s in registry.formats() if s.write})


def _verbs(path, tmp):
    data = tmp / "data.txt"
    data.write_text("hello world. " * 50)
    p = str(path)
    verbs = {"inspect": ["inspect", p], "diff": ["diff", p, p], "quantize": ["quantize", p, str(tmp / "q.gguf")],
             "run": ["run", p, "-p", "hi", "-n", "2"], "chat": ["chat", p, "-n", "2"], "compare": ["compare", p, p,
             "--tokens", "8"], "perplexity": ["perplexity", p, "--text", str(data), "--ctx", "16"], "estimate": ["estimate", p],
             "recommend": ["recommend", p, "--goal", "cpu"], "train": ["train", p, str(data), "--max-steps", "1", "--out",
                                                      str(tmp / "trained")],
             "embed": ["embed", p, "hi"], "check": ["check", p], "serve": ["serve", p, "--port", "0"]}
    for ext in WRITERS:
        verbs[f"convert{ext}"] = ["convert", p, str(tmp / f"out{ext}")]
    return verbs


VERBS = ["inspect", "diff", "quantize", "run", "chat", "compare", "perplexity", "estimate", "recommend", "train",
         "embed", "check", "serve"] + [f"convert{ext}" for ext in WRITERS]


def _no_traceback(r):
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("payload", CODE + SOUND)
def test_scan_reports_every_canary(payloads, payload, cli):
    root, paths = payloads
    r = cli("scan", str(paths[payload]))
    _no_traceback(r)
    assert r.code == 1, (payload, r.stdout[-1500:])
    assert not (root / MARKER).exists()


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("payload", CODE + SOUND)
def test_every_verb_refuses_every_canary(payloads, payload, verb, cli, tmp_path):
    root, paths = payloads
    r = cli(*_verbs(paths[payload], tmp_path)[verb])
    assert not (root / MARKER).exists(), (payload, verb)
    _no_traceback(r)
    assert r.code == 2, (payload, verb, r.code, r.stdout[-800:], r.stderr[-800:])
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["run", "chat", "perplexity", "convert.gguf"])
@pytest.mark.parametrize("payload", SOUND)
def test_trusted_side_files_still_never_run(payloads, payload, verb, cli, tmp_path):
    """`--trust` opens them: the weights are sound, so the verb may work; what it must never do is import the
    repository's code or let the template out of the sandbox. A refusal is one line (exit 2)."""
    root, paths = payloads
    r = cli(*_verbs(paths[payload], tmp_path)[verb], "--trust", stdin="hi\n")
    assert not (root / MARKER).exists(), (payload, verb)
    _no_traceback(r)
    assert r.code in (0, 2), (payload, verb, r.code, r.stdout[-800:], r.stderr[-800:])
    if r.code == 2:
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
