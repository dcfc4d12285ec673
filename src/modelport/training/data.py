"""Training data: read, check every line, tokenize, before a single step runs.

Formats (by extension):
- `.txt`: continued pre-training; the whole text tokenized and packed into `seq_len` blocks.
- `.jsonl`: one JSON object a line, one of
  `{"text": ...}`, `{"prompt": ..., "response": ...}`, `{"instruction": ..., "input": ..., "output": ...}`,
  `{"messages": [{"role": ..., "content": ...}, ...]}`.
  Prompt/response pairs and chats are rendered with the model's chat template (modelport's renderer, the one
  `run` and `chat` use, so training sees the prompts inference sends); the loss counts only the answer's tokens.

Bad data is a `ModelportError` naming the file and the line: a run must not die (or, worse, quietly learn
nothing) an hour in because line 9,000 had no `response`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import FormatError, UnsupportedError
from ..runtime.chat_template import ChatTemplate

IGNORE = -100       # labels the loss skips (transformers' convention)
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Dataset:
    """Tokenized examples (`input_ids`, `labels`), and what the plan and the summary report about them."""

    examples: list[dict[str, list[int]]]
    kind: str                                   # "text", "pairs", "chat", "blocks"
    path: Path
    trained_tokens: int = 0                     # tokens the loss counts
    tokens: int = 0                             # all tokens
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]


def _bad(path: Path, line: int | None, problem: str) -> FormatError:
    return FormatError(f"line {line}: {problem}" if line else problem, path)


def read_records(path: str | Path) -> tuple[str, list[tuple[int, Any]]]:
    """("txt", [(1, text)]) or ("jsonl", [(line number, record), ...]), every record checked; nothing tokenized."""
    path = Path(path)
    if not path.is_file():
        raise FormatError("training data not found", path)
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(path, text_line(path, exc.start), "not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".json", ".md"):
        raise UnsupportedError("training data must be .txt (plain text) or .jsonl (one JSON object a line)", path)
    if not text.strip():
        raise _bad(path, None, "the file is empty")
    if suffix in (".txt", ".md"):
        return "txt", [(1, text)]
    records: list[tuple[int, Any]] = []
    kinds: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(path, n, f"not JSON ({exc.msg})") from None
        kind = _check_record(path, n, record)
        kinds.setdefault(kind, n)
        records.append((n, record))
    if len(kinds) > 1:
        (a, la), (b, lb) = sorted(kinds.items(), key=lambda kv: kv[1])[:2]
        raise _bad(path, lb, f"a {b!r} record after {a!r} records (line {la}); use one format per file")
    return "jsonl", records


def text_line(path: Path, offset: int) -> int:
    return path.read_bytes()[:offset].count(b"\n") + 1


def _string(path: Path, n: int, record: dict, key: str, optional: bool = False) -> str:
    value = record.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _bad(path, n, f"{key!r} must be a string" if key in record else f"missing {key!r}")
    if not optional and not value.strip():
        raise _bad(path, n, f"{key!r} is empty")
    return value


def _check_record(path: Path, n: int, record: Any) -> str:
    """The record's kind (text, pairs, chat); an error naming the line if it is none of them."""
    if not isinstance(record, dict):
        raise _bad(path, n, f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise _bad(path, n, "'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise _bad(path, n, f"message {i + 1} needs a 'role' ({', '.join(ROLES)}) and a string 'content'")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise _bad(path, n, "the chat has no assistant turn to learn from")
        return "chat"
    if "prompt" in record or "response" in record:
        _string(path, n, record, "prompt")
        _string(path, n, record, "response")
        return "pairs"
    if "instruction" in record or "output" in record:
        _string(path, n, record, "instruction")
        _string(path, n, record, "input", optional=True)
        _string(path, n, record, "output")
        return "pairs"
    if "text" in record:
        _string(path, n, record, "text")
        return "text"
    raise _bad(path, n, "no 'text', 'prompt'/'response', 'instruction'/'output' or 'messages' field")


def _as_chat(record: dict) -> list[dict[str, str]]:
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if "prompt" in record:
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    prompt = record["instruction"] + (("\n\n" + record["input"]) if record.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def _chat_spans(path: Path, n: int, template: ChatTemplate, chat: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant's turns (what the loss counts).

    Each turn's span runs from the end of the prompt that asks for it (rendered with the generation prompt)
    to the end of the conversation rendered up to and including it: the answer and its end-of-turn token."""
    full = template.render(chat, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(chat):
        if m["role"] != "assistant":
            continue
        before = template.render(chat[:i], add_generation_prompt=True)
        upto = template.render(chat[: i + 1], add_generation_prompt=False)
        if not full.startswith(before) or not full.startswith(upto) or len(upto) <= len(before):
            raise _bad(path, n, "the chat template does not render turn by turn (a prefix changes); cannot find the answer")
        spans.append((len(before), len(upto)))
    return full, spans


def tokenize(path: str | Path, tokenizer, template: ChatTemplate | None, seq_len: int) -> Dataset:
    """Check `path` (every line), then tokenize it for causal-LM training."""
    path = Path(path)
    kind, records = read_records(path)
    eos = tokenizer.eos_token_id
    if kind == "txt":
        ids = tokenizer(records[0][1], add_special_tokens=True, verbose=False)["input_ids"]  # packed below: long is fine
        if eos is not None:
            ids = [*ids, eos]
        if len(ids) < 2:
            raise _bad(path, None, "the text is too short to train on")
        block = min(seq_len, len(ids))
        examples = [ids[i:i + block] for i in range(0, len(ids) - block + 1, block)]
        tail = ids[len(examples) * block:]
        if len(tail) >= 2:
            examples.append(tail)
        out = [{"input_ids": e, "labels": list(e)} for e in examples]
        total = sum(len(e) for e in examples)
        return Dataset(out, "blocks", path, total, total, {"block": block})
    sub = _check_record(path, records[0][0], records[0][1])
    examples = []
    trained = total = truncated = 0
    for n, record in records:
        if sub == "text":
            ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"] + ([eos] if eos is not None else [])
            labels = list(ids)
        else:
            chat = _as_chat(record)
            if template is None:   # no template: "prompt\nresponse<eos>", loss on the response
                if sub == "chat" and len(chat) != 2:
                    raise _bad(path, n, "a multi-turn chat needs a model with a chat template")
                text, spans = _plain_pair(chat)
            else:
                text, spans = _chat_spans(path, n, template, chat)
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            labels = [t if any(a < e and s < b for a, b in spans) else IGNORE
                      for t, (s, e) in zip(ids, enc["offset_mapping"], strict=True)]
            if template is None and eos is not None:
                ids, labels = [*ids, eos], [*labels, eos]
        if len(ids) > seq_len:
            ids, labels = ids[:seq_len], labels[:seq_len]
            truncated += 1
        counted = sum(1 for t in labels[1:] if t != IGNORE)
        if counted == 0:
            raise _bad(path, n, f"nothing left to learn within --seq-len {seq_len} (the answer is cut off)")
        examples.append({"input_ids": ids, "labels": labels})
        trained += counted
        total += len(ids)
    return Dataset(examples, sub if sub != "pairs" else "pairs", path, trained, total, {"truncated": truncated})


def _plain_pair(chat: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    prompt = chat[0]["content"] + "\n"
    return prompt + chat[1]["content"], [(len(prompt), len(prompt) + len(chat[1]["content"]))]


def collate(pad_id: int):
    """A collator padding `input_ids` with `pad_id`, `labels` with IGNORE, and building the attention mask."""
    def collate_fn(batch: list[dict[str, list[int]]]):
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    return collate_fn
