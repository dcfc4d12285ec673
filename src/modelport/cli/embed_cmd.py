"""`modelport embed MODEL TEXT...`: vectors from an encoder (transformers, onnxruntime or llama.cpp), and how alike
the texts are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from ..core.errors import ModelportError
from ..runtime import embed
from .options import quiet_libraries, read_text
from .output import console, print_json, trust_option

SHOWN = 3          # leading values shown per vector in the table
TEXT_WIDTH = 40    # characters of each text shown in the tables
MATRIX_MAX = 8     # more texts than this: the closest pairs instead of the whole matrix


def short(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def register(app: typer.Typer) -> None:
    @app.command("embed")
    def embed_cmd(
        model: Path = typer.Argument(..., help="Encoder: Hugging Face folder (sentence-transformers too), ONNX export "
                                                "('convert --to onnx') or embedding GGUF."),
        texts: list[str] = typer.Argument(None, help="Texts to embed."),
        file: Path = typer.Option(None, "--file", "-f", help="Also embed each non-empty line of this UTF-8 file."),
        engine: str = typer.Option("auto", "--engine", help="auto (llama.cpp for GGUF, onnxruntime for ONNX exports, "
                                                            "transformers otherwise), hf, onnx or llama."),
        normalize: bool = typer.Option(False, "--normalize", help="L2-normalize the vectors (a sentence-transformers "
                                                                  "Normalize module applies anyway)."),
        as_json: bool = typer.Option(False, "--json", help="Print the vectors and the similarity matrix as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Embed texts: dimensions, norm and first values of each vector, and their cosine similarities."""
        quiet_libraries()
        items = list(texts or [])
        if file is not None:
            items += [line for line in read_text(file).splitlines() if line.strip()]
        if not items:
            raise ModelportError("no text to embed: give texts after the model or --file")
        result = embed(model, items, engine=engine, normalize=normalize, trust=trust)
        if as_json:
            print_json(result.to_dict())
            return
        console.print(f"{model.name}: {len(items)} vector{'s' if len(items) > 1 else ''} of {result.dimensions} "
                      f"dimensions ({result.engine}, pooling {result.pooling})", highlight=False)
        table = Table()
        for name, justify in (("#", "right"), ("text", "left"), ("tokens", "right"), ("norm", "right"),
                              ("first values", "left")):
            table.add_column(name, justify=justify)
        norms = np.linalg.norm(result.vectors, axis=1)
        for i, (text, count, norm, vector) in enumerate(zip(items, result.tokens, norms, result.vectors), 1):
            head = " ".join(f"{v:+.4f}" for v in vector[:SHOWN]) + (" …" if len(vector) > SHOWN else "")
            table.add_row(str(i), short(text), str(count), f"{norm:.4f}", head)
        console.print(table)
        if len(items) > 1:
            print_similarity(items, result.similarity())


def print_similarity(items: list[str], similarity: np.ndarray) -> None:
    """The cosine matrix (rows and columns numbered as in the table above); for many texts, the closest pairs."""
    if len(items) <= MATRIX_MAX:
        matrix = Table(title="cosine similarity")
        matrix.add_column("#", justify="right")
        for i in range(len(items)):
            matrix.add_column(str(i + 1), justify="right")
        for i, row in enumerate(similarity):
            matrix.add_row(str(i + 1), *(f"{v:.3f}" for v in row))
        console.print(matrix)
        return
    pairs = sorted(((similarity[i, j], i, j) for i in range(len(items)) for j in range(i + 1, len(items))), reverse=True)
    table = Table(title="closest pairs")
    for name in ("cosine", "text", "text"):
        table.add_column(name, justify="right" if name == "cosine" else "left")
    for value, i, j in pairs[:MATRIX_MAX]:
        table.add_row(f"{value:.4f}", f"{i + 1} {short(items[i], 30)}", f"{j + 1} {short(items[j], 30)}")
    console.print(table)
