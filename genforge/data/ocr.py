"""Text read out of pictures (OCR): screenshots, scans, photos of pages, PDF pages without a text
layer. The models read text; they do not describe what a picture shows.

Design choices:
- RapidOCR: PP-OCRv6 detection and recognition (Chinese and English, digits and punctuation) on
  onnxruntime, with the model files its wheel carries, given by path: RapidOCR never reaches for its
  download code. It is handed pixels, never a string, so it never fetches a URL either. No angle
  classifier (see `_engine`): text must be upright.
- One engine per process, loaded on first use. The work runs on genforge's compute thread, as every
  model's does (genforge/compute.py): OCR and generation take turns on the cores rather than fight.
- Output is lines in reading order: text boxes whose heights overlap are one line, read left to
  right; lines top to bottom. The boxes carry no layout, so two columns are read across.
- PDF pages are rendered by pdfium (pypdfium2), which is not thread-safe: one page at a time per
  process, under a lock; the reading itself is outside it.
- Optional: the `ocr` extra (rapidocr, onnxruntime, pypdfium2).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from genforge import compute
from genforge.errors import GenforgeError

if TYPE_CHECKING:
    from PIL import Image

INSTALL = "pip install 'genforge[ocr]'"
# The model files inside the rapidocr wheel (pyproject pins its minor version to these names).
MODELS = {"Det": "PP-OCRv6_det_small.onnx", "Rec": "PP-OCRv6_rec_small.onnx"}
PDF_SCALE = 2.0  # PDF pages are rendered at 144 dpi: 10-point text is 20 pixels high
MAX_SIDE = 2000  # ...but no side over this many pixels (RapidOCR shrinks larger images anyway)
_PDFIUM = threading.Lock()


class NotAnImage(GenforgeError):
    """Bytes that are not a picture Pillow can read (one sentence, for the user)."""


def available() -> bool:
    """Whether the `ocr` extra is installed (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in ("rapidocr", "onnxruntime"))


def read_text(image: bytes | str | os.PathLike | Image.Image) -> str:
    """The text in a picture (its encoded bytes, a file, or a Pillow image): one line of text per
    line in the picture, top to bottom; "" when it holds none."""
    picture = _picture(image)
    return compute.run(_recognise, picture)


def read_pdf_pages(data: bytes, pages: Iterable[int]) -> dict[int, str]:
    """The text of these pages (1-based) of the PDF `data`, each rendered and read as a picture."""
    try:
        import pypdfium2
    except ImportError:
        raise GenforgeError(f"rendering PDF pages needs pypdfium2: {INSTALL}") from None
    with _PDFIUM:
        pdf = pypdfium2.PdfDocument(data)
    try:
        return {number: read_text(_render(pdf, number)) for number in pages}
    finally:
        with _PDFIUM:
            pdf.close()


def _render(pdf, number: int) -> Image.Image:
    with _PDFIUM:
        page = pdf[number - 1]
        width, height = page.get_size()  # in points
        bitmap = page.render(scale=min(PDF_SCALE, MAX_SIDE / max(width, height, 1)))
        picture = bitmap.to_pil().convert("RGB")  # a copy: the bitmap's memory is freed below
        bitmap.close()
        page.close()
    return picture


def _picture(image: bytes | str | os.PathLike | Image.Image) -> Image.Image:
    """`image` decoded, upright (EXIF orientation), in a mode RapidOCR takes."""
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        picture = image
    else:
        if isinstance(image, str | os.PathLike):
            try:
                image = Path(image).read_bytes()
            except OSError as e:
                raise GenforgeError(f"cannot read {image}: {e.strerror}.") from None
        try:
            picture = Image.open(io.BytesIO(image))
            picture.load()
        except Image.DecompressionBombError:
            raise NotAnImage(
                "the image has too many pixels to read (over "
                f"{2 * Image.MAX_IMAGE_PIXELS // 1_000_000} million); scale it down first."
            ) from None
        except Exception:  # Pillow raises several types on bytes that are not a picture
            raise NotAnImage(
                "the data is not an image that can be read; send a PNG, JPEG, WebP, GIF or BMP file."
            ) from None
    picture = ImageOps.exif_transpose(picture)
    if picture.mode not in ("RGB", "RGBA", "L"):
        alpha = "A" in picture.getbands() or "transparency" in picture.info
        picture = picture.convert("RGBA" if alpha else "RGB")
    return picture


def _recognise(picture: Image.Image) -> str:
    result = _engine()(picture)
    if not result.txts:
        return ""
    return "\n".join(_lines(result.boxes, result.txts))


def _lines(boxes, texts: tuple[str, ...]) -> list[str]:
    """Text boxes (4 corner points each) grouped into lines: a box joins the line whose vertical
    span holds its middle; lines top to bottom, boxes in a line left to right."""
    spans = sorted(
        (float(b[:, 1].min()), float(b[:, 1].max()), float(b[:, 0].min()), t.strip())
        for b, t in zip(boxes, texts, strict=True)
        if t.strip()
    )
    lines: list[list[tuple[float, float, float, str]]] = []
    for span in spans:
        middle = (span[0] + span[1]) / 2
        line = next((ln for ln in lines if ln[0][0] <= middle <= ln[0][1]), None)
        if line is None:
            lines.append([span])
        else:
            line.append(span)
    return [" ".join(t for *_, t in sorted(line, key=lambda s: s[2])) for line in lines]


@functools.cache
def _engine():
    """The RapidOCR engine, made once: on the compute thread, so never twice at a time."""
    try:
        import rapidocr
    except ImportError:
        raise GenforgeError(f"reading text in images needs the ocr extra: {INSTALL}") from None
    folder = Path(rapidocr.__file__).parent / "models"
    paths = {section: folder / name for section, name in MODELS.items()}
    if missing := [p.name for p in paths.values() if not p.is_file()]:
        raise GenforgeError(
            f"this rapidocr ({getattr(rapidocr, '__version__', '?')}) lacks the model "
            f"{missing[0]}; {INSTALL} installs the version that carries it."
        )
    params: dict = {f"{section}.model_path": str(p) for section, p in paths.items()}
    params["Global.log_level"] = "error"  # it logs each model's path at "info"
    # No angle classifier: on a dense scanned page it turned upright lines over and read them as
    # garbage (a page of 45 lines: 86 % of words right with it, 100 % without). Text must be upright.
    params["Global.use_cls"] = False
    # onnxruntime has its own thread pool; it follows OMP_NUM_THREADS as torch does.
    if (threads := os.environ.get("OMP_NUM_THREADS", "")).isdigit() and int(threads) > 0:
        params["EngineConfig.onnxruntime.intra_op_num_threads"] = int(threads)
    try:
        return rapidocr.RapidOCR(params=params)
    except ImportError as e:  # onnxruntime, or one of rapidocr's own dependencies
        raise GenforgeError(f"OCR cannot start ({e}); {INSTALL}.") from None
