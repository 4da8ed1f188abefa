"""The web UI's Agents view in a real browser (Debian's chromium, driven by Playwright) against the
session's real server: pick the tools, run a task, watch the steps stream in, open a tool call.
Model text and tool results (untrusted) never become HTML. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import API_KEY, ARTIFACTS, MODEL

pytest.importorskip("playwright.sync_api")

RUN_TIMEOUT_MS = 120_000
TASK = "Compute sqrt(2) * 17 with the calculator."  # greedy, the tiny model writes code for it


@pytest.fixture
def page(browser, server, request):
    """A fresh profile on the UI, past its API key prompt, with greedy short runs; fails the test
    on a JavaScript error or an alert."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors, dialogs = [], []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{server.url}/")
    page.wait_for_selector("#settings[open]")
    page.fill("#api-key", API_KEY)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "96")
    page.click("#save-settings")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"webui-agents-{request.node.name.removeprefix('test_')}.png")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not dialogs, f"the page opened dialogs: {dialogs}"


def _open_agents(page) -> list[str]:
    page.click("#view-agents")
    assert page.is_visible("#agents") and page.is_hidden("#chat-view") and page.is_hidden("#docs")
    assert page.get_attribute("#view-agents", "aria-pressed") == "true"
    assert page.evaluate("document.activeElement.id") == "agent-task"
    page.wait_for_selector("#agent-tools input")
    return page.locator("#agent-tools input").evaluate_all("els => els.map(e => e.value)")


def test_a_run_streams_in_and_a_call_opens(page):
    assert _open_agents(page) == ["calculator", "python"]
    page.uncheck("#agent-tools input[value=python]")
    page.select_option("#agent-style", "code")
    page.fill("#agent-max-steps", "3")
    requests = []
    page.on("request", lambda r: requests.append(r))
    # Record every (steps shown, final shown) the list goes through, however fast it changes.
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            const list = document.querySelector('#agent-steps');
            window.seen.push([list.querySelectorAll('.step').length,
                              !!list.querySelector('.step-final')]);
        }).observe(document.querySelector('#agent-steps'), {subtree: true, childList: true});
    }""")
    page.fill("#agent-task", TASK)
    page.press("#agent-task", "Enter")
    assert page.is_visible("#agent-stop") and page.is_hidden("#agent-run")
    page.wait_for_selector("#agent-run", state="visible", timeout=RUN_TIMEOUT_MS)

    assert page.text_content("#agent-status") == "Run complete."
    assert [n for n, final in page.evaluate("window.seen") if not final and n], (
        "no step streamed in"
    )
    assert page.locator("#agent-steps .step-model").count() >= 1
    final = page.locator("#agent-steps .step-final")
    assert final.count() == 1
    assert page.locator("#agent-steps .step").last.get_attribute("class") == "step step-final"
    stats = final.locator(".stats").text_content()
    assert re.fullmatch(r"\d+ steps? · \d+ tokens \(\d+ written\) · [\d.]+ s( · .+)?", stats), stats
    (run,) = [r for r in requests if r.url.endswith("/v1/agents/runs")]
    body = json.loads(run.post_data)
    assert body == {
        "model": MODEL,
        "task": TASK,
        "tools": ["calculator"],
        "style": "code",
        "max_steps": 3,
        "stream": True,
        "temperature": 0,
        "max_tokens": 96,
    }
    assert run.headers["authorization"] == f"Bearer {API_KEY}"

    calls = page.locator("#agent-steps details.tool-call")
    if calls.count():  # the model decides whether it calls anything
        call = calls.first
        assert call.get_attribute("open") is None and call.locator(".call-result").is_hidden()
        call.locator("summary").click()
        assert call.get_attribute("open") is not None
        assert call.locator(".call-result").is_visible()
        assert call.locator(".call-result").text_content() not in ("", "...")
        page.screenshot(path=ARTIFACTS / "webui-agents-call.png")


TRICKY = '<img src=x onerror="window.hacked = 1"> **bold**'
STEPS = [
    {"index": 1, "text": TRICKY, "type": "model", "prompt_tokens": 5, "completion_tokens": 3,
     "seconds": 0.5, "code": None,
     "calls": [{"id": "c1", "name": "calculator", "arguments": {"expression": "<b>1</b>"}}]},
    {"index": 1, "type": "tool", "output": "<script>window.hacked = 2</script>", "error": False,
     "seconds": 0.01, "approved": None,
     "call": {"id": "c1", "name": "calculator", "arguments": {"expression": "<b>1</b>"}}},
    {"type": "final", "text": TRICKY, "reason": "max_steps", "steps": 1, "prompt_tokens": 5,
     "completion_tokens": 3, "seconds": 0.6},
]  # fmt: skip


def test_steps_are_text_not_html(page):
    sse = "".join(f"data: {json.dumps(s)}\n\n" for s in STEPS) + "data: [DONE]\n\n"
    page.route(
        "**/v1/agents/runs",
        lambda route: route.fulfill(body=sse, headers={"content-type": "text/event-stream"}),
    )
    _open_agents(page)
    page.fill("#agent-task", "Show me HTML.")
    page.click("#agent-run")
    page.wait_for_selector("#agent-steps .step-final")
    page.click("#agent-steps details.tool-call summary")
    assert page.text_content(".call-result") == "<script>window.hacked = 2</script>"
    assert page.text_content(".call-args") == '{"expression":"<b>1</b>"}'
    assert page.locator("#agent-steps strong").first.text_content() == "bold"
    assert page.locator("#agents img, #agents script, #agents b").count() == 0
    assert page.evaluate("window.hacked") is None
    assert "stopped at the step limit" in page.text_content(".step-final .stats")


def test_a_server_without_agents_says_so(page):
    page.route(  # as a server started with --agent-tools none answers
        "**/v1/agents/tools", lambda route: route.fulfill(json={"object": "list", "data": []})
    )
    page.click("#view-agents")
    page.wait_for_selector("#agents-notice", state="visible")
    assert "--agent-tools" in page.text_content("#agents-notice")
    assert page.is_disabled("#agent-task") and page.is_disabled("#agent-run")
    page.reload()  # the view is remembered
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.is_visible("#agents") and page.is_hidden("#chat-view")
