"""Which sources an answer cites: `[n]` markers read from its prose, and sentence-level attribution
for answers written without markers.

Markers. A marker is a bracket group of source numbers (`[1]`, `[1, 2]`, `[1][2]`) attached to the
end of a word or sentence in prose. Code is not prose: fenced blocks, inline code spans and
doctest/prompt lines are skipped, and a bracketed number list that reads as code or data is not a
marker: one after `=`, `:`, `(`, an operator or a value word (`returns [1, 2]`), inside an
unclosed `[`, `{` or call on its line, indexing something (`x[1]`, `f(x)[1]`), or followed by
`=`, `:`, `(`, `.attr` or an operator. Every number of the group must be a source shown (1..n), none
twice, and every group of a chain (`[1][0]`) must be a marker for any of them to be.

Attribution. Each sentence of the answer is scored against each source's sentences (and pairs of
neighbouring sentences), not against the whole chunk: the share of the answer sentence's content
words found there, each word weighted by its rarity among the sources shown (IDF) and numbers and
identifiers (`4`, `mib`, `lru_cache`) weighted more. A window that lacks a number the answer states
cannot support it. A sentence is attributed to the best source only when enough of it is covered
and at least two content words (or one number/identifier) match: a sentence nothing supports, or
that shares only common words with the sources, gets no citation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genforge.rag.store import STOPWORDS

_GROUP = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_PROMPT_LINE = re.compile(r"^\s*(>>>|\.\.\.\s|\$\s|In \[\d+\]:)")
# A bracketed list right after one of these is a value, not a citation: "returns [1, 2, 3]".
_VALUE_WORDS = frozenset(
    [
        "is",
        "are",
        "was",
        "were",
        "be",
        "returns",
        "return",
        "gives",
        "give",
        "yields",
        "yield",
        "prints",
        "print",
        "outputs",
        "output",
        "equals",
        "becomes",
        "produces",
        "contains",
        "evaluates",
    ]
)
_CODE_BEFORE = set("=([{:+/%<>|&^~\\@→")
_CLOSE = {")": "(", "]": "[", "}": "{"}
# "Sources: [1], [2]" lists citations; other words before a colon make a key: "items: [1, 2]".
_CITING_COLON = re.compile(r"\b(?:sources?|see|references?|refs?|citations?)\s*:$", re.I)


@dataclass(frozen=True)
class Marker:
    start: int
    end: int
    numbers: tuple[int, ...]


def prose(text: str) -> str:
    """`text` with code blanked out (same length, newlines kept): fenced blocks, inline code spans
    and doctest or shell prompt lines."""
    out = []
    fence, prompt = None, False
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            out.append(_blank(line))
        elif fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append(_blank(line))
        elif _PROMPT_LINE.match(line) or (prompt and line.strip()):
            prompt = True  # a prompt line and the output under it, up to a blank line
            out.append(_blank(line))
            continue
        else:
            out.append(line)
        prompt = False
    text = "".join(out)
    # Inline code: a run of backticks up to the next run of the same length.
    return re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", lambda m: _blank(m.group()), text, flags=re.S)


def _blank(s: str) -> str:
    return re.sub(r"[^\n]", " ", s)


def markers(text: str, count: int) -> list[Marker]:
    """The citation markers in `text` whose numbers all name one of `count` sources, in order."""
    clean = prose(text)
    groups = list(_GROUP.finditer(clean))
    found = []
    i = 0
    while i < len(groups):
        chain = [groups[i]]  # "[1][2]": adjacent groups stand or fall together
        while i + 1 < len(groups) and groups[i + 1].start() == chain[-1].end():
            i += 1
            chain.append(groups[i])
        i += 1
        numbers = [_numbers(g.group(1), count) for g in chain]
        if all(numbers) and _is_prose(clean, chain[0].start(), chain[-1].end()):
            found += [Marker(g.start(), g.end(), n) for g, n in zip(chain, numbers, strict=True)]
    return found


def _numbers(group: str, count: int) -> tuple[int, ...] | None:
    digits = re.split(r"\s*,\s*", group)
    numbers = tuple(int(d) for d in digits)
    if any(d.startswith("0") for d in digits) or len(set(numbers)) < len(numbers):
        return None
    return numbers if all(1 <= n <= count for n in numbers) else None


def _is_prose(text: str, start: int, end: int) -> bool:
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    before = text[line_start:start]
    after = text[end : len(text) if line_end < 0 else line_end]
    if not _fits_before(before) or not _fits_after(after):
        return False
    if after.startswith(":") and re.match(
        r"\s*(for|if|elif|while|with|def|class|lambda)\b", before
    ):
        return False  # "for n in [1, 2]:"
    if re.search(r"[A-Za-z]$", before):  # "capital[1]." but not "matrix[1][2] is one cell"
        return bool(re.match(r"\s*$|[.,;:!?)]", after))
    return True


def _fits_before(before: str) -> bool:
    if _unclosed(before):
        return False
    stripped = before.rstrip()
    if not stripped:
        return True  # at the start of a line
    prev = stripped[-1]
    if _CITING_COLON.search(stripped):
        return True
    if prev in _CODE_BEFORE or stripped.endswith((" *", " -", "->", "=>")):
        return False
    if stripped != before:  # a space before the marker: "as shown in [2]", "Paris. [1]"
        word = re.search(r"(\w+)$", stripped)
        return not (word and word.group(1).lower() in _VALUE_WORDS)
    # Attached: "capital.[1]", "Paris[1]", but not indexing: "x[1]", "argv[1]", "f(x)[1]", "'ab'[1]".
    if prev in ".!?;,":
        return True
    token = re.search(r"[\w.]+$", stripped)
    if token is None:
        return False
    token = token.group()
    return token.isalpha() and len(token) >= 3 and not token.isupper()


def _fits_after(after: str) -> bool:
    code = re.match(r"\s*(==?|:\S|\*\*?\s|[-+/%]\s|\[)", after) or re.match(
        r"\(|\.[A-Za-z_]", after
    )
    return not code


def _unclosed(before: str) -> bool:
    """Whether `before` leaves a bracket open that makes what follows code: `[` or `{`, or a call's
    `(` (one right after a name or a closing bracket)."""
    stack = []
    for i, ch in enumerate(before):
        if ch in "([{":
            call = ch == "(" and i > 0 and (before[i - 1].isalnum() or before[i - 1] in "_)]")
            stack.append(ch if ch != "(" or call else "")  # "" a prose parenthesis
        elif ch in _CLOSE and stack:
            stack.pop()
    return any(stack)


# Attribution --------------------------------------------------------------------------------------

# Words that say nothing about which source an answer came from (beyond the keyword-search list).
_COMMON = STOPWORDS | frozenset(
    [
        "about",
        "after",
        "all",
        "also",
        "am",
        "any",
        "been",
        "before",
        "being",
        "both",
        "but",
        "could",
        "did",
        "each",
        "every",
        "had",
        "has",
        "have",
        "he",
        "her",
        "here",
        "him",
        "his",
        "if",
        "into",
        "just",
        "like",
        "may",
        "me",
        "might",
        "more",
        "most",
        "much",
        "must",
        "my",
        "no",
        "not",
        "now",
        "only",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "some",
        "such",
        "than",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "those",
        "through",
        "too",
        "under",
        "until",
        "up",
        "very",
        "we",
        "were",
        "while",
        "would",
        "yes",
        "one",
        "two",
        "use",
        "used",
        "uses",
        "using",
        "way",
        "answer",
        "source",
        "sources",
        "says",
        "said",
        "according",
        "document",
        "documents",
        "text",
    ]
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*(?:[-*+>#|]|\d+[.)]\s))")
# A number with its unit is one token ("4mib"): "16 MiB" is not supported by a passage saying "4 MiB"
# and, elsewhere, "up to 16".
_QUANTITY = re.compile(
    r"\b(\d+(?:\.\d+)?)\s*(kib|mib|gib|tib|kb|mb|gb|tb|bytes?|ms|seconds?|minutes?|hours?|days?|"
    r"weeks?|months?|years?|tokens?|miles?|km|kg|percent|%)(?!\w)"
)
_LIST_ITEM = re.compile(r"^(?:[-*+>#]+|\d+[.)])\s+")
PAIR_DISCOUNT = 0.8
MIN_COVERAGE = 0.5  # weighted share of the sentence's content words a source sentence must hold
# A paraphrase shares too few words: a sentence no source covers is matched by meaning instead, to
# the source sentence most similar to it (cosine of the retriever's embeddings) if at least this.
# On the labelled set of tests/rag/test_cite.py no unsupported sentence without a number of its
# own comes above 0.35 and every supported one is at 0.55 or more.
MIN_MEANING = 0.6


def _tokens(text: str) -> list[str]:
    text = text.lower()
    words = [
        _stem(w)
        for w in re.findall(r"\w+", text)
        if w not in _COMMON and (len(w) > 1 or w.isdigit())
    ]
    return words + [f"{n}{_stem(unit)}" for n, unit in _QUANTITY.findall(text)]


def _stem(word: str) -> str:
    """A crude English stem, so that "calls", "called" and "call" match; identifiers stay whole."""
    if len(word) <= 4 or not word.isalpha():
        return word
    for suffix, replacement in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + replacement
            break
    return word.removesuffix("e")


def _exact(word: str) -> bool:
    """A number or an identifier: a token that, when it matches, names the passage."""
    return any(c.isdigit() for c in word) or "_" in word


def sentences(text: str) -> list[str]:
    out = []
    for part in (p.strip() for p in _SENTENCE.split(text)):
        if part and out and re.fullmatch(r"\d+[.)]", out[-1]):
            out[-1] += " " + part  # "1. Use ...": a list item's number is no sentence
        elif part:
            out.append(part)
    return out


def attribute_sentences(
    text: str,
    sources: list[str],
    min_coverage: float = MIN_COVERAGE,
    similarity: Callable[[list[str], list[str]], Any] | None = None,
):
    """For each sentence of `text` (markers removed), the index of the source that supports it, or
    None. Returned as (sentence, index) pairs.

    `similarity(a, b)`: cosine similarities of two lists of texts (a matrix indexed [i][j]); with it,
    a sentence no source covers in words goes to the source with the sentence closest in meaning,
    if at least `MIN_MEANING` close and holding every number the sentence states."""
    # Per source: the word sets of its sentences, and of pairs of neighbours (an answer may join
    # two), a pair's score discounted: words that meet in one sentence are the stronger evidence.
    windows = []
    for source in sources:
        units = [set(_tokens(s)) for s in sentences(source)] or [set()]
        pairs = [a | b for a, b in zip(units, units[1:], strict=False)]
        windows.append([(u, 1.0) for u in units] + [(p, PAIR_DISCOUNT) for p in pairs])
    bags = [set().union(*(u for u, _ in w)) for w in windows]
    n = len(sources)

    def weight(word: str) -> float:
        df = sum(word in bag for bag in bags)
        # A word no source has tells nothing about which one: it counts, as a plain word, against
        # the share covered (rare within the sources is what singles one out).
        idf = math.log((n + 1) / (df + 0.5)) + 0.5 if df else 1.0
        return idf * (3.0 if _exact(word) else 1.0)

    result, by_meaning = [], []
    for sentence in sentences(_GROUP.sub(" ", text)):
        words = set(_tokens(_LIST_ITEM.sub("", sentence)))  # "2. Use ..." states no number
        best, best_score = None, 0.0
        if len(words) >= 2:
            by_meaning.append((len(result), sentence, {w for w in words if w[0].isdigit()}))
        if len(words) >= 2 or any(_exact(w) for w in words):
            weights = {w: weight(w) for w in words}
            total = sum(weights.values())
            numbers = {w for w in words if w[0].isdigit()}  # numbers and quantities
            for i, units in enumerate(windows):
                for unit, factor in units:
                    shared = words & unit
                    if not numbers <= unit:
                        continue  # a number the passage does not state: not its support
                    if len(shared) < 2 and not any(_exact(w) for w in shared):
                        continue
                    if shared <= numbers:
                        continue  # a number alone, in a passage about something else
                    score = factor * sum(weights[w] for w in shared) / total
                    if score > best_score:
                        best, best_score = i, score
        result.append((sentence, best if best_score >= min_coverage else None))
    unmatched = [m for m in by_meaning if result[m[0]][1] is None]
    if similarity is not None and unmatched:
        _by_meaning(result, unmatched, sources, similarity)
    return result


def _by_meaning(result: list, unmatched: list, sources: list[str], similarity) -> None:
    """Attribute each unmatched (position, sentence, numbers) to the source sentence closest in
    meaning that states all its numbers, when close enough; `result` is updated in place."""
    units = [(i, s) for i, source in enumerate(sources) for s in sentences(source)]
    if not units:
        return
    sims = similarity([s for _, s, _ in unmatched], [s for _, s in units])
    unit_words = [set(_tokens(s)) for _, s in units]
    for row, (position, sentence, numbers) in enumerate(unmatched):
        best, best_sim = None, MIN_MEANING
        for j, (i, _) in enumerate(units):
            if numbers <= unit_words[j] and float(sims[row][j]) >= best_sim:
                best, best_sim = i, float(sims[row][j])
        result[position] = (sentence, best)
