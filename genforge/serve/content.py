"""Pictures in chat messages: `image_url` content parts become the text read in them (OCR).

The models served here read text; they do not see pictures. A picture's part is replaced by what
OCR reads in it (genforge/data/ocr.py), framed so the model knows where it came from, before the
chat is rendered or grounded in a document store: `[Text read from the image:\\n...]`.

Design choices:
- Data URLs only (`data:image/png;base64,...`): the server fetches nothing a client names.
- At most MAX_IMAGES pictures a request: each costs up to seconds of the compute thread, which
  generation shares.
- OCR runs in a worker thread (and there on the compute thread), never on the event loop.
- Forwarded requests never come here: an upstream server gets the picture itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from genforge.data import ocr
from genforge.serve.errors import bad_request
from genforge.serve.schemas import ChatRequest, ContentPart, Message

MAX_IMAGES = 16
DATA_URL = "data:image/png;base64,..."


def image_text(text: str) -> str:
    """What the model reads in place of a picture whose text is `text`."""
    if not text.strip():
        return "[An image in which no text could be read]"
    return f"[Text read from the image:\n{text.strip()}]"


def has_images(body: ChatRequest) -> bool:
    return any(p.type == "image_url" for _, _, p in _parts(body.messages))


async def read_images(body: ChatRequest) -> ChatRequest:
    """`body` with each message that holds pictures turned into text; a 400 for a picture that
    cannot be read (a URL that is not a data URL, bad base64, bytes that are not an image)."""
    pictures = [(i, j, p) for i, j, p in _parts(body.messages) if p.type == "image_url"]
    if not pictures:
        return body
    if len(pictures) > MAX_IMAGES:
        raise bad_request(
            f"a request may hold at most {MAX_IMAGES} images; this one has {len(pictures)}.",
            param="messages",
        )
    if not ocr.available():
        raise bad_request(
            f"this server cannot read images; install the ocr extra on it: {ocr.INSTALL}.",
            param="messages",
            code="ocr_unavailable",
        )
    data = {(i, j): _decode(p, f"messages[{i}].content[{j}].image_url") for i, j, p in pictures}
    texts = {}
    for (i, j), image in data.items():
        try:
            texts[i, j] = image_text(await asyncio.to_thread(ocr.read_text, image))
        except ocr.NotAnImage as e:
            where = f"messages[{i}].content[{j}]"
            raise bad_request(f"{where}: {e}", param=f"{where}.image_url") from None
    messages = list(body.messages)
    for i in {i for i, _ in texts}:
        parts = messages[i].content
        pieces = [texts.get((i, j), p) for j, p in enumerate(parts)]
        messages[i] = messages[i].model_copy(update={"content": _joined(pieces)})
    return body.model_copy(update={"messages": messages})


def _parts(messages: list[Message]):
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            for j, p in enumerate(m.content):
                yield i, j, p


def _joined(pieces: list[str | ContentPart]) -> str | list[ContentPart]:
    """Text parts run together (as OpenAI reads them), each picture's text a paragraph of its own.
    Parts of other kinds are kept as parts, for the chat to refuse."""
    if any(isinstance(p, ContentPart) and p.type != "text" for p in pieces):
        return [
            p if isinstance(p, ContentPart) else ContentPart(type="text", text=p) for p in pieces
        ]
    paragraphs: list[str] = []
    in_text = False  # the last paragraph is a run of text parts
    for p in pieces:
        if isinstance(p, str):
            paragraphs.append(p)
        elif in_text:
            paragraphs[-1] += p.text or ""
        else:
            paragraphs.append(p.text or "")
        in_text = not isinstance(p, str)
    return "\n\n".join(p.strip("\n") for p in paragraphs if p.strip())


def _decode(part: ContentPart, param: str) -> bytes:
    """The bytes of a picture sent as a data URL."""
    image = part.image_url
    url = image if isinstance(image, str) or image is None else image.url
    if not url:
        raise bad_request(
            f'an image_url part needs {{"image_url": {{"url": "{DATA_URL}"}}}}.', param=param
        )
    if url.lower().startswith(("http://", "https://")):
        raise bad_request(
            "images are not fetched from http(s) URLs; send the picture itself as a data URL "
            f"({DATA_URL}).",
            param=param,
        )
    header, comma, payload = url.partition(",")
    if not url.startswith("data:") or not comma or not header.endswith(";base64"):
        raise bad_request(f"an image's url must be a base64 data URL ({DATA_URL}).", param=param)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            f"the image's data URL holds invalid base64; send the file's bytes as {DATA_URL}.",
            param=param,
        ) from None
