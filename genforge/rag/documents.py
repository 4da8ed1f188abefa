"""Read one file into structural blocks: sections and paragraphs, pages, definitions, records.

Design choices:
- A block is a unit a reader would not cut: a paragraph, a fenced or literal code block, a function,
  a PDF page, a JSONL record. The chunker packs blocks; it never has to guess at structure.
- Line numbers are citations (`path:start-end`), so every block keeps the exact source lines it
  came from; line-based blocks hold those lines verbatim.
- A heading's lines open the first block of its section (a heading with no text of its own opens
  its first subsection's), so the chunk that holds them shows the reader where it is.
- Parsing is forgiving: odd Markdown, broken HTML or Python that does not parse still yields
  blocks. Only a file that cannot be text at all raises `DocumentError`.
- Pictures (PNG, JPEG) and PDF pages without a text layer (scans) are read by OCR when the `ocr`
  extra is installed (genforge/data/ocr.py): a picture is one page. Without it pictures are skipped,
  and such pages left out with a note, both saying how to install it.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import warnings
from collections.abc import Container
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from genforge.data import ocr
from genforge.data.files import NotText, decode_text
from genforge.errors import GenforgeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    text: str  # the block's text as the user would read it
    start: int  # first line (1-based) in the source file, or the page number for PDFs
    end: int  # last line, inclusive (or last page)
    heading: str = ""  # section path "Guide > Install", or the enclosing definition "class Store"
    unit: str = "line"  # "line", or "page" for PDFs and pictures (a picture is page 1)


class DocumentError(GenforgeError):
    """Why a file was not indexed (one sentence, shown after the path in the ingest summary)."""


_CODE = ".py .pyi .js .mjs .cjs .ts .tsx .jsx .c .h .cc .cpp .cxx .hpp .hh .java .go .rs .rb .php"
_CODE += " .sh .bash .zsh .swift .kt .kts .scala .cs .lua .sql .toml .yaml .yml .json"
SUFFIXES: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".jsonl": "jsonl",
    **dict.fromkeys(_CODE.split(), "code"),
    **dict.fromkeys((".png", ".jpg", ".jpeg"), "image"),
}


def kind_of(path: Path) -> str | None:
    """The reader for `path` ("markdown", "code", ...), or None if it is not a supported type."""
    if path.name.lower().endswith(".rst.txt"):  # Sphinx ships its sources under this name
        return "rst"
    return SUFFIXES.get(path.suffix.lower())


def read_blocks(path: Path, data: bytes, notes: list[str] | None = None) -> list[Block]:
    """The structural blocks of the file `path` whose bytes are `data`, in order. What of a file
    that was indexed could not be read (pages left out) goes to `notes`, one sentence each."""
    kind = kind_of(path)
    if kind is None:
        raise DocumentError(
            f"unsupported file type ({path.suffix or 'no suffix'}); genforge reads text, Markdown, "
            "reST, HTML, PDF, JSONL, source code, and PNG and JPEG pictures (with the ocr extra)"
        )
    if kind == "pdf":
        return _pdf_blocks(data, [] if notes is None else notes)
    if kind == "image":
        return _image_blocks(data)
    text = _decode(data)
    if not text.strip():
        raise DocumentError("empty: it has no text to index")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if kind == "code" and path.suffix.lower() in (".py", ".pyi"):
        kind = "python"
    blocks = _READERS[kind](lines)
    if not blocks:
        raise DocumentError("empty: it has no readable text to index")
    return blocks


def _decode(data: bytes) -> str:
    try:
        return decode_text(data)
    except NotText as e:
        raise DocumentError(str(e)) from None


def _text(lines: list[str], start: int, end: int) -> str:
    return "\n".join(lines[start - 1 : end])


def _paragraphs(
    lines: list[str], lo: int, hi: int, glue: Container[int] = (), heading: str = ""
) -> list[Block]:
    return [Block(_text(lines, a, b), a, b, heading) for a, b in _runs(lines, lo, hi, glue)]


def _runs(lines: list[str], lo: int, hi: int, glue: Container[int] = ()) -> list[tuple[int, int]]:
    """(start, end) of the runs of non-blank lines in lo..hi; a blank line in `glue` does not end one."""
    runs, start, last = [], None, 0
    for n in range(lo, hi + 1):
        if lines[n - 1].strip():
            start = n if start is None else start
            last = n
        elif start is not None and n not in glue:
            runs.append((start, last))
            start = None
    if start is not None:
        runs.append((start, last))
    return runs


# --- sections (Markdown, reST, HTML) ---------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    path: tuple[str, ...]  # section titles, outer to inner
    is_heading: bool
    text: str = ""  # only where the text is not the source lines (HTML)


def _sectioned(lines: list[str], headings: list[tuple], glue: set[int]) -> list[_Unit]:
    """Units for `headings` [(start, end, level, title)] and the paragraph runs between them."""
    units: list[_Unit] = []
    stack: list[tuple[int, str]] = []
    cursor = 1
    for start, end, level, title in [*headings, (len(lines) + 1, 0, 0, "")]:
        path = tuple(t for _, t in stack)
        units += [_Unit(a, b, path, False) for a, b in _runs(lines, cursor, start - 1, glue)]
        if start > len(lines):
            break
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        units.append(_Unit(start, end, tuple(t for _, t in stack), True))
        cursor = end + 1
    return units


def _attach_headings(units: list[_Unit], lines: list[str] | None = None) -> list[Block]:
    """Blocks from units: each heading opens the first block of its section (or of a subsection)."""
    blocks: list[Block] = []

    def emit(group: list[_Unit]) -> None:
        start, end, path = group[0].start, group[-1].end, group[-1].path
        text = _text(lines, start, end) if lines is not None else "\n\n".join(u.text for u in group)
        blocks.append(Block(text, start, end, " > ".join(t for t in path if t)))

    pending: list[_Unit] = []
    for u in units:
        if pending and u.path[: len(pending[-1].path)] != pending[-1].path:
            emit(pending)  # a heading with nothing under it before its next sibling
            pending = []
        if u.is_heading:
            pending.append(u)
        else:
            emit([*pending, u])
            pending = []
    if pending:
        emit(pending)
    return blocks


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_LIST_OR_QUOTE = re.compile(r"^ {0,3}([-*+>]|\d+[.)])(\s|$)")


def _markdown_fenced(lines: list[str]) -> set[int]:
    """Line numbers inside fenced code (and YAML front matter): never headings, never split."""
    fenced: set[int] = set()
    if lines[0].strip() == "---":
        end = next(
            (n for n in range(2, len(lines) + 1) if lines[n - 1].strip() in ("---", "...")), 0
        )
        fenced.update(range(1, end + 1))
    fence = ""
    for n, line in enumerate(lines, 1):
        if n in fenced:
            continue
        if fence:
            fenced.add(n)
            s = line.strip()
            if s and set(s) == {fence[0]} and len(s) >= len(fence) and not line.startswith("    "):
                fence = ""
        elif m := _FENCE.match(line):
            if m.group(1)[0] == "`" and "`" in line[m.end() :]:
                continue  # ```x``` on one line is inline code, not a fence (CommonMark)
            fence = m.group(1)
            fenced.add(n)
    return fenced


def _markdown_units(lines: list[str]) -> list[_Unit]:
    fenced = _markdown_fenced(lines)
    headings: list[tuple[int, int, int, str]] = []
    taken: set[int] = set()  # lines already part of a heading
    for n, line in enumerate(lines, 1):
        if n in fenced:
            continue
        if m := _ATX.match(line):
            title = re.sub(r"(?:^|[ \t]+)#+$", "", m.group(2) or "").strip()  # closing #'s
            headings.append((n, n, len(m.group(1)), title))
            taken.add(n)
        elif _SETEXT.match(line) and n > 1 and _setext_title_line(lines, n - 1, fenced, taken):
            top = n - 1  # the whole paragraph above the underline is the title (CommonMark)
            while top > 1 and _setext_title_line(lines, top - 1, fenced, taken):
                top -= 1
            title = " ".join(lines[k - 1].strip() for k in range(top, n))
            headings.append((top, n, 1 if line.strip()[0] == "=" else 2, title))
            taken.update(range(top, n + 1))
    return _sectioned(lines, headings, fenced)


def _setext_title_line(lines: list[str], n: int, fenced: set[int], taken: set[int]) -> bool:
    line, plain = (
        lines[n - 1],
        n not in fenced and n not in taken and not lines[n - 1][:4].isspace(),
    )
    return (
        plain and bool(line.strip()) and not _LIST_OR_QUOTE.match(line) and not _SETEXT.match(line)
    )


_ADORNMENT = "=-~^\"'`#*+:._"
_DIRECTIVE = re.compile(r"^\s*\.\.\s+[\w:-]+::")


def _adornment(line: str) -> str:
    """The character of a reST title under/overline, or ""."""
    s = line.rstrip()
    return s[0] if len(s) >= 2 and s[0] in _ADORNMENT and s == s[0] * len(s) else ""


def _rst_units(lines: list[str]) -> list[_Unit]:
    # Title levels follow the order in which adornment styles first appear, as in docutils.
    headings, styles = [], []
    n, total = 1, len(lines)
    while n <= total:
        line, after_blank = lines[n - 1], n == 1 or not lines[n - 2].strip()
        nxt = lines[n] if n < total else ""
        ch = _adornment(line)
        if ch and after_blank and n + 2 <= total and nxt.strip() and _adornment(lines[n + 1]) == ch:
            style, title, end = (ch, True), nxt.strip(), n + 2  # overline, title, underline
        elif line.strip() and not line[0].isspace() and not ch and after_blank and _adornment(nxt):
            style, title, end = (_adornment(nxt), False), line.strip(), n + 1
        else:
            n += 1
            continue
        if len(lines[end - 1].rstrip()) < len(title):
            n += 1  # too short an underline: a paragraph followed by a transition, say
            continue
        if style not in styles:
            styles.append(style)
        headings.append((n, end, styles.index(style) + 1, title))
        n = end + 1
    return _sectioned(lines, headings, _rst_literal_glue(lines))


def _rst_literal_glue(lines: list[str]) -> set[int]:
    """Blank lines inside literal blocks (after `::`) and directive bodies: they keep them whole."""
    glue: set[int] = set()
    for i, line in enumerate(lines):
        if not (line.rstrip().endswith("::") or _DIRECTIVE.match(line)):
            continue
        base, last = len(line) - len(line.lstrip()), 0
        for k in range(i + 1, len(lines)):
            if lines[k].strip():
                if len(lines[k]) - len(lines[k].lstrip()) <= base:
                    break
                last = k
        glue.update(k + 1 for k in range(i + 1, last) if not lines[k].strip())
    return glue


_SKIP = {"script", "style", "noscript", "template", "head"}
_BLOCK_TAGS = "p li pre blockquote tr div section article dt dd ul ol dl table thead tbody tfoot"
_BLOCK_TAGS += " caption header footer nav main aside figure figcaption form fieldset hr address"
_BLOCK = set(f"{_BLOCK_TAGS} details summary body html h1 h2 h3 h4 h5 h6".split())


class _HTMLUnits(HTMLParser):
    """Collects text units with the source lines where their text begins and ends."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.units: list[_Unit] = []
        self.stack: list[tuple[int, str]] = []  # open sections: (level, title)
        self.skipping: list[str] = []
        self.heading = 0  # level of the heading being read, or 0
        self.pre = False
        self._reset()

    def _reset(self) -> None:
        self.lines: list[list[str]] = [[]]  # text pieces per line (<br> starts a new line)
        self.first = self.last = 0

    def flush(self) -> None:
        lines = ["".join(pieces) for pieces in self.lines]
        if self.pre:
            while lines and not lines[0].strip():
                lines.pop(0)
            text = "\n".join(lines).rstrip()
        else:
            text = "\n".join(s for s in (" ".join(line.split()) for line in lines) if s)
        if text and self.heading:
            while self.stack and self.stack[-1][0] >= self.heading:
                self.stack.pop()
            self.stack.append((self.heading, " ".join(text.split())))
        if text:
            path = tuple(t for _, t in self.stack)
            self.units.append(_Unit(self.first, self.last, path, bool(self.heading), text))
        self._reset()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "body" and "head" in self.skipping:
            self.skipping.remove("head")  # </head> is optional
        if tag in _SKIP:
            self.skipping.append(tag)
        elif tag == "br":
            self.lines.append([])
        elif tag in ("td", "th") and "".join(self.lines[-1]).strip():
            self.lines[-1].append(" | ")
        elif tag in _BLOCK and not self.heading:
            self.flush()
            self.heading = int(tag[1]) if re.fullmatch(r"h[1-6]", tag) else 0
            self.pre = tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in self.skipping:
            del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag) :]
        elif tag in _BLOCK and (not self.heading or tag == f"h{self.heading}"):
            self.flush()
            self.heading, self.pre = 0, False

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if data.strip():
            line = self.getpos()[0]  # where `data` begins; entities decode adding no newlines
            head = len(data) - len(data.lstrip())
            self.first = self.first or line + data.count("\n", 0, head)
            self.last = line + data.count("\n", 0, len(data.rstrip()))
        elif not self.pre and not self.lines[-1]:
            return  # whitespace before a block's text; between inline elements it is a space
        parts = data.split("\n") if self.pre else [data]
        self.lines[-1].append(parts[0])
        self.lines += [[p] for p in parts[1:]]


def _html_blocks(lines: list[str]) -> list[Block]:
    parser = _HTMLUnits()
    parser.feed("\n".join(lines))
    parser.close()
    parser.flush()
    return _attach_headings(parser.units)


# --- pages, records, code ----------------------------------------------------------------------


def _pdf_blocks(data: bytes, notes: list[str]) -> list[Block]:
    try:
        import pypdf
    except ImportError:
        raise DocumentError("reading PDFs needs pypdf: pip install 'genforge[rag]'") from None
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError("an encrypted PDF; save a copy without a password to index it")
        pages = list(reader.pages)
    except DocumentError:
        raise
    except Exception as e:  # pypdf raises many types on damaged files
        raise DocumentError(f"not a readable PDF ({type(e).__name__}: {e})") from None
    texts, blank = {}, []
    for number, page in enumerate(pages, 1):
        try:
            texts[number] = (page.extract_text() or "").strip()
        except Exception as e:  # one damaged page should not lose the others
            log.warning("page %d: no text extracted (%s)", number, e)
            continue
        if not texts[number]:
            blank.append(number)
    if blank and ocr.available():  # no text layer: a scan, or a page of pictures
        texts.update(_ocr_pages(data, blank, notes))
    elif blank and len(blank) < len(texts):
        notes.append(f"pages without a text layer were not read; {ocr.INSTALL} reads them")
    blocks = [Block(t, n, n, unit="page") for n, t in sorted(texts.items()) if t]
    if blocks:
        return blocks
    if blank and not ocr.available():
        raise DocumentError(f"no text layer (scanned pages?); {ocr.INSTALL} reads them")
    raise DocumentError("no extractable text" + (" (nor any found by OCR)" if blank else ""))


def _ocr_pages(data: bytes, numbers: list[int], notes: list[str]) -> dict[int, str]:
    """The pages' text read by OCR; on failure none, and a note (the text layer is kept)."""
    try:
        return {n: t.strip() for n, t in ocr.read_pdf_pages(data, numbers).items()}
    except GenforgeError as e:
        notes.append(f"pages without a text layer were not read: {str(e).rstrip('.')}")
    except Exception as e:  # pdfium failing on a file pypdf could open
        notes.append(f"pages without a text layer could not be rendered ({type(e).__name__})")
    return {}


def _image_blocks(data: bytes) -> list[Block]:
    """A picture's text, read by OCR, as one page."""
    if not ocr.available():
        raise DocumentError(f"a picture; reading its text needs the ocr extra: {ocr.INSTALL}")
    try:
        text = ocr.read_text(data).strip()
    except ocr.NotAnImage:
        raise DocumentError("not a readable picture (damaged, or not PNG/JPEG inside)") from None
    except GenforgeError as e:  # the engine could not load
        raise DocumentError(str(e).rstrip(".")) from None
    if not text:
        raise DocumentError("no text found in the picture")
    return [Block(text, 1, 1, unit="page")]


def _jsonl_blocks(lines: list[str]) -> list[Block]:
    blocks = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        try:
            record = json.loads(text) if text else None
        except (ValueError, RecursionError):
            record = None  # a malformed record is still worth finding as plain text
        if isinstance(record, dict):
            field = (record.get(k) for k in ("text", "content", "body"))
            text = next((f for f in field if isinstance(f, str)), line).strip()
        if text:
            blocks.append(Block(text, n, n))
    return blocks


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_SPLIT_CLASS_LINES = 60  # a longer class is indexed method by method


def _python_blocks(lines: list[str]) -> list[Block] | None:
    """Definitions and module code by `ast`; None if the file does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings about the user's escapes
            tree = ast.parse("\n".join(lines))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return _python_region(lines, tree.body, 1, len(lines), "")


def _python_region(
    lines: list[str], body: list[ast.stmt], lo: int, hi: int, outer: str
) -> list[Block]:
    """Blocks for lines lo..hi holding `body`: a block per definition, other code split at blank
    lines between statements (a blank line inside a statement does not split it)."""
    glue = {n for s in body for n in range(s.lineno + 1, s.end_lineno or s.lineno)}
    blocks, cursor = [], lo
    for node in body:
        if not isinstance(node, _DEFS):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        while start > cursor and lines[start - 2].lstrip().startswith("#"):
            start -= 1  # the comment right above a definition is about it
        blocks += _paragraphs(lines, cursor, start - 1, glue, outer)
        name = f"class {node.name}" if isinstance(node, ast.ClassDef) else f"def {node.name}"
        heading = f"{outer} > {name}" if outer else name
        end = node.end_lineno or node.lineno
        if isinstance(node, ast.ClassDef) and end - start >= _SPLIT_CLASS_LINES:
            blocks += _python_region(lines, node.body, start, end, heading)
        else:
            blocks.append(Block(_text(lines, start, end), start, end, heading))
        cursor = end + 1
    return blocks + _paragraphs(lines, cursor, hi, glue, outer)


_MODIFIERS = r"(?:(?:export|default|pub(?:\([\w:]+\))?|public|private|protected|internal|static|async|abstract|final|sealed|open|override|inline|extern|unsafe|data|const)\s+)*"
_KEYWORD = r"(func|function\*?|fn|def|class|struct|impl|interface|type|enum|trait|module|object|namespace|mod|union|protocol|extension|macro_rules!)"
_DEFINITION = re.compile(_MODIFIERS + _KEYWORD + r"\s+(?:\([^)]*\)\s*)?([\w$.:]*)")
_C_FUNCTION = re.compile(r"^[A-Za-z_][\w:<>,*&\s]*?\b([A-Za-z_]\w*)\s*\([^;]*$")  # int add(int a) {
_CLOSER = re.compile(r"^(?:[}\])]|end\b|fi\b|done\b|esac\b)")
_COMMENT = ("//", "/*", "*", "#", "--", "@")


def _code_blocks(lines: list[str]) -> list[Block]:
    """Any language: blocks break at a blank line before a top-level line (column 0, not a
    closing bracket), so a definition's body stays whole and each definition starts a block."""
    glue: set[int] = set()
    following = ""  # the next non-blank line below
    for n in range(len(lines), 0, -1):
        if lines[n - 1].strip():
            following = lines[n - 1]
        elif following and (following[0] in " \t" or _CLOSER.match(following)):
            glue.add(n)
    return [
        Block(_text(lines, a, b), a, b, _code_heading(lines[a - 1 : b]))
        for a, b in _runs(lines, 1, len(lines), glue)
    ]


def _code_heading(lines: list[str]) -> str:
    """The definition a block opens with, after its comments ("func Add"), or ""."""
    for i, line in enumerate(lines):
        if line.lstrip().startswith(_COMMENT) or line[:1] in " \t":
            continue
        if m := _DEFINITION.match(line):
            return f"{m.group(1)} {m.group(2).rstrip(':')}".strip()
        body = line.rstrip().endswith("{") or "".join(lines[i + 1 : i + 2]).startswith("{")
        if body and (m := _C_FUNCTION.match(line)):
            return f"{m.group(1)}()"
        return ""
    return ""


_READERS = {
    "text": lambda lines: _paragraphs(lines, 1, len(lines)),
    "markdown": lambda lines: _attach_headings(_markdown_units(lines), lines),
    "rst": lambda lines: _attach_headings(_rst_units(lines), lines),
    "html": _html_blocks,
    "jsonl": _jsonl_blocks,
    "python": lambda lines: _python_blocks(lines) or _code_blocks(lines),
    "code": _code_blocks,
}
