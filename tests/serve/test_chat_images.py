"""Pictures in chat messages (`image_url` parts): their text, read by OCR, is what the model gets.
Black-box through the real server and the real default model; bad pictures are 400s that say why."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from conftest import API_KEY, MODEL
from text_pictures import png, require_ocr, words

from genforge.serve.content import MAX_IMAGES, image_text, read_images
from genforge.serve.rag import last_question
from genforge.serve.schemas import ChatRequest

SIGN = ["Platform 7 closes at midnight.", "Ask for Marguerite at the kiosk."]
QUESTION = "What does the sign say?"
REPEAT = "Repeat the text read from the image, word for word."


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def sign() -> tuple[str, str]:
    """(the sign as a data URL, the text OCR reads in it here)."""
    require_ocr()
    from genforge.data import ocr

    picture = png(SIGN)
    text = ocr.read_text(picture)
    assert words(text) == words(" ".join(SIGN)), text
    return data_url(picture), text


def with_image(url: str, text: str = QUESTION) -> list[dict]:
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": parts}]


def _post(server, body: dict) -> httpx.Response:
    headers = {"authorization": f"Bearer {API_KEY}"}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=180)


def test_the_model_reads_the_text_of_the_picture(server, client, sign):
    url, text = sign
    args = dict(model=MODEL, temperature=0, max_tokens=24)
    seen = client.chat.completions.create(messages=with_image(url, REPEAT), **args)
    # The model answers from the words in the picture: it repeats them.
    assert {"platform", "midnight", "marguerite"} <= set(words(seen.choices[0].message.content))
    # The same chat with the picture's text typed in, as the server frames it, is the same prompt
    # (the same token count; the answers are not compared: a prefix-cache hit computes them in
    # other shapes, and a near tie may round the other way).
    typed = [{"role": "user", "content": f"{REPEAT}\n\n{image_text(text)}"}]
    told = client.chat.completions.create(messages=typed, **args)
    assert seen.usage.prompt_tokens == told.usage.prompt_tokens
    plain = client.chat.completions.create(messages=[{"role": "user", "content": REPEAT}], **args)
    assert seen.usage.prompt_tokens > plain.usage.prompt_tokens + 10  # the sign's words are in it


def test_a_picture_in_a_grounded_question_is_read_before_retrieval(sign):
    url, text = sign
    body = ChatRequest(model=MODEL, messages=with_image(url, "Where is this?"), rag={})
    read = asyncio.run(read_images(body))
    _, question = last_question(read.messages)
    assert question == f"Where is this?\n\n{image_text(text)}"
    assert "marguerite" in words(question)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com/sign.png", "not fetched from http(s) URLs; send the picture itself"),
        ("data:image/png;base64,iVBOR%%%not-base64", "invalid base64"),
        ("data:image/png,rawbytes", "must be a base64 data URL"),
        (data_url(b"just some text, not a picture"), "not an image that can be read"),
        (data_url(b"\x89PNG\r\n\x1a\n" + bytes(64)), "not an image that can be read"),
    ],
)
def test_a_picture_that_cannot_be_read_is_a_400_saying_why(server, url, message):
    require_ocr()
    r = _post(server, {"model": MODEL, "messages": with_image(url), "max_tokens": 4})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["message"].endswith("."), err
    assert err["param"] == "messages[0].content[1].image_url"
    assert err["type"] == "invalid_request_error"


def test_too_many_pictures_or_none_in_a_part_are_400s(server):
    many = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}] * (
        MAX_IMAGES + 1
    )
    r = _post(server, {"model": MODEL, "messages": [{"role": "user", "content": many}]})
    assert r.status_code == 400 and f"at most {MAX_IMAGES} images" in r.json()["error"]["message"]
    empty = [{"role": "user", "content": [{"type": "image_url"}]}]
    r = _post(server, {"model": MODEL, "messages": empty})
    assert r.status_code == 400 and "needs" in r.json()["error"]["message"], r.text
    audio = [{"role": "user", "content": [{"type": "input_audio"}]}]
    r = _post(server, {"model": MODEL, "messages": audio})
    assert r.status_code == 400 and "input_audio" in r.json()["error"]["message"], r.text
