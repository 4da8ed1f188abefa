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
    deltas = DeltaMaker(stream_decoder, eos_ids, stops)
    for token in token_ids:
        if delta := deltas.push(token):
            yield delta
        if deltas.done:
            return
    yield deltas.end()


class DeltaMaker:
    """Token ids in, text deltas out: `push` each token, then `end()` if the tokens ran out first.

    After `push` returns a delta with a finish reason (eos or a stop string), `done` is true and
    the request should be cancelled.
    """

    def __init__(self, stream_decoder, eos_ids: frozenset[int], stops: list[str]):
        self.decoder, self.eos_ids = stream_decoder, eos_ids
        self.matcher = StopMatcher(stops)
        self.batch: list[int] = []
        self.done = False

    def push(self, token: int) -> Delta | None:
        self.batch.append(token)
        if token in self.eos_ids:
            tail = self.matcher.push(self.decoder.flush())[0] + self.matcher.flush()
            return self._emit(tail, "stop")
        text, hit = self.matcher.push(self.decoder.step(token))
        if hit:
            return self._emit(text, "stop")
        return self._emit(text) if text else None

    def end(self) -> Delta:
        """The last delta when the tokens ran out (the length limit, or a cancelled request)."""
        text, hit = self.matcher.push(self.decoder.flush())
        return self._emit(text + ("" if hit else self.matcher.flush()), "stop" if hit else "length")

    def _emit(self, text: str, finish_reason: str | None = None) -> Delta:
        delta, self.batch = Delta(text, self.batch, finish_reason), []
        self.done = finish_reason is not None
        return delta
