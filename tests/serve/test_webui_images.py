"""The web UI's Images view in a real browser (Debian's chromium, driven by Playwright) against a
real server whose image model is a tiny run trained here: type a caption, Generate, the grid shows
the pictures, enlarged and pixelated; a bad request's message shows in the page. Screenshots go to
tests/artifacts/.
"""

from __future__ import annotations

import json

import pytest
from conftest import API_KEY, ARTIFACTS

pytest.importorskip("playwright.sync_api")


@pytest.fixture
def page(browser, image_server, request):
    """A fresh profile on the UI, past its API key prompt, in the Images view; fails the test on a
    JavaScript error or an alert."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors, dialogs = [], []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{image_server.url}/")
    page.wait_for_selector("#settings[open]")
    page.fill("#api-key", API_KEY)
    page.click("#save-settings")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.click("#view-images")
    page.wait_for_function("document.querySelector('#image-model').options.length > 0")
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"webui-images-{request.node.name.removeprefix('test_')}.png")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not dialogs, f"the page opened dialogs: {dialogs}"


def test_a_caption_becomes_a_grid_of_pixelated_pictures(page, image_run, tiny_model_dir):
    assert page.is_visible("#images") and page.is_hidden("#chat-view") and page.is_hidden("#agents")
    assert page.get_attribute("#view-images", "aria-pressed") == "true"
    assert page.evaluate("document.activeElement.id") == "image-prompt"
    assert page.is_hidden("#model")  # the header's picker is the chat's
    chat = page.locator("#model option").evaluate_all("els => els.map(e => e.value)")
    assert str(tiny_model_dir) in chat and str(image_run) not in chat  # images are not chat
    assert page.input_value("#image-model") == str(image_run)

    requests = []
    page.on("request", lambda r: requests.append(r))
    page.fill("#image-count", "3")
    page.fill("#image-seed", "5")
    page.fill("#image-steps", "2")
    page.fill("#image-guidance", "2.5")
    page.fill("#image-prompt", "two red circles")
    page.press("#image-prompt", "Enter")
    page.wait_for_function("document.querySelectorAll('#image-grid img').length === 3")
    page.wait_for_function(
        "document.querySelector('#image-grid').getAttribute('aria-busy') === 'false'"
    )

    (sent,) = [r for r in requests if r.url.endswith("/v1/images/generations")]
    assert json.loads(sent.post_data) == {
        "model": str(image_run),
        "prompt": "two red circles",
        "n": 3,
        "steps": 2,
        "guidance": 2.5,
        "response_format": "b64_json",
        "seed": 5,
    }
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    shown = page.locator("#image-grid img").evaluate_all(
        """els => els.map(e => ({
            natural: [e.naturalWidth, e.naturalHeight],
            shown: e.getBoundingClientRect().width,
            rendering: getComputedStyle(e).imageRendering,
            alt: e.alt,
            png: e.src.startsWith('data:image/png;base64,'),
        }))"""
    )
    assert [s["natural"] for s in shown] == [[32, 32]] * 3
    assert all(s["shown"] >= 4 * 32 and s["rendering"] == "pixelated" and s["png"] for s in shown)
    assert [s["alt"] for s in shown] == [
        f"Picture {i + 1}: two red circles (seed {5 + i})" for i in range(3)
    ]
    assert "3 pictures" in page.text_content("#image-status")
    assert "seed 5" in page.text_content("#image-status")
    assert page.is_hidden("#image-error") and page.is_hidden("#image-note")

    page.set_viewport_size({"width": 390, "height": 800})  # a phone: no sideways scroll
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate("document.querySelector('#images').scrollWidth <= window.innerWidth")


def test_errors_and_unknown_words_show_in_the_page(page):
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.fill("#image-steps", "2")
    page.fill("#image-count", "17")  # the field's own bound: the browser holds the form back
    page.fill("#image-prompt", "two red circles")
    page.click("#image-generate")
    assert page.evaluate("document.querySelector('#image-count').validity.rangeOverflow")
    page.fill("#image-count", "1")
    page.fill("#image-prompt", "")  # the server's own check: its message shows in the page
    page.click("#image-generate")
    page.wait_for_selector("#image-error", state="visible")
    assert "the prompt is empty" in page.text_content("#image-error")
    assert page.locator("#image-grid img").count() == 0
    assert page.is_enabled("#image-generate")
    sent = [u for u in requests if u.endswith("/v1/images/generations")]
    assert len(sent) == 1  # the empty prompt's: the refused count sent nothing

    page.fill("#image-prompt", "two red <b>zebras</b>")
    page.click("#image-generate")
    page.wait_for_selector("#image-grid img")
    assert page.is_hidden("#image-error")
    note = page.text_content("#image-note")
    assert '"<b>zebras</b>"' in note or '"zebras"' in note
    assert page.locator("#images b").count() == 0  # the prompt's words are text, never HTML
