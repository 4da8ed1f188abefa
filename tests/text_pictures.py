"""Pictures of known text for the OCR tests: a PNG drawn with a large clear font, and a scanned-style
PDF whose page is that picture only (no text layer); and a one-pixel PNG for tests that need any
picture."""

from __future__ import annotations

import io
from pathlib import Path

from components import require, require_module

FONTS = [
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"),
]
SIZE = 40  # pixels: how large a clear screenshot's or scan's text is


def require_ocr() -> None:
    """Skip (fail under CI) unless the ocr extra is installed."""
    from genforge.data import ocr

    require("ocr", ocr.available(), "rapidocr and onnxruntime (the ocr extra)")


def dot_png() -> bytes:
    """A 1x1 PNG written by hand (no Pillow): a picture for tests that need one that is not text,
    such as FFmpeg reading it as a video with no sound."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def font(size: int = SIZE):
    image_font = require_module("PIL.ImageFont", "image")
    for path in FONTS:
        if path.is_file():
            return image_font.truetype(str(path), size)
    return image_font.load_default(size)  # Pillow's own scalable font


def text_picture(lines: list[str], width: int = 1100):
    """A white picture with `lines` in black, one under the other."""
    image = require_module("PIL.Image", "image")
    draw = require_module("PIL.ImageDraw", "image")
    face = font()
    picture = image.new("RGB", (width, 40 + 70 * len(lines)), "white")
    pen = draw.Draw(picture)
    for i, line in enumerate(lines):
        pen.text((30, 25 + 70 * i), line, font=face, fill="black")
    return picture


def png(lines: list[str]) -> bytes:
    out = io.BytesIO()
    text_picture(lines).save(out, format="PNG")
    return out.getvalue()


def scanned_pdf(pages: list[list[str] | str]) -> bytes:
    """A PDF with a page per item: lines of text drawn as a picture (no text layer, as a scan), or
    a string written as real text (a text layer)."""
    fpdf = require_module("fpdf")
    pdf = fpdf.FPDF()
    pdf.set_font("Helvetica", size=14)
    for page in pages:
        pdf.add_page()
        if isinstance(page, str):
            pdf.multi_cell(0, 10, page)
        else:
            pdf.image(io.BytesIO(png(page)), x=10, y=20, w=190)
    return bytes(pdf.output())


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: OCR's spacing and commas may differ a little."""
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()
