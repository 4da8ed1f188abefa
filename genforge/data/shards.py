"""`genforge data prepare`: a corpus -> deduplicated documents -> train/validation token shards.

The output folder holds `train_NNN.bin` / `val_NNN.bin` (token ids, uint16 when the vocabulary fits,
else uint32, documents separated by the end-of-text token), the tokenizer they were made with, and
`manifest.json` (sources with their sha256, counts, shards). Each file is written to a temporary name
and renamed, and the manifest last: a folder with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from genforge.data.corpus import Document, ReadStats, no_text_error, read_documents, split
from genforge.errors import GenforgeError
from genforge.tokenizer import Tokenizer
from genforge.tokenizer.bpe import EOS

SHARD_TOKENS = 1 << 26  # 64M tokens: 128 MB per uint16 shard
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _ShardWriter:
    def __init__(self, out: Path, prefix: str, dtype):
        self.out, self.prefix, self.dtype = out, prefix, dtype
        self.shards: list[dict] = []
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.tokens = 0

    def add(self, ids: list[int]) -> None:
        self.buffer.append(np.asarray(ids, dtype=self.dtype))
        self.buffered += len(ids)
        self.tokens += len(ids)
        if self.buffered >= SHARD_TOKENS:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        name = f"{self.prefix}_{len(self.shards):03d}.bin"
        tmp = self.out / f".{name}.tmp"
        np.concatenate(self.buffer).tofile(tmp)
        os.replace(tmp, self.out / name)
        self.shards.append({"file": name, "tokens": self.buffered})
        self.buffer, self.buffered = [], 0


def prepare(
    sources: list[str],
    out: str | Path,
    tokenizer_dir: str | Path,
    val_fraction: float = 0.01,
    progress: bool = True,
) -> dict:
    """Tokenize `sources` into shards in `out` with the tokenizer folder `tokenizer_dir`."""
    if not 0 <= val_fraction < 0.5:
        raise GenforgeError(f"--val-fraction must be in [0, 0.5), got {val_fraction}.")
    tok = Tokenizer.from_dir(tokenizer_dir)
    eos = tok.hf.token_to_id(EOS)
    if eos is None:
        raise GenforgeError(f"{tokenizer_dir} has no {EOS} token to separate documents.")
    out = Path(out)
    if (out / MANIFEST).exists() or (out.exists() and any(out.iterdir())):
        if not (out / MANIFEST).exists():
            raise GenforgeError(
                f"{out} exists and is not a prepared data folder; pick another --out."
            )
        for old in out.glob("*.bin"):
            old.unlink()
        (out / MANIFEST).unlink()
    out.mkdir(parents=True, exist_ok=True)
    stats = ReadStats()
    docs = list(read_documents(sources, stats))
    if not docs:
        raise no_text_error(sources, stats)
    train, val = split(docs, val_fraction)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    writers = {"train": _ShardWriter(out, "train", dtype), "val": _ShardWriter(out, "val", dtype)}
    for name, part in (("train", train), ("val", val)):
        _tokenize(tok, part, eos, writers[name], progress, name)
        writers[name].flush()
    shutil.copytree(tokenizer_dir, out / "tokenizer", dirs_exist_ok=True)
    files = sorted({d.source for d in docs})
    manifest = {
        "version": 1,
        "dtype": np.dtype(dtype).name,
        "vocab_size": tok.vocab_size,
        "eos_id": eos,
        "tokenizer": "tokenizer",
        "val_fraction": val_fraction,
        "sources": sources,
        "files": [{"path": f, "sha256": _sha256(Path(f))} for f in files],
        "read": {k: v for k, v in asdict(stats).items() if k != "skipped_binary"}
        | {"skipped_binary": len(stats.skipped_binary)},
        "documents": {"train": len(train), "val": len(val)},
        "bytes": {"train": _bytes(train), "val": _bytes(val)},
        "tokens": {k: w.tokens for k, w in writers.items()},
        "shards": {k: w.shards for k, w in writers.items()},
    }
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)
    return manifest


def _bytes(docs: list[Document]) -> int:
    return sum(len(d.text.encode()) for d in docs)


def _tokenize(tok, docs: list[Document], eos: int, writer: _ShardWriter, progress, name) -> None:
    bar = tqdm(total=len(docs), desc=f"tokenizing {name}", unit="doc", disable=not progress)
    for start in range(0, len(docs), 256):
        batch = [d.text for d in docs[start : start + 256]]
        for enc in tok.hf.encode_batch(batch, add_special_tokens=False):
            writer.add([*enc.ids, eos])
        bar.update(len(batch))
    bar.close()


def load_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise GenforgeError(
            f"{folder} is not a prepared data folder (no {MANIFEST}); run `genforge data prepare` first."
        )
    return json.loads(path.read_text())


def tokens(folder: str | Path, split_name: str) -> np.ndarray:
    """All tokens of one split, memory-mapped shard by shard and concatenated lazily."""
    manifest = load_manifest(folder)
    parts = [
        np.memmap(Path(folder) / s["file"], dtype=manifest["dtype"], mode="r")
        for s in manifest["shards"][split_name]
    ]
    if not parts:
        return np.zeros(0, dtype=manifest["dtype"])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
