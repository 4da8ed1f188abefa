"""The web UI in a real browser (Debian's chromium, driven by Playwright) against a real server.

`genforge serve` runs in its own process on SmolLM2 and the test uses the page as a person would:
the answer streams in, Stop ends a long one and the page is usable again, a phone-sized screen has no
sideways scroll, the markdown renderer lets no HTML through, and the conversation survives a reload.
The server wants an API key, so every test starts with the page asking for it.
Screenshots of each test's last state go to tests/artifacts/, with the server's log.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ARTIFACTS
from playwright.sync_api import Page, expect

MODEL = "smollm2-135m-instruct"
API_KEY = "webui-test-key"  # the page must ask for it, keep it, and send it
HEALTH_TIMEOUT_S = 120
ANSWER_TIMEOUT_MS = 120_000
LAST_ANSWER = "#messages .message.assistant:last-child"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"genforge serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"genforge serve did not answer /health in {HEALTH_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def server_url(smollm2_path):
    """A `genforge serve` process on a free port, up once GET /health answers 200; its URL."""
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "webui-server.log"
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "genforge",
        "serve",
        "-m",
        MODEL,
        "--port",
        str(port),
        "--api-key",
        API_KEY,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def page(browser, server_url, request):
    """A fresh browser profile on the UI, past its API key prompt; fails the test on a JS error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{server_url}/")
    page.wait_for_selector("#settings[open]")  # the model list answered 401: the page asks
    assert page.is_visible("#key-hint")
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.type(API_KEY)
    page.click("#save-settings")
    _wait_for_models(page)  # the model list is asked for again, with the key
    yield page
    page.screenshot(path=ARTIFACTS / f"webui-{request.node.name.removeprefix('test_')}.png")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _wait_for_models(page: Page) -> None:
    page.wait_for_function("document.querySelector('#model').options.length > 0")


def _settings(page: Page, **fields: str) -> None:
    page.click("#open-settings")
    for name, value in fields.items():
        page.fill(f"#{name.replace('_', '-')}", value)
    page.click("#save-settings")
    page.wait_for_selector("#settings", state="hidden")


def _send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def _wait_for_answer(page: Page) -> str:
    page.wait_for_selector("#send", state="visible", timeout=ANSWER_TIMEOUT_MS)
    return page.text_content(f"{LAST_ANSWER} .content")


def _get(url: str) -> bytes:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=auth), timeout=10) as res:
        return res.read()


def _wait_until_idle(url: str) -> None:
    """Until /metrics shows nothing in flight and nothing running in the engine."""
    idle = {
        "genforge_requests_in_flight 0.0",
        'genforge_engine_requests{state="running"} 0.0',
        'genforge_engine_requests{state="waiting"} 0.0',
    }
    deadline = time.monotonic() + 30  # far less than the 2,000 tokens asked for would take
    while not idle <= set(_get(f"{url}/metrics").decode().splitlines()):
        assert time.monotonic() < deadline, "the server still generates after Stop"
        time.sleep(0.2)


def test_answer_streams_in_and_survives_a_reload(page, server_url):
    models = json.loads(_get(f"{server_url}/v1/models"))["data"]
    chat_models = [m["id"] for m in models if m["genforge"]["kind"] == "chat"]
    # the server lists an embedding model (and image models with the image extra): the UI hides them
    assert len(chat_models) < len(models)
    picker = page.locator("#model option").evaluate_all("els => els.map(e => e.value)")
    assert picker == chat_models
    assert page.input_value("#model") == MODEL
    _settings(page, temperature="0", max_tokens="40", system="You are a helpful assistant.")
    requests = []
    page.on("request", lambda r: requests.append(r))
    # Record every length the answer's text takes in the page, however fast it changes.
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const el = document.querySelector('#messages .message.assistant:last-child .content');
            const n = el ? el.textContent.length : 0;
            if (n && n !== window.lengths.at(-1)) window.lengths.push(n);
        }).observe(document.querySelector('#messages'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#prompt", "Write three sentences about the sea.")
    page.press("#prompt", "Shift+Enter")  # a new line, not a send
    page.keyboard.type("Keep them short.")
    question = "Write three sentences about the sea.\nKeep them short."
    assert page.input_value("#prompt") == question
    page.press("#prompt", "Enter")
    assert page.is_visible("#stop") and page.is_hidden("#send")
    assert page.input_value("#prompt") == ""
    answer = _wait_for_answer(page)

    assert answer.strip()
    lengths = page.evaluate("window.lengths")
    assert len(set(lengths)) >= 2, f"the answer did not stream in: lengths {lengths}"
    assert lengths[-1] == len(answer)
    stats = page.text_content(f"{LAST_ANSWER} .stats")
    assert re.fullmatch(r"\d+ tokens · [\d.]+ tok/s · first token [\d.]+ s", stats), stats
    assert page.get_attribute("#messages", "aria-busy") == "false"
    assert page.evaluate("document.activeElement.id") == "prompt"
    (chat,) = [r for r in requests if r.url.endswith("/v1/chat/completions")]
    body = json.loads(chat.post_data)
    assert body == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": 40,
    }

    assert chat.headers["authorization"] == f"Bearer {API_KEY}"

    page.reload()
    _wait_for_models(page)  # the key was kept: no prompt this time
    assert not page.is_visible("#settings")
    titles = page.locator("#conversations .conversation").all_text_contents()
    assert titles == ["Write three sentences about the sea."]  # the first line of the first message
    assert page.get_attribute("#conversations .conversation", "aria-current") == "true"
    assert page.text_content("#messages .message.user .content") == question
    assert page.text_content(f"{LAST_ANSWER} .content") == answer

    page.click("#new-chat")
    assert page.text_content("#messages").strip().startswith("Start a conversation")
    page.click("#conversations .conversation")
    assert page.text_content(f"{LAST_ANSWER} .content") == answer


def test_stop_ends_a_long_answer_and_the_page_stays_usable(page, server_url):
    _settings(page, temperature="0", max_tokens="2000")
    _send(page, "Write a very long essay about the history of Rome.")  # greedy: 300+ tokens
    page.wait_for_function(
        f"document.querySelector('{LAST_ANSWER} .content')?.textContent.length > 20"
    )
    page.click("#stop")
    page.wait_for_selector("#send", state="visible", timeout=5_000)
    assert page.is_hidden("#stop")
    stopped = page.text_content(f"{LAST_ANSWER} .content")
    time.sleep(1)
    assert page.text_content(f"{LAST_ANSWER} .content") == stopped, "text still arrives after Stop"
    assert page.text_content(f"{LAST_ANSWER} .stats").startswith("Stopped")
    assert page.text_content("#status") == "Stopped."
    # The aborted fetch closed the connection, and that cancels the generation on the server.
    _wait_until_idle(server_url)
    page.screenshot(path=ARTIFACTS / "webui-stopped.png")

    _settings(page, max_tokens="16")
    _send(page, "Say hello.")
    assert _wait_for_answer(page).strip()
    assert page.locator("#messages .message").count() == 4
    assert "tok/s" in page.text_content(f"{LAST_ANSWER} .stats")


# An answer a small model might write, with everything that could break the page or the layout.
TRICKY = f"""# Heading
Some **bold**, *italic* and `inline <b>code</b>`.
<img src=x onerror="window.hacked = 1"> [bad](javascript:window.hacked=2) [good](http://127.0.0.1:9/a_b_c)

```python
print("<script>window.hacked = 3</script>")  # {"a_very_long_line" * 12}
```

- one
- two

1. first
2. second

{"unbroken" * 30}
"""


def _seed_conversation(page: Page, content: str) -> None:
    conversation = {
        "id": "seeded",
        "title": "Seeded",
        "created": 0,
        "messages": [
            {"role": "user", "content": "Show me markdown."},
            {"role": "assistant", "content": content, "stats": "12 tokens"},
        ],
    }
    page.evaluate(
        """c => { localStorage.setItem('genforge.conversations', JSON.stringify([c]));
                  localStorage.setItem('genforge.current', c.id); }""",
        conversation,
    )
    page.reload()
    _wait_for_models(page)


def test_markdown_renders_without_letting_html_through(page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    _seed_conversation(page, TRICKY)
    answer = page.locator(f"{LAST_ANSWER} .content")
    assert answer.locator("h3").text_content() == "Heading"
    assert answer.locator("strong").text_content() == "bold"
    assert answer.locator("em").text_content() == "italic"
    assert answer.locator("p code").text_content() == "inline <b>code</b>"
    assert answer.locator("ul li").count() == 2 and answer.locator("ol li").count() == 2
    assert answer.locator("img, script, b").count() == 0
    assert page.evaluate("window.hacked") is None
    hrefs = answer.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert hrefs == ["http://127.0.0.1:9/a_b_c"]
    code = answer.locator(".code-block code").text_content()
    assert code.startswith('print("<script>window.hacked = 3</script>")')

    answer.locator(".copy-code").click()
    # The label changes once the clipboard's promise resolves: wait for it, do not read at once.
    expect(answer.locator(".copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == code
    page.click(f"{LAST_ANSWER} .copy-message")
    assert page.evaluate("navigator.clipboard.readText()") == TRICKY


def test_phone_screen_has_no_sideways_scroll(page):
    page.set_viewport_size({"width": 390, "height": 844})
    _seed_conversation(page, TRICKY)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    for box in page.locator("#messages .message, .composer, .bar").all():
        right = box.bounding_box()
        assert right["x"] + right["width"] <= 390
    assert page.is_hidden("#sidebar") and page.is_visible("#toggle-list")

    page.click("#toggle-list")
    assert page.is_visible("#sidebar")
    assert page.get_attribute("#toggle-list", "aria-expanded") == "true"
    page.screenshot(path=ARTIFACTS / "webui-phone-list.png")
    page.mouse.click(370, 400)  # beside the list: it closes
    assert page.is_hidden("#sidebar")
    page.click("#toggle-list")
    page.click("#conversations .conversation")
    assert page.is_hidden("#sidebar")

    _settings(page, max_tokens="16")
    _send(page, "Hi!")
    page.wait_for_selector("#send", state="visible", timeout=ANSWER_TIMEOUT_MS)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
