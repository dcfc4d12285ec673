"""Rules: which imports a pickle may name. An allowlist, with a denylist only to grade the rest.

Anything a real checkpoint needs (tensor/storage rebuilding, dtypes, numpy arrays, plain containers)
is safe; known code-execution, file, network and loader gadgets are dangerous; everything else is
suspicious, because a pickle can call any importable callable and nobody can list them all.
"""

from __future__ import annotations

from .findings import DANGEROUS, SAFE, SUSPICIOUS, UNKNOWN

# Python 2 / alias module names a loader maps to today's (pickle's _compat_pickle does the same).
_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg", "cPickle": "pickle", "exceptions": "builtins",
            "UserDict": "collections", "posixpath": "os.path", "ntpath": "os.path"}

_TORCH_STORAGES = [f"{p}Storage" for p in (
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexFloat", "ComplexDouble", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4", "Untyped", "Typed")]
_TORCH_DTYPES = [
    "float64", "float32", "float16", "bfloat16", "double", "float", "half", "int64", "int32", "int16", "int8",
    "uint8", "uint16", "uint32", "uint64", "long", "int", "short", "bool", "complex64", "complex128", "cfloat",
    "cdouble", "chalf", "complex32", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e8m0fnu", "float4_e2m1fn_x2", "quint8", "qint8", "qint32", "quint4x2", "quint2x4", "bits8", "bits16",
    "int1", "int2", "int3", "int4", "int5", "int6", "int7", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7"]

SAFE_GLOBALS: frozenset[str] = frozenset(
    # torch: tensors, parameters, storages, dtypes, shapes, devices, layouts, memory formats
    [f"torch._utils.{n}" for n in (
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state", "_rebuild_sparse_tensor", "_rebuild_sparse_csr_tensor",
        "_rebuild_qtensor", "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass",
        "_rebuild_nested_tensor", "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor")]
    + ["torch._tensor._rebuild_from_type_v2", "torch._tensor._rebuild_from_type", "torch.Size", "torch.device",
       "torch.Tensor", "torch.nn.parameter.Parameter", "torch.strided", "torch.sparse_coo", "torch.sparse_csr",
       "torch.contiguous_format", "torch.channels_last", "torch.channels_last_3d", "torch.preserve_format",
       "torch.per_tensor_affine", "torch.per_channel_affine", "torch.torch_version.TorchVersion",
       "torch.storage.TypedStorage", "torch.storage.UntypedStorage", "torch.serialization._get_layout",
       "torch._utils._get_restore_location"]
    + [f"torch.{n}" for n in _TORCH_STORAGES] + [f"torch.cuda.{n}" for n in _TORCH_STORAGES]
    + [f"torch.{n}" for n in _TORCH_DTYPES]
    # numpy: arrays, scalars, dtypes (numpy 1 and 2 module paths)
    + [f"{m}.{n}" for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")]
    + ["numpy.ndarray", "numpy.dtype", "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
       "numpy.ma.core._mareconstruct", "numpy.random._pickle.__randomstate_ctor",
       "numpy.random._pickle.__bit_generator_ctor", "numpy.random._pickle.__generator_ctor"]
    + [f"numpy.dtypes.{n}DType" for n in (
        "Float64", "Float32", "Float16", "LongDouble", "Int64", "Int32", "Int16", "Int8", "UInt64", "UInt32",
        "UInt16", "UInt8", "Bool", "Complex64", "Complex128", "Long", "ULong", "LongLong", "ULongLong",
        "Short", "UShort", "Byte", "UByte", "Int", "UInt", "Str", "Bytes", "Void", "DateTime64", "TimeDelta64")]
    # plain containers and values
    + [f"builtins.{n}" for n in (
        "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
        "bytearray", "slice", "range", "object", "NoneType", "Ellipsis", "NotImplemented")]
    + ["collections.OrderedDict", "collections.defaultdict", "collections.Counter", "collections.deque",
       "copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__", "_codecs.encode",
       "argparse.Namespace", "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta",
       "datetime.timezone", "decimal.Decimal", "fractions.Fraction", "uuid.UUID", "pathlib.PosixPath",
       "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath", "pathlib.Path",
       # hyper-parameter dicts of Lightning-style checkpoints (dict subclasses with attribute access)
       "pytorch_lightning.utilities.parsing.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
       "lightning.fabric.utilities.data.AttributeDict",
       # numpy matrices (joblib and scikit-learn store them), dill's lookup of a builtin type by name (any
       # call on what it returns is graded as a call on a load-time result)
       "numpy.matrix", "numpy.matrixlib.defmatrix.matrix", "dill._dill._load_type", "numpy.core._internal._reconstruct"]
)

# Data wrappers a pickle-family format needs to store arrays: rebuilding one runs no code of the file's
# choosing. joblib writes each array as a NumpyArrayWrapper followed by the array's raw bytes inside the
# pickle stream; joblib < 0.10 (and sklearn.externals.joblib) named a sibling .npy file (NDArrayWrapper,
# ZNDArrayWrapper), whose name the scanner checks stays inside the folder.
INLINE_ARRAY_WRAPPERS: frozenset[str] = frozenset(
    f"{p}joblib.numpy_pickle.NumpyArrayWrapper" for p in ("", "sklearn.externals."))
FILE_ARRAY_WRAPPERS: frozenset[str] = frozenset(
    f"{p}joblib.{m}.{n}" for p in ("", "sklearn.externals.") for m in ("numpy_pickle", "numpy_pickle_compat")
    for n in ("NDArrayWrapper", "ZNDArrayWrapper"))
DATA_WRAPPERS = INLINE_ARRAY_WRAPPERS | FILE_ARRAY_WRAPPERS

# Libraries whose classes real pickles (scikit-learn models, pandas frames) rebuild: not gadgets by name,
# but loading imports the library and runs its code on the file's data, so they stay suspicious.
KNOWN_LIBRARIES = {"sklearn": "scikit-learn", "scipy": "SciPy", "pandas": "pandas", "xgboost": "XGBoost",
                   "lightgbm": "LightGBM", "catboost": "CatBoost", "transformers": "transformers",
                   "tokenizers": "tokenizers", "numpy": "NumPy", "torch": "PyTorch", "statsmodels": "statsmodels"}

# Modules (and everything under them) whose callables run code, touch files or the network, or load
# more pickles. Entries are full prefixes: "torch.fx" covers "torch.fx.graph_module._exec".
DANGEROUS_MODULES: frozenset[str] = frozenset({
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "runpy", "importlib", "imp", "zipimport",
    "pkgutil", "marshal", "pickle", "_pickle", "pickletools", "dill", "cloudpickle", "joblib", "shelve",
    "ctypes", "_ctypes", "cffi", "pty", "socket", "_socket", "socketserver", "ssl", "shutil", "webbrowser",
    "pip", "ensurepip", "venv", "setuptools", "distutils", "pydoc", "code", "codeop", "timeit", "profile",
    "cProfile", "pdb", "bdb", "trace", "doctest", "idlelib", "lib2to3", "asyncio", "multiprocessing",
    "concurrent", "threading", "_thread", "signal", "tempfile", "glob", "io", "_io", "urllib", "urllib2",
    "http", "httplib", "requests", "aiohttp", "httpx", "smtplib", "ftplib", "poplib", "imaplib", "telnetlib",
    "xmlrpc", "mailcap", "platform", "_osx_support", "_aix_support", "tkinter", "turtle", "_interpreters",
    "_xxsubinterpreters", "gc", "inspect", "types", "operator", "_operator", "functools", "_functools",
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.getattr", "builtins.setattr",
    "builtins.delattr", "builtins.__import__", "builtins.open", "builtins.input", "builtins.breakpoint",
    "builtins.globals", "builtins.locals", "builtins.vars", "builtins.help", "builtins.apply",
    "builtins.execfile", "builtins.file", "builtins.reload", "builtins.type",
    "builtins.super", "builtins.classmethod", "builtins.staticmethod", "builtins.property",
    "uuid._get_command_stdout", "numpy.load", "numpy.loads", "numpy.f2py", "numpy.testing", "numpy.distutils",
    "numpy.lib.npyio", "numpy.lib.format", "numpy.lib.utils", "numpy.ctypeslib", "numpy.fromfile",
    "numpy.save", "numpy.savetxt", "numpy.tofile", "numpy.memmap",
    "torch.load", "torch.save", "torch.serialization", "torch.storage._load_from_bytes", "torch.fx", "torch.jit",
    "torch._inductor", "torch._dynamo", "torch.hub", "torch.package", "torch.utils.bottleneck",
    "torch.utils.cpp_extension", "torch.utils.data.datapipes", "torch._C._jit", "torch.ops", "torch.library",
    "torch.export", "torch._export", "torch.compile", "torch.from_file", "torch.classes", "torch.cuda.memory",
    "torch.distributed", "keras", "tensorflow", "fickling", "picklescan", "modelscan", "modelport",
    # published bypasses of other scanners: torch's own subprocess runner, numpy 2's loader modules,
    # pandas' readers (files and URLs) and its expression evaluator
    "torch.utils.collect_env", "torch.utils._config_module", "numpy.lib._npyio_impl", "numpy.lib._format_impl",
    "pandas.io", "pandas.eval", "pandas.core.computation",
})

# Attribute names that are gadgets wherever they come from (reached through any module or attribute walk).
DANGEROUS_NAMES: frozenset[str] = frozenset({
    "system", "popen", "popen2", "spawn", "spawnl", "spawnv", "spawnve", "spawnlp", "execv", "execve",
    "execl", "execlp", "execvp", "fork", "forkpty", "eval", "exec", "execfile", "compile", "__import__",
    "import_module", "getattr", "setattr", "delattr", "attrgetter", "itemgetter", "methodcaller", "partial",
    "loads", "load", "load_module", "_load_from_bytes", "run_path", "run_module", "_run_code", "resolve_name",
    "locate", "check_output", "check_call", "call", "Popen", "getoutput", "getstatusoutput", "run_string",
    "runcode", "runsource", "interact", "pipepager", "tempfilepager", "pager", "write_file", "rmtree",
    "unlink", "remove", "rmdir", "urlopen", "urlretrieve", "create_connection", "breakpoint", "set_trace",
    "__builtins__", "__globals__", "__code__", "__subclasses__", "__getattribute__", "__reduce__",
    "__reduce_ex__", "__setstate__", "__class__", "__dict__", "__bases__", "__mro__", "__init_subclass__",
    "__loader__", "__spec__", "modules", "timeit", "repeat", "main", "spawnv_passfds", "fork_exec",
})

# Callables that unpickle bytes: their argument is itself a pickle, analysed in turn.
PICKLE_LOADERS: frozenset[str] = frozenset({
    "pickle.loads", "_pickle.loads", "pickle._loads", "dill.loads", "cloudpickle.loads", "numpy.loads",
    "torch.storage._load_from_bytes", "joblib.numpy_pickle.loads", "pandas.read_pickle", "copyreg._unpickle",
})


def normalize(module: str, name: str) -> str:
    """The dotted name a loader would resolve, with Python 2 module names mapped to today's."""
    module = _ALIASES.get(module, module)
    full = f"{module}.{name}" if name else module
    return _NAME_ALIASES.get(full, full)


_NAME_ALIASES = {"builtins.xrange": "builtins.range", "builtins.unicode": "builtins.str", "builtins.long": "builtins.int",
                 "builtins.basestring": "builtins.str"}


def _under(full: str, prefixes) -> str | None:
    parts = full.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in prefixes:
            return head
    return None


def classify(module: str, name: str) -> tuple[str, str]:
    """(severity, why) for importing `name` from `module` in a pickle."""
    full = normalize(module, name)
    if full in SAFE_GLOBALS:
        return SAFE, "needed to rebuild tensors, arrays or plain containers"
    if full.startswith("__torch__."):
        return UNKNOWN, ("a TorchScript class: torch.jit.load compiles and runs the TorchScript in the archive's "
                         "code/ folder, which modelport does not analyse")
    if full in DATA_WRAPPERS:
        return SAFE, "a data wrapper joblib needs to store arrays; it runs no code of the file's choosing"
    hit = _under(full, DANGEROUS_MODULES)
    if hit:
        return DANGEROUS, f"'{hit}' can run code, touch files or the network, or load more pickles when called"
    parts = [p for p in full.split(".") if p]
    # Gadget names count as the thing imported (the last part); a dunder anywhere is an attribute walk.
    # (An intermediate package like torch.nn.modules is just a package.)
    for i, p in enumerate(parts[1:] if len(parts) > 1 else parts, 1):
        dunder = p.startswith("__") and p.endswith("__") and p not in ("__newobj__", "__newobj_ex__")
        if dunder or (p in DANGEROUS_NAMES and (i == len(parts) - 1 or len(parts) == 1)):
            return DANGEROUS, f"'{p}' is a code-execution or attribute-walking gadget"
    if any(not p.isidentifier() for p in parts) or not parts:
        return DANGEROUS, "the import name is not a plain dotted identifier; loaders resolve it in surprising ways"
    for p in parts[1:]:
        if _under(p, DANGEROUS_MODULES):
            return DANGEROUS, f"the name walks through attribute '{p}', a module that can run code"
    if parts[-1].startswith("read_") or parts[-1] in ("to_pickle", "to_csv", "to_parquet"):
        return DANGEROUS, f"'{parts[-1]}' reads or writes files or URLs when called"
    library = KNOWN_LIBRARIES.get(parts[0])
    if library:
        return SUSPICIOUS, (f"a {library} class or function, not a known gadget, but not on the allowlist: "
                            f"loading imports {library} and runs its code on the file's data")
    return SUSPICIOUS, "not on the allowlist of what checkpoints need; a loader would import and may call it"
