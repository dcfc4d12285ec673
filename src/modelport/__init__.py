"""modelport: one tool for LLM model files.

The Python API mirrors the CLI:

    import modelport
    src = modelport.open("model.bin")          # any format, by content; lazy tensors
    modelport.save({"w": array}, "out.safetensors")
    modelport.convert("model.bin", "model.safetensors", verify=True)
    modelport.diff("a.safetensors", "b.pt")
    modelport.train("hf_folder", "data.jsonl", "out", method="lora", max_steps=100, export=["gguf:q8_0"])
    modelport.serve("model.gguf", port=8080, parallel=2)     # OpenAI + Ollama APIs and a chat page, until Ctrl-C
"""

from .comparison import diff
from .conversion import convert
from .core.dtypes import DTYPES, DType
from .core.errors import CheckFailed, FormatError, ModelportError, UnsafeFileError, UnsupportedError
from .core.source import ModelSource
from .core.tensor import TensorRef
from .estimate import estimate
from .inspection import inspect
from .opening import open
from .recommend import recommend
from .security import scan
from .serving import serve
from .training import train
from .writing import save

__all__ = ["open", "save", "convert", "diff", "inspect", "scan", "estimate", "recommend", "train", "serve", "ModelSource", "TensorRef",
           "DType", "DTYPES", "ModelportError", "FormatError", "UnsafeFileError", "UnsupportedError", "CheckFailed"]
__version__ = "0.1.0"
