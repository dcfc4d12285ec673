"""The model's chat template, rendered once, here, the way transformers renders it.

Each engine has its own idea of a prompt (llama-cpp-python's `create_chat_completion` picks a
format handler, transformers' `apply_chat_template` renders Jinja); the same model then answers
differently. modelport renders the template itself and hands token ids to whichever engine runs.

Rendering matches `transformers.utils.chat_template_utils` (5.x): an `ImmutableSandboxedEnvironment`
(templates come from model files: untrusted) with `trim_blocks`/`lstrip_blocks` and loop controls;
globals `raise_exception`, `strftime_now`, `namespace`, `dict`; a `tojson` filter that does not
HTML-escape and takes `indent`/`separators`/`sort_keys`; the tokenizer's named special tokens
(`bos_token`, `eos_token`, ...) as variables; messages with None values dropped. Jinja2 itself is
the well-kept library; what is ours is only that setup, so that no transformers import is needed
for a GGUF in llama.cpp.

BOS: like transformers, the rendered text is tokenized *without* adding special tokens: the template
decides. A template that writes `{{ bos_token }}` gets one BOS, never two, and a template that does
not gets none, exactly the ids `apply_chat_template(tokenize=True)` gives. Only raw prompts (no
template) get the tokenizer's own BOS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..core.errors import FormatError, MissingDependencyError, UnsupportedError
from ..core.source import ModelSource, read_json, safe_member

TEMPLATE_CAP = 1 << 20          # a chat template larger than 1 MiB is not a chat template
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _environment():
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise MissingDependencyError("jinja2", "torch", "rendering a chat template") from None
    if tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit()) < (3, 1, 6):
        # older releases have known sandbox escapes, and templates come from model files
        raise MissingDependencyError("jinja2>=3.1.6", "torch", "rendering a chat template safely")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):  # noqa: A002 - the name templates use
        return datetime.now().strftime(format)

    class TemplateDict:
        """`dict(...)` for templates without exposing the type itself."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore names (no reaching CPython internals)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (assistant masks) renders its body unchanged."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now,
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env


def _plain(value: Any) -> Any:
    """Only JSON-like data reaches the template (as transformers does): no objects with methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):         # NumPy scalars
        return _plain(value.item())
    return str(value)


@dataclass
class ChatTemplate:
    """A Jinja chat template plus the special-token strings it may refer to."""

    source: str
    special_tokens: dict[str, str] = field(default_factory=dict)   # bos_token -> "<s>", ...
    origin: str = ""                                                 # where it came from, for messages

    def __post_init__(self):
        try:
            import jinja2
        except ImportError:
            raise MissingDependencyError("jinja2", "torch", "rendering a chat template") from None
        try:
            self._compiled = _environment().from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise FormatError(f"chat template does not parse: {exc.message} (line {exc.lineno})", self.origin or None) from None

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **variables) -> str:
        """The prompt text for `messages`; `variables` override the special tokens, as in transformers."""
        import jinja2
        chat = [{k: v for k, v in _plain(m).items() if v is not None} for m in messages]
        context = {**self.special_tokens, **_plain(variables)}
        try:
            return self._compiled.render(messages=chat, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **context)
        except jinja2.exceptions.SecurityError as exc:
            raise FormatError(f"chat template tried something unsafe: {exc}", self.origin or None) from None
        except jinja2.TemplateError as exc:
            raise UnsupportedError(f"chat template refused the conversation: {exc}", self.origin or None) from None


def _pick(template: Any, where: Path) -> str | None:
    """tokenizer_config's `chat_template` is a string, or a list of {name, template} (take 'default')."""
    if template is None:
        return None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
        if template is None:
            return None
    if not isinstance(template, str):
        raise FormatError("chat_template is neither a string nor a list of named templates", where)
    if len(template) > TEMPLATE_CAP:
        raise FormatError(f"chat template of {len(template)} characters is too large", where)
    return template


def _token_text(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string or an AddedToken dict with 'content'."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def gguf_special_tokens(metadata: dict[str, Any]) -> dict[str, str]:
    """bos/eos/unk/pad/... strings from GGUF `tokenizer.ggml.*_token_id` and the token list."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    out: dict[str, str] = {}
    if tokens is None:
        return out
    count = len(tokens)
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                      ("sep_token", "seperator"), ("pad_token", "padding"), ("cls_token", "cls"),
                      ("mask_token", "mask")):
        value = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None and 0 <= int(value) < count:
            out[name] = str(tokens[int(value)])
    return out


def folder_of(source: ModelSource) -> Path:
    return source.path if source.path.is_dir() else source.path.parent


def template_for(source: ModelSource) -> ChatTemplate | None:
    """The model's own chat template: GGUF metadata, `chat_template.jinja`, or `tokenizer_config.json`."""
    if source.format == "gguf":
        text = _pick(source.metadata.get("tokenizer.chat_template"), source.path)
        if text is None:
            return None
        return ChatTemplate(text, gguf_special_tokens(source.metadata), origin=str(source.path))
    folder = folder_of(source)
    config_path = safe_member(folder, "tokenizer_config.json", "tokenizer config")
    config = read_json(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise FormatError("tokenizer_config.json is not a JSON object", config_path)
    specials = {name: text for name in SPECIAL_NAMES if (text := _token_text(config.get(name))) is not None}
    jinja_path = safe_member(folder, "chat_template.jinja", "chat template")
    if jinja_path.is_file():
        if jinja_path.stat().st_size > TEMPLATE_CAP:
            raise FormatError("chat template file is too large", jinja_path)
        try:
            text = jinja_path.read_text("utf-8")
        except UnicodeDecodeError:
            raise FormatError("chat template is not UTF-8", jinja_path) from None
        return ChatTemplate(text, specials, origin=str(jinja_path))
    text = _pick(config.get("chat_template"), config_path)
    if text is None:
        return None
    return ChatTemplate(text, specials, origin=str(config_path))
