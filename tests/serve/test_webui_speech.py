"""Voice chat in the web UI, in a real browser (Debian's chromium, driven by Playwright) against a real
server with the speech extra: chromium's fake microphone plays a question Piper spoke, the page
records it, Whisper on the server writes it down, it is sent as the user's turn and answered, and
"Read aloud" plays the answer as PCM streams in. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import io
import json
import re
import wave

import pytest
from components import require_speech
from conftest import API_KEY, ARTIFACTS, CHROMIUM_ARGS, MODEL, Server
from playwright.sync_api import Page, expect

# Words Whisper base hears exactly in Piper's voice (8 of 8 syntheses; "France" came back as
# "friends" in 2 of 8).
QUESTION = "What is the capital of Italy?"
LEAD_S = 0.3  # silence before the question: the recorder starts a moment after the microphone
LAST_ANSWER = "#messages .message.assistant:last-child"
PCM_BYTES_PER_S = 24_000 * 2  # OpenAI's pcm: 16-bit mono at 24 kHz
MARKDOWN_ANSWER = "Hello **there**.\n\n- one\n- `two`\n\n```python\nprint(1)\n```"


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory):
    """QUESTION spoken by Piper as 16-bit PCM WAV with LEAD_S of silence before it; its length."""
    require_speech()
    import genforge

    with wave.open(io.BytesIO(genforge.speak(QUESTION))) as spoken:
        rate, frames = spoken.getframerate(), spoken.readframes(spoken.getnframes())
    path = tmp_path_factory.mktemp("voice") / "question.wav"
    with wave.open(str(path), "wb") as out:  # chromium reads 16-bit PCM at any rate
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(LEAD_S * rate) + frames)
    return path, LEAD_S + len(frames) / 2 / rate


@pytest.fixture(scope="module")
def chromium_args(question_wav):
    """The usual browser, with a microphone that plays the question once (`%noloop`), then silence,
    and no permission prompt."""
    path, _ = question_wav
    return [
        *CHROMIUM_ARGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={path}%noloop",
    ]


@pytest.fixture(scope="module")
def voice_server(smollm2_path):
    s = Server("-m", MODEL, "--api-key", API_KEY)
    yield s
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "webui-speech-server.log").write_text(s.stop())


@pytest.fixture
def page(browser, voice_server, request):
    """A fresh profile on the UI, past its API key prompt, short greedy answers; fails the test on
    a JavaScript error or an alert."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors, dialogs = [], []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{voice_server.url}/")
    page.wait_for_selector("#settings[open]")
    page.fill("#api-key", API_KEY)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")  # a few seconds of speech: read aloud plays in real time
    page.click("#save-settings")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"webui-speech-{request.node.name.removeprefix('test_')}.png")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not dialogs, f"the page opened dialogs: {dialogs}"


def _watch(page: Page, selector: str) -> None:
    """Record in `window.seen` each [time in ms, text, class] the element at `selector` takes, from
    now on (an earlier watch goes on filling its own list)."""
    page.evaluate(
        """selector => {
            const seen = window.seen = [];
            const note = () => {
                const el = document.querySelector(selector);
                const last = seen.at(-1);
                const now = [performance.now(), el.textContent.trim(), el.className];
                if (!last || last[1] !== now[1] || last[2] !== now[2]) seen.push(now);
            };
            note();
            new MutationObserver(note).observe(document.querySelector('#messages').parentNode,
                {subtree: true, childList: true, characterData: true, attributes: true});
        }""",
        selector,
    )


def test_a_spoken_question_is_answered_and_read_aloud(page, question_wav):
    _, seconds = question_wav
    assert page.is_visible("#mic")  # the server lists whisper-base
    chat = page.locator("#model option").evaluate_all("els => els.map(e => e.value)")
    assert MODEL in chat and not {"whisper-base", "piper"} & set(chat)  # not chat models
    requests = []
    page.on("request", lambda r: requests.append(r))

    _watch(page, "#mic")
    page.click("#mic")
    expect(page.locator("#mic")).to_have_class(re.compile(r"\brecording\b"))
    assert page.get_attribute("#mic", "aria-pressed") == "true"
    page.wait_for_timeout((seconds + 0.7) * 1000)
    page.locator(".composer").screenshot(path=ARTIFACTS / "webui-speech-recording.png")
    assert re.fullmatch(r"0:0[1-9]", page.text_content("#mic").strip())  # the timer runs
    page.click("#mic")
    page.wait_for_selector("#messages .message.user")
    heard = page.text_content("#messages .message.user .content")
    # The recording reached Whisper whole: its words, one of them misheard at most (through the
    # fake capture device Whisper base once heard "Bibley" for "Italy" on a loaded machine; its
    # accuracy on Piper's speech is tests/speech's).
    assert "capital" in _words(heard) and len(_words(QUESTION) - _words(heard)) <= 1, heard
    page.wait_for_selector("#send", state="visible", timeout=60_000)  # the answer is complete
    answer = page.text_content(f"{LAST_ANSWER} .content").strip()
    assert answer
    states = [(text, cls) for _, text, cls in page.evaluate("window.seen")]
    assert states[0] == ("", "mic")
    assert ("0:00", "mic recording") in states  # red, with a timer
    assert ("Transcribing\u2026", "mic transcribing") in states
    assert states[-1] == ("", "mic")
    assert page.is_enabled("#mic")

    (upload,) = [r for r in requests if r.url.endswith("/v1/audio/transcriptions")]
    assert upload.headers["authorization"] == f"Bearer {API_KEY}"
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    # (chromium does not show a FormData body to Playwright: the reply shows what it carried)
    assert upload.response().json()["text"].strip() == heard  # a file Whisper read, as json
    (chat_request,) = [r for r in requests if r.url.endswith("/v1/chat/completions")]
    sent = json.loads(chat_request.post_data)["messages"]
    assert sent == [{"role": "user", "content": heard}]  # as if typed and sent

    # Read aloud: the answer's text as PCM, played as it streams; the button says Stop meanwhile.
    read = page.locator(f"{LAST_ANSWER} .read-aloud")
    assert page.locator("#messages .message.user .read-aloud").is_hidden()
    _watch(page, f"{LAST_ANSWER} .read-aloud")
    with page.expect_response(lambda r: r.url.endswith("/v1/audio/speech")) as speech:
        read.click()
    expect(read).to_have_text("Stop")
    assert read.get_attribute("aria-pressed") == "true"
    response = speech.value
    assert response.status == 200
    assert json.loads(response.request.post_data) == {
        "model": "piper",
        "input": answer,
        "voice": "joe",
        "response_format": "pcm",
    }
    pcm = response.body()
    assert len(pcm) > PCM_BYTES_PER_S / 2 and any(pcm)  # at least half a second, not silence
    expect(read).to_have_text("Read aloud", timeout=30_000)
    assert read.get_attribute("aria-pressed") == "false"
    seen = page.evaluate("window.seen")
    assert [text for _, text, _ in seen] == ["Read aloud", "Stop", "Read aloud"], seen
    # The button waits for the audio clock: it came back no sooner than the sound lasts.
    assert seen[2][0] - seen[1][0] >= 0.9 * len(pcm) / PCM_BYTES_PER_S * 1000, seen


def test_errors_show_in_the_status_line_and_no_speech_hides_the_buttons(page):
    # The server's 400 for a file that is not audio: the recording is swapped on its way.
    def not_audio(route):
        boundary = route.request.headers["content-type"].split("boundary=")[1]
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="speech.webm"'
            f"\r\nContent-Type: audio/webm\r\n\r\nnot audio at all\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-base\r\n'
            f"--{boundary}--\r\n"
        )
        route.continue_(post_data=body.encode())

    page.route("**/v1/audio/transcriptions", not_audio)
    page.click("#mic")
    expect(page.locator("#mic")).to_have_class(re.compile(r"\brecording\b"))
    with page.expect_response(lambda r: r.url.endswith("/v1/audio/transcriptions")) as refused:
        page.click("#mic")
    assert refused.value.status == 400
    expect(page.locator("#mic")).to_have_class("mic")
    assert page.text_content("#status") == refused.value.json()["error"]["message"]
    assert page.locator("#messages .message").count() == 0  # nothing was sent

    # A microphone the browser refused.
    page.evaluate(
        """() => { navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException('Permission denied', 'NotAllowedError')); }"""
    )
    page.click("#mic")
    expect(page.locator("#status")).to_contain_text("did not allow the microphone")
    assert page.get_attribute("#mic", "class") == "mic" and page.is_enabled("#mic")

    # A server without speech: neither button shows.
    def no_speech(route):
        listed = route.fetch().json()
        kinds = ("transcription", "speech")
        listed["data"] = [m for m in listed["data"] if m["genforge"]["kind"] not in kinds]
        route.fulfill(json=listed)

    page.route("**/v1/models", no_speech)
    page.evaluate(
        """answer => {
            localStorage.setItem('genforge.conversations', JSON.stringify([{id: 'c', title: 'c',
                created: 0, messages: [{role: 'user', content: 'Hi'},
                                       {role: 'assistant', content: answer}]}]));
            localStorage.setItem('genforge.current', 'c');
        }""",
        MARKDOWN_ANSWER,
    )
    page.reload()
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    read = page.locator(f"{LAST_ANSWER} .read-aloud")
    assert page.is_hidden("#mic") and read.is_hidden()

    page.unroute("**/v1/models")
    page.reload()
    expect(read).to_be_visible()
    assert page.is_visible("#mic")
    # What is read aloud is the answer's text, without its markdown.
    with page.expect_request(lambda r: r.url.endswith("/v1/audio/speech")) as speech:
        read.click()
    assert json.loads(speech.value.post_data)["input"] == "Hello there.\n\none\n\ntwo\n\nprint(1)"
    read.click()  # a second click stops at once
    expect(read).to_have_text("Read aloud", timeout=1_000)
