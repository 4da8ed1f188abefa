"""Training batches from token shards, in an order that is a pure function of (seed, step).

A split is cut into windows of `seq_len + 1` tokens (inputs and the targets shifted by one) that
never cross a shard boundary. Each epoch visits every window once in a seeded random order, and the
global batch of step s is the next `rows` windows of that order: the data position of a run is its
step count, so a resumed run reads exactly what an uninterrupted one would have read, and N
processes reading their slices of a step read the same windows as one process reading all of them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from genforge.data.shards import load_manifest
from genforge.errors import GenforgeError


class TokenWindows:
    def __init__(self, folder: str | Path, split: str, seq_len: int):
        manifest = load_manifest(folder)
        self.seq_len = seq_len
        self.shards = [
            np.memmap(Path(folder) / s["file"], dtype=manifest["dtype"], mode="r")
            for s in manifest["shards"][split]
        ]
        counts = [max(0, (len(s) - 1) // seq_len) for s in self.shards]
        self.starts = np.cumsum([0, *counts])
        self.n = int(self.starts[-1])
        self.n_tokens = sum(len(s) for s in self.shards)

    def window(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        off = (i - int(self.starts[shard])) * self.seq_len
        return self.shards[shard][off : off + self.seq_len + 1]

    def stack(self, indices) -> torch.Tensor:
        rows = np.stack([self.window(int(i)) for i in indices]).astype(np.int64)
        return torch.from_numpy(rows)  # (len(indices), seq_len + 1)


class StepOrder:
    """Which of `n` items make up the global batch of `rows` of each step: every epoch visits all
    of them once, in a permutation seeded by (seed, epoch). A pure function of the step."""

    def __init__(self, n: int, seed: int, rows: int):
        self.n, self.seed, self.rows = n, seed, rows

    @lru_cache(maxsize=2)  # noqa: B019 (one order per run)
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def indices(self, step: int) -> list[int]:
        """Item indices of the global batch of optimizer step `step`."""
        out = []
        for g in range(step * self.rows, (step + 1) * self.rows):
            epoch, j = divmod(g, self.n)
            out.append(int(self._order(epoch)[j]))
        return out


class TrainBatches(StepOrder):
    """The global batch of each step, of which each process reads its own rows."""

    def __init__(self, windows: TokenWindows, seed: int, rows: int):
        if windows.n == 0:
            raise GenforgeError(
                f"the training split has {windows.n_tokens} tokens, fewer than one sequence of "
                f"{windows.seq_len + 1}; lower --seq-len or prepare more data."
            )
        super().__init__(windows.n, seed, rows)
        self.windows = windows

    def batch(self, step: int, rank: int, world: int, accum: int, batch: int) -> torch.Tensor:
        """This process's rows of step `step`: (accum, batch, seq_len + 1) token ids."""
        per_rank = accum * batch
        mine = self.indices(step)[rank * per_rank : (rank + 1) * per_rank]
        return self.windows.stack(mine).view(accum, batch, -1)

    def epoch(self, step: int) -> float:
        return step * self.rows / self.windows.n


def validation_windows(windows: TokenWindows, max_tokens: int) -> list[int]:
    """A fixed, evenly spread set of validation windows holding up to `max_tokens` tokens."""
    n = min(windows.n, max(1, max_tokens // windows.seq_len))
    return sorted({int(i) for i in np.linspace(0, windows.n - 1, n)}) if windows.n else []


def token_bytes(hf_tokenizer, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes of each token id (0 for special tokens), for bits per byte.

    Byte-level BPE writes each byte as one character of its alphabet, so a token's byte count is the
    length of its string form.
    """
    special = {t.content for t in hf_tokenizer.get_added_tokens_decoder().values()}
    out = torch.zeros(vocab_size, dtype=torch.long)
    for i in range(min(vocab_size, hf_tokenizer.get_vocab_size())):
        piece = hf_tokenizer.id_to_token(i)
        if piece is not None and piece not in special:
            out[i] = len(piece)
    return out
