"""Document readers and the chunker: exact line spans (they are citations), token bounds, overlap."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from components import require_module
from hypothesis import given, settings
from hypothesis import strategies as st

from genforge.errors import GenforgeError
from genforge.rag.chunk import Chunk, chunk_blocks
from genforge.rag.documents import Block, DocumentError, kind_of, read_blocks


def words(text: str) -> int:
    return len(text.split())


def spans(blocks: list[Block] | list[Chunk]) -> list[tuple[int, int, str]]:
    return [(b.start, b.end, b.heading) for b in blocks]


def assert_cites_source(source: str, chunks: list[Chunk]) -> None:
    """Spans lie in the file, cover every non-blank line, and hold the lines the chunk shows."""
    lines = source.split("\n")
    covered = set()
    for c in chunks:
        assert c.text.strip()
        assert 1 <= c.start <= c.end <= len(lines)
        covered.update(range(c.start, c.end + 1))
        cited = lines[c.start - 1 : c.end]
        assert all(t in cited for t in c.text.split("\n") if t.strip()), c
    assert [n for n, line in enumerate(lines, 1) if line.strip() and n not in covered] == []


MARKDOWN = """\
# Guide

Intro paragraph
on two lines.

Install
-------

Run this:

```sh
# a comment, not a heading

pip install genforge
```

### Deep

Deep text.

# Other

Last words.
"""


def test_markdown_sections_fences_and_setext_headings():
    blocks = read_blocks(Path("guide.md"), MARKDOWN.encode())
    assert spans(blocks) == [
        (1, 4, "Guide"),
        (6, 9, "Guide > Install"),
        (11, 15, "Guide > Install"),
        (17, 19, "Guide > Install > Deep"),
        (21, 23, "Other"),
    ]
    assert blocks[0].text == "# Guide\n\nIntro paragraph\non two lines."
    assert blocks[2].text.startswith("```sh\n# a comment") and blocks[2].text.endswith("```")


def test_markdown_heading_without_text_opens_its_subsection_not_its_sibling():
    doc = "# A\n## A1\n\ntext a1\n\n## Lonely\n## Next\n\ntext next\n"
    blocks = read_blocks(Path("x.md"), doc.encode())
    assert spans(blocks) == [(1, 4, "A > A1"), (6, 6, "A > Lonely"), (7, 9, "A > Next")]
    assert blocks[0].text == "# A\n## A1\n\ntext a1"


RST = """\
=======
Manual
=======

Welcome text.

Setup
=====

Install it like this::

    pip install genforge

    genforge --help

Then go on.

Details
-------

Fine print.

Usage
=====

Use it.
"""


def test_rst_titles_by_adornment_order_and_literal_blocks():
    blocks = read_blocks(Path("manual.rst"), RST.encode())
    assert spans(blocks) == [
        (1, 5, "Manual"),
        (7, 14, "Manual > Setup"),
        (16, 16, "Manual > Setup"),
        (18, 21, "Manual > Setup > Details"),
        (23, 26, "Manual > Usage"),
    ]
    assert blocks[1].text.endswith("::\n\n    pip install genforge\n\n    genforge --help")
    assert kind_of(Path("docs/_sources/index.rst.txt")) == "rst"


HTML = """\
<!DOCTYPE html>
<html>
<head>
<title>Ignored title</title>
<style>h1 { color: red; }</style>
<script>document.write("<h1>not a heading</h1>");</script>
</head>
<body>
<h1>Guide</h1>
<p>Tools &amp; tips
for   everyone.</p>
<h2>Install</h2>
<pre>
pip install genforge

  genforge --help
</pre>
<ul><li>one</li><li>two <b>bold</b> words</li></ul>
<h1>Other</h1>
<div>Other text.</div>
<p>
  Closing   words.
</p>
</body>
</html>
"""


def test_html_sections_text_and_source_lines():
    blocks = read_blocks(Path("page.html"), HTML.encode())
    assert [(b.text, b.start, b.end, b.heading) for b in blocks] == [
        ("Guide\n\nTools & tips for everyone.", 9, 11, "Guide"),
        ("Install\n\npip install genforge\n\n  genforge --help", 12, 16, "Guide > Install"),
        ("one", 18, 18, "Guide > Install"),
        ("two bold words", 18, 18, "Guide > Install"),
        ("Other\n\nOther text.", 19, 20, "Other"),
        ("Closing words.", 22, 22, "Other"),  # the line of the text, not of its tag
    ]


def test_pdf_one_block_per_page_with_text():
    fpdf = require_module("fpdf")
    require_module("pypdf", "rag")
    pdf = fpdf.FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 10, "Apples grow on trees.\nThey are red.")
    pdf.add_page()  # no text: not a block
    pdf.add_page()
    pdf.cell(text="Pears are green.")
    blocks = read_blocks(Path("fruit.pdf"), bytes(pdf.output()))
    assert [(b.start, b.end, b.unit) for b in blocks] == [(1, 1, "page"), (3, 3, "page")]
    assert "Apples grow on trees." in blocks[0].text and "They are red." in blocks[0].text
    assert blocks[1].text == "Pears are green."
    chunks = chunk_blocks(blocks, words, max_tokens=16, overlap=0)
    assert {(c.start, c.end, c.unit) for c in chunks} == {(1, 3, "page")}  # short pages merge


def test_pdf_that_is_broken_locked_or_without_pypdf(monkeypatch):
    fpdf = require_module("fpdf")
    require_module("pypdf", "rag")
    junk = b"%PDF-1.7\n" + random.Random(0).randbytes(2000)
    with pytest.raises(DocumentError, match="PDF"):
        read_blocks(Path("broken.pdf"), junk)
    pdf = fpdf.FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.cell(text="Secret text.")
    pdf.set_encryption(owner_password="owner", user_password="user")
    with pytest.raises(DocumentError, match="encrypted"):
        read_blocks(Path("locked.pdf"), bytes(pdf.output()))
    monkeypatch.setitem(sys.modules, "pypdf", None)  # import pypdf now raises ImportError
    with pytest.raises(DocumentError, match=r"pip install 'genforge\[rag\]'"):
        read_blocks(Path("any.pdf"), junk)


PYTHON = '''\
"""Tools for numbers."""

import math
import os

# Doubles things; the comment belongs to the function.
@cache
def double(x):
    y = x * 2

    return y


class Counter:
    """Counts."""

    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1


TABLE = {
    "a": 1,

    "b": 2,
}

print(double(2))
'''


def test_python_definitions_comments_decorators_and_module_code():
    blocks = read_blocks(Path("tools.py"), PYTHON.encode())
    assert spans(blocks) == [
        (1, 1, ""),
        (3, 4, ""),
        (6, 11, "def double"),
        (14, 21, "class Counter"),
        (24, 28, ""),  # the blank line inside the dict does not split it
        (30, 30, ""),
    ]
    assert blocks[2].text.startswith("# Doubles things") and blocks[2].text.endswith("return y")


def test_python_long_class_is_split_into_methods():
    methods = "".join(f"\n    def m{i}(self):\n" + "        x = 1\n" * 8 for i in range(8))
    source = f'class Big:\n    """Many methods."""\n    size = 3\n{methods}'
    blocks = read_blocks(Path("big.py"), source.encode())
    assert spans(blocks)[:3] == [
        (1, 3, "class Big"),
        (5, 13, "class Big > def m0"),
        (15, 23, "class Big > def m1"),
    ]
    assert [b.heading for b in blocks[3:]] == [f"class Big > def m{i}" for i in range(2, 8)]


def test_python_that_does_not_parse_falls_back_to_the_generic_rule():
    broken = PYTHON.replace("def double(x):", "def double(x:")
    blocks = read_blocks(Path("broken.py"), broken.encode())
    assert (6, 11, "def double") in spans(blocks)
    assert (14, 21, "class Counter") in spans(blocks)
    assert_cites_source(broken, chunk_blocks(blocks, words, max_tokens=16, overlap=4))


def test_go_by_the_generic_rule():
    go = (
        'package store\n\nimport "fmt"\n\n// Add returns the sum.\nfunc Add(a, b int) int {\n'
        "\ts := a + b\n\n\treturn s\n}\n\ntype Store struct {\n\titems []int\n}\n"
    )
    blocks = read_blocks(Path("store.go"), go.encode())
    assert spans(blocks) == [(1, 1, ""), (3, 3, ""), (5, 10, "func Add"), (12, 14, "type Store")]


def test_jsonl_records_by_line():
    data = b'{"text": "first record", "id": 1}\n\n{"content": "second record"}\n{not json\n{"text": 7}\n'
    blocks = read_blocks(Path("data.jsonl"), data)
    assert [(b.text, b.start, b.end) for b in blocks] == [
        ("first record", 1, 1),
        ("second record", 3, 3),
        ("{not json", 4, 4),
        ('{"text": 7}', 5, 5),
    ]


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("blob.txt", b"abc\x00\x01\x02def", "binary"),
        ("notes.md", "café au lait".encode("latin-1"), "not UTF-8"),
        ("blank.txt", b"  \n\t\n", "empty"),
        ("only-script.html", b"<script>var x = 1;</script>", "no readable text"),
        ("slides.pptx", b"PK\x03\x04", r"unsupported file type \(\.pptx\)"),
    ],
)
def test_files_that_cannot_be_indexed_say_why(name, data, problem):
    with pytest.raises(DocumentError, match=problem):
        read_blocks(Path(name), data)


def test_byte_order_mark_and_crlf_do_not_shift_lines():
    blocks = read_blocks(Path("win.txt"), b"\xef\xbb\xbfone\r\n\r\ntwo\r\n")
    assert [(b.text, b.start, b.end) for b in blocks] == [("one", 1, 1), ("two", 3, 3)]


# --- chunk_blocks ------------------------------------------------------------------------------


def numbered_lines(n: int, width: int = 10) -> str:
    return "\n".join(" ".join(f"l{i}w{j}" for j in range(width)) for i in range(1, n + 1))


def test_small_blocks_of_one_section_pack_together_but_sections_never_mix():
    doc = "# A\n\nfirst\n\nsecond\n\n# B\n\nthird\n"
    chunks = chunk_blocks(read_blocks(Path("x.md"), doc.encode()), words)
    assert chunks == [
        Chunk("# A\n\nfirst\n\nsecond", 1, 5, "A"),
        Chunk("# B\n\nthird", 7, 9, "B"),
    ]


@pytest.mark.parametrize(
    ("overlap", "expected"),
    [(10, [(1, 3), (3, 5), (5, 7), (7, 9), (9, 10)]), (0, [(1, 3), (4, 6), (7, 9), (10, 10)])],
)
def test_overlap_repeats_whole_lines_and_moves_start_back(overlap, expected):
    source = numbered_lines(10)
    chunks = chunk_blocks(read_blocks(Path("x.txt"), source.encode()), words, 30, overlap)
    assert [(c.start, c.end) for c in chunks] == expected
    lines = source.split("\n")
    for c in chunks:
        assert c.text == "\n".join(lines[c.start - 1 : c.end])


def test_overlap_gives_way_to_a_long_line():
    source = "one two three four five\n" + " ".join(["long"] * 28)
    chunks = chunk_blocks(read_blocks(Path("x.txt"), source.encode()), words, 30, 10)
    assert [(c.start, c.end, words(c.text)) for c in chunks] == [(1, 1, 5), (2, 2, 28)]


def test_no_overlap_across_sections():
    doc = "# A\n\n" + numbered_lines(6) + "\n\n# B\n\n" + numbered_lines(6)
    chunks = chunk_blocks(read_blocks(Path("x.md"), doc.encode()), words, 30, 10)
    first_b = next(c for c in chunks if c.heading == "B")
    assert first_b.start == 10 and first_b.text.startswith("# B")


def test_an_enormous_line_is_cut_by_words_then_characters():
    line = " ".join(f"w{i}" for i in range(1000))
    chunks = chunk_blocks(read_blocks(Path("x.txt"), (line + "\nend\n").encode()), words, 50, 8)
    assert [(c.start, c.end) for c in chunks[:-1]] == [(1, 1)] * 20
    assert " ".join(c.text for c in chunks[:-1]) == line
    assert (chunks[-1].text, chunks[-1].start) == ("end", 2)  # a cut piece is not overlap
    giant = "x" * 1000  # one word; a character counter makes it 1000 tokens
    pieces = chunk_blocks([Block(giant, 7, 7)], len, 64, 0)
    assert "".join(c.text for c in pieces) == giant
    assert all(len(c.text) <= 64 and (c.start, c.end) == (7, 7) for c in pieces)


def test_each_line_is_counted_once():
    source = numbered_lines(300, width=7)
    calls = []
    chunk_blocks(
        read_blocks(Path("x.txt"), source.encode()), lambda s: calls.append(s) or words(s), 40, 12
    )
    assert len(calls) == 300


@pytest.mark.parametrize(("max_tokens", "overlap"), [(8, 0), (64, 32), (64, -1)])
def test_bad_chunk_settings(max_tokens, overlap):
    with pytest.raises(GenforgeError, match="chunk"):
        chunk_blocks([Block("text", 1, 1)], words, max_tokens, overlap)


def test_chunks_cite_every_line_of_markdown_and_python():
    for name, source in [("guide.md", MARKDOWN), ("tools.py", PYTHON), ("manual.rst", RST)]:
        for max_tokens, overlap in [(16, 0), (16, 7), (200, 32)]:
            blocks = read_blocks(Path(name), source.encode())
            assert_cites_source(source, chunk_blocks(blocks, words, max_tokens, overlap))


_LINE = st.one_of(
    st.just(""),
    st.just("```"),
    st.builds(lambda n, w: "#" * n + " " + w, st.integers(1, 6), st.sampled_from(["Intro", "Use"])),
    st.just("----"),
    st.builds(lambda n, w: " ".join([w] * n), st.integers(1, 120), st.sampled_from(["a", "  b"])),
)


@settings(max_examples=60, deadline=None, database=None)
@given(
    lines=st.lists(_LINE, min_size=1, max_size=60), max_tokens=st.integers(16, 80), data=st.data()
)
def test_chunks_never_exceed_max_tokens(lines, max_tokens, data):
    source = "\n".join(lines)
    if not source.strip():
        return
    overlap = data.draw(st.integers(0, max_tokens // 2 - 1))
    chunks = chunk_blocks(read_blocks(Path("r.md"), source.encode()), words, max_tokens, overlap)
    assert all(words(c.text) <= max_tokens for c in chunks)
    lines_ = source.split("\n")
    covered = {n for c in chunks for n in range(c.start, c.end + 1)}
    assert all(1 <= c.start <= c.end <= len(lines_) and c.text.strip() for c in chunks)
    assert all(n in covered for n, line in enumerate(lines_, 1) if line.strip())
