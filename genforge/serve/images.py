"""Text-to-image on the server: the image models it serves, loaded on first use and kept, and a
request's pictures drawn and turned into PNGs (genforge.image.sampling does the drawing).

Served: `--image-model` (default `shapes`), then the other shipped models that are installed. A
request may name only those, never a path: a client does not choose which folders the server reads.
Without the image extra (diffusers, pillow) none is served and the route says what to install.

The drawing runs on the compute thread, as every model's work does (genforge.compute: one OpenMP
team per process). One request is one job there, so chat answers streaming meanwhile wait until it
ends; the PNGs are written in a worker thread, off the compute thread and the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import re
from pathlib import Path

from genforge import compute
from genforge.errors import GenforgeError
from genforge.image.model import CONFIG, UNK, ImageConfig, is_image_model
from genforge.image.sampling import (
    DEFAULT_IMAGE_MODEL,
    SHIPPED,
    ImageGenerator,
    check_request,
    grid,
    png_bytes,
    resolve,
)
from genforge.serve.errors import APIError, bad_request
from genforge.serve.schemas import ImageRequest

EXTRA = "pip install 'genforge[image]'"
NO_EXTRA = (
    "Image generation needs the image extra (diffusers and pillow), which this server lacks; "
    f"install it with {EXTRA} and restart the server."
)
SCALES = (1, 2, 4, 8)  # the sizes offered: a model's own, enlarged by nearest pixel
# Values that pass check_request, so that one field at a time can be checked and named.
_PASSING = {"prompt": "x", "n": 1, "steps": 1, "guidance": 1.0, "sampler": "dpm"}


def available() -> bool:
    """Whether the image extra is installed (looked up, not imported: diffusers is slow to import)."""
    return all(importlib.util.find_spec(m) is not None for m in ("diffusers", "PIL"))


def installed_folder(name: str) -> Path | None:
    """The model folder `name` stands for, if it holds an image model."""
    try:
        folder = resolve(name)
    except GenforgeError:
        return None
    return folder if is_image_model(folder) else None


def picture_side(folder: Path) -> int | None:
    """The side in pixels of the pictures of the model in `folder`, from its config alone."""
    try:
        return ImageConfig(**json.loads((folder / CONFIG).read_text())).out_size
    except (OSError, ValueError, TypeError):
        return None


class ImageModels:
    """The image models a server serves; each is loaded on its first request and kept (a few MB)."""

    def __init__(self, default: str = DEFAULT_IMAGE_MODEL, *, enabled: bool | None = None):
        self.default = default
        self.enabled = available() if enabled is None else enabled
        self.loaded: dict[str, ImageGenerator] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def names(self) -> list[str]:
        """The served models: `default` first, then the shipped ones, those that are installed."""
        if not self.enabled:
            return []
        wanted = dict.fromkeys([self.default, *SHIPPED])
        return [n for n in wanted if n in self.loaded or installed_folder(n) is not None]

    def entries(self) -> list[dict]:
        """`/v1/models` entries: `owned_by` genforge, `genforge.kind` "image"."""
        out = []
        for name in self.names():
            gen = self.loaded.get(name)
            if gen is not None:
                side = gen.cfg.out_size
            else:
                folder = installed_folder(name)
                side = picture_side(folder) if folder else None
            out.append(
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "genforge",
                    "genforge": {"kind": "image", "loaded": gen is not None, "size": side},
                }
            )
        return out

    def not_found(self, name: str) -> APIError:
        served = ", ".join(self.names())
        if name in SHIPPED or name == self.default:
            why = f"The image model {name!r} is not installed on this server"
        else:
            why = f"The model {name!r} is not an image model served here"
        hint = (
            f"image models: {served}"
            if served
            else "it serves none: start it with genforge serve --image-model FOLDER (a model "
            "folder or a `genforge image train` run)"
        )
        return APIError(404, f"{why}; {hint}.", param="model", code="model_not_found")

    async def acquire(self, name: str | None) -> ImageGenerator:
        """The loaded model `name` (default: the server's), loading it on the compute thread."""
        if not self.enabled:
            raise APIError(404, NO_EXTRA, param="model", code="model_not_found")
        name = name or self.default
        if name in self.loaded:
            return self.loaded[name]
        if name not in self.names():
            raise self.not_found(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name not in self.loaded:
                try:
                    gen = await asyncio.to_thread(compute.run, ImageGenerator.load, name)
                except GenforgeError as e:
                    raise APIError(500, f"The image model {name!r} failed to load: {e}") from None
                self.loaded[name] = gen
        return self.loaded[name]


# -- a request ---------------------------------------------------------------------------------------


def check(body: ImageRequest) -> None:
    """Refuse what no model could answer, before one is loaded; each message names its field."""
    if body.response_format not in (None, "b64_json"):
        raise bad_request(
            f"response_format {body.response_format!r} is not supported: this server sends "
            'pictures in the answer, never as URLs; ask for "b64_json" (the default).',
            param="response_format",
        )
    if body.output_format not in (None, "png"):
        raise bad_request(
            f'output_format {body.output_format!r} is not supported; pictures come as "png".',
            param="output_format",
        )
    for field in _PASSING:
        try:
            check_request(**{**_PASSING, field: getattr(body, field)})
        except GenforgeError as e:
            raise bad_request(str(e), param=field) from None


def scale_for(size: str | None, side: int) -> int:
    """How many times a `side`-pixel picture is enlarged to be `size` ("WxH"; None or "auto": 1)."""
    if size in (None, "auto"):
        return 1
    match = re.fullmatch(r"(\d+)x(\d+)", size.strip())
    if match:
        w, h = int(match[1]), int(match[2])
        if w == h and w % side == 0 and w // side in SCALES:
            return w // side
    offered = ", ".join(f"{side * k}x{side * k}" for k in SCALES)
    raise bad_request(
        f"size {size!r} is not offered: this model draws {side}x{side} pictures, enlarged 1, 2, "
        f"4 or 8 times; give one of {offered}.",
        param="size",
    )


def read_as(gen: ImageGenerator, prompt: str) -> str | None:
    """The words the model reads of `prompt`, when it does not read them all (unknown words are left
    out, and words past its caption length are cut); None when it reads every word."""
    enc = gen.tokenizer.encode(prompt, add_special_tokens=False)
    kept = gen.cfg.max_words - 1  # after [BOS]
    if UNK not in enc.ids and len(enc.ids) <= kept:
        return None
    return " ".join(t for t, i in zip(enc.tokens[:kept], enc.ids[:kept], strict=True) if i != UNK)


def draw(gen: ImageGenerator, body: ImageRequest, seed: int, scale: int) -> list[str]:
    """The request's pictures as base64 PNGs, each enlarged `scale` times. Call it in a worker
    thread: the sampling is handed to the compute thread, the PNGs are written here."""
    pictures = compute.run(
        gen.generate, body.prompt, body.n, body.steps, body.guidance, seed, body.sampler
    )  # (n, H, W, C) uint8
    return [
        base64.b64encode(png_bytes(grid(p[None], cols=1, scale=scale))).decode() for p in pictures
    ]
