"""The text layer over the engine: detokenize as tokens arrive, stop at eos or stop strings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Delta:
    text: str  # new text since the previous delta (may be "")
    token_ids: list[int]  # tokens that produced it (the final eos included)
    finish_reason: str | None = None  # "stop" (eos or stop string) or "length" on the last delta


class StopMatcher:
    """Emits text as soon as it cannot be the start of a stop string; cuts at the first stop string."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = max((_overlap(self.pending, s) for s in self.stops), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def stream_text(
    token_ids: Iterator[int], stream_decoder, eos_ids: frozenset[int], stops: list[str]
) -> Iterator[Delta]:
    """Turn the engine's token stream into text deltas; the last delta carries the finish reason.

    Stopping early (a stop string, or the caller closing this iterator) closes `token_ids`, which
    cancels the engine's request at once.
    """
    try:
        yield from _deltas(token_ids, stream_decoder, eos_ids, stops)
    finally:
        if hasattr(token_ids, "close"):
            token_ids.close()


def _deltas(token_ids, stream_decoder, eos_ids, stops) -> Iterator[Delta]:
    matcher = StopMatcher(stops)
    batch: list[int] = []
    for token in token_ids:
        if token in eos_ids:
            batch.append(token)
            tail = matcher.push(stream_decoder.flush())[0] + matcher.flush()
            yield Delta(tail, batch, "stop")
            return
        batch.append(token)
        text, hit = matcher.push(stream_decoder.step(token))
        if hit:
            yield Delta(text, batch, "stop")
            return
        if text:
            yield Delta(text, batch)
            batch = []
    text, hit = matcher.push(stream_decoder.flush())
    yield Delta(text + ("" if hit else matcher.flush()), batch, "stop" if hit else "length")
