"""OCR (genforge/data/ocr.py): the real RapidOCR models on pictures of known text."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from text_pictures import png, require_ocr, scanned_pdf, text_picture, words

from genforge.data import ocr
from genforge.errors import GenforgeError

NOTE = [
    "The quartermaster keeps the",
    "spare lantern oil in locker 42.",
    "Zebra crossings glow purple.",
]


@pytest.fixture(scope="module")
def note_png() -> bytes:
    require_ocr()
    return png(NOTE)


def test_reads_the_lines_of_a_picture_in_order(note_png, tmp_path):
    started = time.perf_counter()
    text = ocr.read_text(note_png)
    lines = text.splitlines()
    assert [words(line) for line in lines] == [words(line) for line in NOTE], text
    print(
        f"a {text_picture(NOTE).size} picture: {time.perf_counter() - started:.2f}s (with the load)"
    )

    path = tmp_path / "note.png"
    path.write_bytes(note_png)
    assert ocr.read_text(path) == text  # a file, and a Pillow image, read the same
    assert ocr.read_text(text_picture(NOTE).convert("P")) == text


def test_a_picture_without_text_reads_as_nothing(note_png):
    Image = pytest.importorskip("PIL.Image")
    assert ocr.read_text(Image.new("RGB", (600, 400), "white")) == ""
    assert ocr.read_text(Image.new("L", (1, 1), 0)) == ""  # smaller than the detector's input


def test_boxes_on_one_line_read_left_to_right_then_down():
    def box(x, y, w=100, h=30):
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float32)

    # RapidOCR's order: by top edge, so a box a little higher on the right comes first
    boxes = [box(700, 40), box(20, 48), box(20, 120), box(400, 118)]
    texts = ("right half", "Left half", "second", "line ")
    assert ocr._lines(boxes, texts) == ["Left half right half", "second line"]


def test_a_scanned_pdf_page_is_rendered_and_read():
    require_ocr()
    data = scanned_pdf([NOTE, "A page with a text layer."])
    started = time.perf_counter()
    pages = ocr.read_pdf_pages(data, [1])
    print(f"one scanned A4 page: {time.perf_counter() - started:.2f}s")
    assert list(pages) == [1]
    assert words(pages[1]) == words(" ".join(NOTE)), pages[1]


def test_bytes_that_are_not_a_picture_say_so_in_one_sentence():
    pytest.importorskip("PIL")
    for data in (b"hello, world", b"", b"\x89PNG\r\n\x1a\n" + bytes(100)):
        with pytest.raises(ocr.NotAnImage, match=r"^the data is not an image that can be read; "):
            ocr.read_text(data)
    with pytest.raises(GenforgeError, match="cannot read .*nothing.png: No such file"):
        ocr.read_text("/nonexistent/nothing.png")


def test_without_the_extra_the_error_names_it(monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # import rapidocr now raises ImportError
    ocr._engine.cache_clear()
    try:
        with pytest.raises(
            GenforgeError, match=r"needs the ocr extra: pip install 'genforge\[ocr\]'"
        ):
            ocr.read_text(Image.new("RGB", (60, 40), "white"))
    finally:
        ocr._engine.cache_clear()  # the next test loads the real engine again
