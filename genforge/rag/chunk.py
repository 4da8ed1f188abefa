"""Pack a file's blocks into chunks of at most `max_tokens` tokens, overlapping by whole lines.

Design choices:
- A chunk never mixes sections: blocks are packed only with neighbours of the same heading (and
  unit), so a retrieved chunk is about one thing and its heading is true for all of it.
- The measure of a chunk is the sum of its lines' token counts; each line is counted once, so
  chunking is linear in the file. For a word counter the sum is exact. For a subword tokenizer it
  is close: it leaves out the line breaks between lines, which WordPiece (the embedder's) does not
  count either and a byte-level BPE counts as about one token each.
- A block too big for one chunk is cut at line boundaries, and a line too long for one chunk at
  word (or, for one giant word, character) boundaries; every piece keeps its source lines.
- Overlap is whole lines from the end of the previous chunk of the same section, so a sentence cut
  at a chunk boundary is still found whole in one of the two chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby

from genforge.errors import GenforgeError
from genforge.rag.documents import Block


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # first source line (or page) the text comes from
    end: int  # last, inclusive
    heading: str = ""  # the section the chunk sits in (see Block.heading)
    unit: str = "line"  # "line", or "page" for PDFs


@dataclass(slots=True)
class _Line:
    text: str
    start: int
    end: int
    tokens: int  # 0 for a blank line
    block: int  # which block it came from: blocks are joined by a blank line
    whole: bool  # False for a piece of a line cut to fit; only whole lines are repeated as overlap


def chunk_blocks(
    blocks: list[Block],
    count_tokens: Callable[[str], int],
    max_tokens: int = 200,
    overlap: int = 32,
) -> list[Chunk]:
    """Chunks of at most `max_tokens` tokens (by `count_tokens`, summed over lines), in order;
    within a section each chunk after the first repeats up to `overlap` tokens of whole lines."""
    if max_tokens < 16:
        raise GenforgeError(f"the chunk size must be at least 16 tokens (got {max_tokens}).")
    if not 0 <= overlap < max_tokens // 2:
        raise GenforgeError(
            f"the chunk overlap must be from 0 to {max_tokens // 2 - 1} tokens, under half the "
            f"chunk size of {max_tokens} (got {overlap})."
        )
    chunks: list[Chunk] = []
    numbered = enumerate(blocks)
    for (heading, unit), section in groupby(numbered, key=lambda ib: (ib[1].heading, ib[1].unit)):
        lines = [
            line for i, block in section for line in _lines(block, i, count_tokens, max_tokens)
        ]
        chunks += _pack(lines, max_tokens, overlap, heading, unit)
    return chunks


def _lines(block: Block, index: int, count: Callable[[str], int], limit: int) -> Iterator[_Line]:
    texts = block.text.split("\n")
    # Line-based blocks hold their source lines verbatim, so line i is source line start + i.
    # Otherwise (a PDF page, an HTML paragraph, a JSONL record) all we know is the block's span.
    exact = block.unit == "line" and len(texts) == block.end - block.start + 1
    for i, text in enumerate(texts):
        start, end = (block.start + i,) * 2 if exact else (block.start, block.end)
        if not text.strip():
            yield _Line(text, start, end, 0, index, True)
            continue
        tokens = count(text)
        if tokens <= limit:
            yield _Line(text, start, end, tokens, index, True)
            continue
        for piece, n in _split_line(text, count, limit):
            yield _Line(piece, start, end, n, index, False)


def _split_line(text: str, count: Callable[[str], int], limit: int) -> Iterator[tuple[str, int]]:
    """Pieces of a line too long for one chunk, at word boundaries (characters for a giant word)."""
    words, total = [], 0
    for word in re.findall(r"\S+\s*", text):
        n = count(word)
        if total + n > limit and words:
            yield "".join(words).rstrip(), total
            words, total = [], 0
        if n <= limit:
            words.append(word)
            total += n
            continue
        word = word.rstrip()
        while word:  # a token is rarely under a character or over four, so start at 4 * limit
            size = min(len(word), 4 * limit)
            n = count(word[:size])
            while n > limit and size > 1:
                size //= 2
                n = count(word[:size])
            yield word[:size], n
            word = word[size:]
    if words:
        yield "".join(words).rstrip(), total


def _pack(lines: list[_Line], limit: int, overlap: int, heading: str, unit: str) -> list[Chunk]:
    chunks, current, total = [], [], 0
    for line in lines:
        if total + line.tokens > limit:  # only after a line with tokens: current has text
            chunks.append(_chunk(current, heading, unit))
            current = _tail(current, overlap)
            total = sum(x.tokens for x in current)
            while current and total + line.tokens > limit:  # the overlap gives way to new text
                total -= current.pop(0).tokens
        current.append(line)
        total += line.tokens
    if any(x.text.strip() for x in current):
        chunks.append(_chunk(current, heading, unit))
    return chunks


def _tail(lines: list[_Line], overlap: int) -> list[_Line]:
    """The last whole lines of a chunk worth at most `overlap` tokens, to open the next one."""
    end = len(lines)
    while end and not lines[end - 1].text.strip():
        end -= 1
    start, total = end, 0
    while start and lines[start - 1].whole and total + lines[start - 1].tokens <= overlap:
        start -= 1
        total += lines[start].tokens
    while start < end and not lines[start].text.strip():
        start += 1
    return lines[start:end] if total else []


def _chunk(lines: list[_Line], heading: str, unit: str) -> Chunk:
    filled = [i for i, x in enumerate(lines) if x.text.strip()]
    parts = []
    for i in range(filled[0], filled[-1] + 1):
        if i > filled[0]:
            parts.append("\n\n" if lines[i].block != lines[i - 1].block else "\n")
        parts.append(lines[i].text)
    start, end = min(lines[i].start for i in filled), max(lines[i].end for i in filled)
    return Chunk("".join(parts), start, end, heading, unit)
