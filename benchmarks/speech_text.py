"""The round trip's text, for benchmarks/speech_speed.py: plain prose sentences of the Python
documentation that no genforge recipe trains on and no eval task reads, and the word error rate of
what Whisper heard, after a stated normalisation.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from genforge.evals.everyday import PYDOCS as DOCS

VAL_FRACTION = 0.05  # recipes/run.py: the documents pydocs-tiny holds out of its training
MIN_WORDS, MAX_WORDS = 8, 30


# -- sentences of held-out documentation prose ----------------------------------------------------

# Directives whose bodies are prose; every other directive's body (code, tables, indexes) is skipped.
PROSE_DIRECTIVES = {
    *("note", "warning", "seealso", "versionadded", "versionchanged", "deprecated", "impl-detail"),
    *("attention", "caution", "tip", "important", "hint", "danger", "admonition", "describe"),
    *("function", "method", "class", "attribute", "data", "exception", "decorator", "module"),
    *("classmethod", "staticmethod", "abstractmethod", "coroutinefunction", "coroutinemethod"),
    *("decoratormethod", "c:function", "c:type", "c:macro", "c:member", "c:var", "c:struct"),
}
TEXT_ROLES = {"ref", "term", "dfn", "doc", "abbr", "emphasis", "strong"}  # read as their text
_RULE = re.compile(r"""([=\-~^"'`#*+<>:._])\1{2,}\s*""")
_DIRECTIVE = re.compile(r"\.\.\s+([\w:-]+)::")
_ROLE = re.compile(r":([\w:-]+):`([^`]*)`")
_PLAIN = re.compile(r"""[A-Z][A-Za-z0-9 ,;:'’"“”()\-–—]*[A-Za-z0-9)'"’”][.?!]""")


def held_out_files() -> list[Path]:
    """The documentation files that no genforge recipe trains on and no eval task reads."""
    from genforge.data.corpus import is_validation, read_documents
    from genforge.evals.everyday import PYDOCS_FILES

    if not DOCS.is_dir():
        sys.exit(f"the speech benchmark reads {DOCS}: make pydocs installs it")
    used = [DOCS / p for p in PYDOCS_FILES]
    return sorted(
        Path(d.source)
        for d in read_documents(["pydocs"])
        if is_validation(d, VAL_FRACTION)
        and d.source.endswith(".rst.txt")
        and not any(Path(d.source).is_relative_to(u) for u in used)
    )


def _blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """(indent, lines) of each run of non-blank lines."""
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.strip():
            block.append(line.rstrip())
        elif block:
            yield len(block[0]) - len(block[0].lstrip()), block
            block = []


def paragraphs(text: str) -> Iterator[str]:
    """The prose paragraphs of a reST document, lines joined; code, literal blocks, tables, lists,
    comments, non-prose directives and each section's first paragraph are left out."""
    skip_deeper_than: int | None = None  # inside a literal block or a skipped directive's body
    after_heading = False
    for indent, lines in _blocks(text):
        if skip_deeper_than is not None and indent > skip_deeper_than:
            continue
        skip_deeper_than = None
        first = lines[0].strip()
        if len(lines) >= 2 and _RULE.fullmatch(lines[-1].strip()):
            after_heading = True  # a title over its underline (and maybe under an overline)
            continue
        if directive := _DIRECTIVE.match(first):
            if directive[1] not in PROSE_DIRECTIVES:
                skip_deeper_than = indent
            continue
        if first.startswith(".."):  # a comment, a link target, a footnote
            skip_deeper_than = indent
            continue
        if lines[-1].endswith("::"):
            skip_deeper_than = indent  # a literal block follows
        if first.startswith((":", ">>>", "*", "-", "+", "|", "=", "#.")) or re.match(
            r"\d+\.", first
        ):
            continue  # field lists, doctests, lists, tables
        if after_heading:
            after_heading = False  # pydocs-chat's answer to "Tell me about <title>."
            continue
        if len(lines) > 1 and len(lines[1]) - len(lines[1].lstrip()) > indent:
            lines = lines[1:]  # a definition list's term, then its definition
        yield " ".join(line.strip() for line in lines)


def _role_text(match: re.Match) -> str:
    role, text = match[1], match[2]
    if role not in TEXT_ROLES:
        return "\0"  # code: the sentence is dropped
    text = re.sub(r"\s*<[^>]*>$", "", text).lstrip("~!")  # :ref:`title <target>`
    return re.sub(r"\s*\(.*\)$", "", text) if role == "abbr" else text


def clean(sentence: str) -> str | None:
    """`sentence` with its reST markup reduced to text; None if it holds code, literals, links or
    anything but plain words."""
    s = _ROLE.sub(_role_text, sentence)
    s = re.sub(r"\s*\[[^\]]*\]_", "", s)  # footnote references
    s = re.sub(r"`([^`<]+)`__?", r"\1", s)  # `a reference`_
    s = re.sub(r"(?<!\*)\*[\w.]+\*(?!\*)", "\0", s)  # *name*: a parameter's name, code
    s = re.sub(r"\*\*([^*]+)\*\*|\*([^*]+)\*", lambda m: m[1] or m[2], s)  # emphasis
    s = " ".join(s.replace("\\ ", "").split())
    if "\0" in s or "http" in s or not _PLAIN.fullmatch(s):
        return None
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or any(w.startswith("-") for w in words):
        return None  # too short, too long, a command-line option
    if re.search(r"\d\s*[-–—]|[-–—]\s*\d", s) or any(map(_code_like, words)):
        return None
    return s


def _code_like(word: str) -> bool:
    """x86, 3rd (spoken in more than one way), PyShell (an identifier), N or o (a variable)."""
    w = word.strip(",;:()'\"“”’.?!")
    digits, letters = re.search(r"\d", w), re.search(r"[A-Za-z]", w)
    return bool(digits and letters or re.search(r"[a-z][A-Z]", w) or w in _VARIABLES)


_VARIABLES = set("BCDEFGHJKLMNOPQRSTUVWXYZbcdefghijklmnopqrstuvwxyz")  # not "a", "A", "I"


def prose_sentences(files: list[Path]) -> dict[str, Path]:
    """Every distinct plain prose sentence of `files` (in file order), and the file it is from."""
    from genforge.speech.synthesize import sentences

    found: dict[str, Path] = {}
    for f in files:
        for paragraph in paragraphs(f.read_text(errors="replace")):
            for sentence in filter(None, map(clean, sentences(paragraph))):
                found.setdefault(sentence, f)
    return found


def shuffled(items: list[str], seed: int) -> list[str]:
    """A fixed order: --limit N takes the first N of the same list, so the cache is reused."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


# -- the word error rate ----------------------------------------------------------------------------

ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth"}
ORDINALS |= {"nine": "ninth", "twelve": "twelfth"}


def number_words(n: int) -> str:
    """An integer as words, without "and": 2026 -> "two thousand twenty six"."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + (f" {ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{ONES[n // 100]} hundred" + (f" {number_words(n % 100)}" if n % 100 else "")
    for value, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= value:
            high, rest = divmod(n, value)
            return f"{number_words(high)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError(n)


def _spoken(match: re.Match) -> str:
    whole, fraction, suffix = match[1], match[2], match[3]
    words = number_words(int(whole))
    if fraction:
        words += " point " + " ".join(ONES[int(d)] for d in fraction)
    if suffix:  # 21st -> twenty first
        *head, last = words.split()
        last = ORDINALS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
        words = " ".join([*head, last])
    return f" {words} "


def normalise(text: str, numbers: bool = True) -> str:
    """Lower case, punctuation and hyphens dropped (apostrophes inside words kept); numbers=True:
    digits as words, so that Piper's "three" heard as "3" is no error."""
    t = text.lower().replace("’", "'")
    if numbers:
        t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t).replace("%", " percent")
        t = re.sub(r"(\d+)(?:\.(\d+))?(st|nd|rd|th)?\b", _spoken, t)
    t = re.sub(r"[^a-z0-9']+", " ", t)
    t = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", t)  # quotes, not apostrophes
    return " ".join(t.split())


def join_compounds(words: list[str], other: list[str]) -> list[str]:
    """`words` with each pair of neighbours joined where `other` has the pair as one word: the
    same sounds written as one compound or two words ("newlines" / "new lines", "timeit" /
    "time it", "off-line" / "offline") are one spelling, not two errors."""
    vocabulary, out, i = set(other), [], 0
    while i < len(words):
        if i + 1 < len(words) and words[i] + words[i + 1] in vocabulary:
            out.append(words[i] + words[i + 1])
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


def word_errors(refs: list[str], heard: list[str], numbers: bool = True, compounds: bool = False):
    """jiwer's alignment of the normalised texts (its .wer is over all words of all sentences);
    compounds=True: `join_compounds` both ways first."""
    import jiwer

    refs = [normalise(r, numbers) for r in refs]
    heard = [normalise(h, numbers) for h in heard]
    if compounds:
        pairs = [(r.split(), h.split()) for r, h in zip(refs, heard, strict=True)]
        refs = [" ".join(join_compounds(r, h)) for r, h in pairs]
        heard = [" ".join(join_compounds(h, r)) for r, h in pairs]
    return jiwer.process_words(refs, heard)
