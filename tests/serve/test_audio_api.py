"""`/v1/audio/speech` and `/v1/audio/transcriptions` over real HTTP, with the official `openai`
client and plain requests, against a real `genforge serve` (Whisper base and the Piper voice Joe):
a round trip through both routes, every transcription format, PCM at OpenAI's 24 kHz, both models in
/v1/models, a 400 naming what is wrong for each kind of bad audio and bad request, and, in
process, a server without the speech extra."""

from __future__ import annotations

import io
import random
import re
import struct
import time
import wave

import httpx
import pytest
from components import require_speech
from conftest import API_KEY, Server
from text_pictures import dot_png

from genforge.serve import audio
from genforge.speech import synthesize

openai = pytest.importorskip("openai")

SPEECH, TRANSCRIPTIONS = "/v1/audio/speech", "/v1/audio/transcriptions"
AUTH = {"authorization": f"Bearer {API_KEY}"}
# Plain words that Whisper base hears in Joe's voice (tests/speech/conftest.py)
TEXT = "The weather is nice today. Please open the window before you leave the room."


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def assert_heard(text: str) -> None:
    """TEXT's words in their places, one of them misheard at most: Piper draws each phoneme's length
    and pitch with fresh noise, so the server speaks TEXT a little differently each time, and now
    and then Whisper base hears one word of it wrong ("water" for "weather")."""
    heard, said = words(text), words(TEXT)
    assert len(heard) == len(said), text
    assert sum(a != b for a, b in zip(heard, said, strict=True)) <= 1, text


@pytest.fixture(scope="module")
def speech_server(tiny_model_dir):
    """A server with a random 2-layer chat model (it loads in an instant) and speech."""
    require_speech()
    s = Server("-m", str(tiny_model_dir), "--api-key", API_KEY, "--max-audio-minutes", "60")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(speech_server):
    return openai.OpenAI(
        base_url=f"{speech_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=180
    )


@pytest.fixture(scope="module")
def spoken(client) -> bytes:
    """TEXT as a WAV file, spoken by the server."""
    answer = client.audio.speech.create(model="piper", voice="joe", input=TEXT)
    return answer.content


def _transcribe(server, data: bytes, name="speech.wav", **fields) -> httpx.Response:
    return httpx.post(
        f"{server.url}{TRANSCRIPTIONS}",
        files={"file": (name, data)},
        data={"model": "whisper-base", **fields},
        headers=AUTH,
        timeout=180,
    )


def _error(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _speech_workers(server) -> list:
    import psutil

    children = psutil.Process(server.proc.pid).children(recursive=True)
    return [c for c in children if "genforge.speech.piper_worker" in " ".join(c.cmdline())]


def test_no_speech_worker_runs_before_speech_is_wanted(speech_server):
    # Defined first, so it runs before any speech request of this module.
    httpx.get(f"{speech_server.url}/v1/models", headers=AUTH).raise_for_status()
    assert _speech_workers(speech_server) == []  # a server nobody speaks with pays nothing


def test_the_models_prepare_one_worker_in_the_background():
    require_speech()
    models = audio.SpeechModels()
    try:
        models.start()  # not warm: nothing starts
        assert not models._idle and not models._warming
        models.prepare()
        models.prepare()  # one is starting: no second
        deadline = time.monotonic() + 120
        while not models._idle and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(models._idle) == 1
        models.prepare()  # one is ready: nothing more
        assert len(models._idle) == 1 and not models._warming
        chunks = b"".join(models.speak("Hello there.", 1.0, None))
        assert len(chunks) > 22_050  # more than half a second of 16-bit audio
        assert len(models._idle) == 1  # it came back after its stream
    finally:
        models.close()


# -- the round trip ----------------------------------------------------------------------------------


def test_speech_is_a_wav_file_of_the_voice(spoken):
    with wave.open(io.BytesIO(spoken)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22_050)
        frames = w.readframes(w.getnframes())
    seconds = len(frames) / 2 / 22_050
    assert 3 < seconds < 12  # about 14 words at a speaking pace
    assert max(abs(v) for (v,) in struct.iter_unpack("<h", frames[:200_000])) > 1000  # not silence


def test_the_openai_client_transcribes_what_the_server_said(client, spoken):
    answer = client.audio.transcriptions.create(
        model="whisper-1",  # OpenAI's name means whisper-base here
        file=("speech.wav", spoken),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="en",
    )
    assert_heard(answer.text)
    assert answer.language == "en"
    assert answer.duration == pytest.approx(
        (len(spoken) - 44) / 2 / 22_050, abs=0.1
    )  # the WAV's own length
    heard = [w.word.strip() for w in answer.words]
    assert_heard(" ".join(heard))
    starts = [w.start for w in answer.words]
    assert starts == sorted(starts) and answer.words[-1].end <= answer.duration + 0.1
    assert answer.segments and answer.segments[0].start == pytest.approx(0, abs=1)


def test_each_response_format(speech_server, client, spoken):
    plain = client.audio.transcriptions.create(
        model="whisper-base", file=("s.wav", spoken), response_format="text"
    )
    assert_heard(plain)
    body = _transcribe(speech_server, spoken).json()  # json, the default
    assert_heard(body["text"])
    assert body["usage"]["type"] == "duration" and body["usage"]["seconds"] >= 3
    srt = _transcribe(speech_server, spoken, response_format="srt").text
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S", srt)
    vtt = _transcribe(speech_server, spoken, response_format="vtt").text
    assert vtt.startswith("WEBVTT\n\n00:00:") and "-->" in vtt
    verbose = _transcribe(speech_server, spoken, response_format="verbose_json").json()
    assert "words" not in verbose  # OpenAI sends words only when they are asked for
    assert verbose["segments"] and "words" not in verbose["segments"][0]


def test_pcm_is_streamed_at_24_khz(client, spoken):
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="pcm"
    ) as answer:
        assert answer.headers["content-type"].startswith("audio/pcm")
        pcm = b"".join(answer.iter_bytes())
    assert len(pcm) % 2 == 0
    # Piper draws each phoneme's length with some noise: two syntheses differ by a few percent
    wav_seconds = (len(spoken) - 44) / 2 / 22_050
    assert len(pcm) / 2 / 24_000 == pytest.approx(wav_seconds, rel=0.15)
    as_wav = io.BytesIO()
    synthesize.write_wav(as_wav, 24_000, [pcm])
    heard = client.audio.transcriptions.create(
        model="whisper-1", file=("pcm.wav", as_wav.getvalue()), response_format="text"
    )
    assert_heard(heard)


def test_the_resampler_keeps_pitch_and_length():
    import numpy as np

    t = np.arange(22_050) / 22_050
    tone = (np.sin(2 * np.pi * 440 * t) * 10_000).astype("<i2").tobytes()
    pieces = [tone[:10_000], tone[10_000:30_001], tone[30_001:]]  # one cut inside a sample
    out = np.frombuffer(b"".join(audio._resampled(iter(pieces), 22_050, 24_000)), "<i2")
    assert abs(len(out) - 24_000) <= 24  # one second in, one second out
    spectrum = np.abs(np.fft.rfft(out.astype(float)))
    assert np.argmax(spectrum) * 24_000 / len(out) == pytest.approx(440, abs=2)


def test_models_lists_both_speech_models(client):
    listed = {m.id: m for m in client.models.list().data}
    assert listed["whisper-base"].model_extra["genforge"]["kind"] == "transcription"
    assert listed["piper"].model_extra["genforge"]["kind"] == "speech"
    assert listed["piper"].model_extra["genforge"]["voices"] == ["joe"]


# -- bad audio and bad requests ----------------------------------------------------------------------


def _two_hours_of_silence() -> bytes:
    """A 1.3 MB FLAC file whose header says 2 hours (digital silence compresses to almost nothing)."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=8000, layout="mono")
        minute = np.zeros((1, 8000 * 60), dtype=np.int16)
        for i in range(120):
            frame = av.AudioFrame.from_ndarray(minute, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 8000 * 60
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "pattern"),
    [
        ("empty.wav", lambda: b"", r"empty\.wav is empty \(0 bytes\)"),
        ("noise.bin", lambda: random.Random(0).randbytes(4000), r"noise\.bin is not audio"),
        ("notes.txt", lambda: b"Remember to buy milk.\n" * 40, r"notes\.txt is not audio"),
        ("picture.png", dot_png, r"picture\.png has no audio stream"),
        ("long.flac", _two_hours_of_silence, r"long\.flac is 2 h 00 min long, over the limit"),
    ],
)
def test_bad_audio_is_a_400_naming_the_file(speech_server, name, data, pattern):
    err = _error(_transcribe(speech_server, data(), name=name))
    assert re.search(pattern, err["message"]), err["message"]
    assert err["param"] == "file" and "\n" not in err["message"]


@pytest.mark.parametrize(
    ("fields", "param", "words_"),
    [
        ({"response_format": "diarized_json"}, "response_format", "json, text, verbose_json"),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities[]", "verbose_json"),
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"language": "klingon"}, None, "unknown language 'klingon'"),
    ],
)
def test_bad_transcription_requests_are_a_400(speech_server, spoken, fields, param, words_):
    err = _error(_transcribe(speech_server, spoken, **fields))
    assert words_ in err["message"] and err["param"] == param


def test_a_transcription_needs_a_multipart_file(speech_server):
    err = _error(httpx.post(f"{speech_server.url}{TRANSCRIPTIONS}", json={}, headers=AUTH))
    assert "multipart/form-data" in err["message"]
    no_file = httpx.post(
        f"{speech_server.url}{TRANSCRIPTIONS}", files={"model": (None, "whisper-1")}, headers=AUTH
    )
    assert _error(no_file)["param"] == "file"
    other = _error(_transcribe(speech_server, b"x", model="gpt-5"), 404)
    assert "whisper-base" in other["message"]


def test_an_upload_over_the_limit_is_refused_before_it_is_read(speech_server):
    big = b"\0" * (25 * 1024 * 1024 + 1)
    err = _error(_transcribe(speech_server, big), 413)
    assert "--max-audio-bytes" in err["message"]


@pytest.mark.parametrize(
    ("change", "param", "words_"),
    [
        ({"response_format": "mp3"}, "response_format", "wav"),
        ({"input": "   "}, "input", "input is empty"),
        ({"speed": 5}, "speed", "between 0.25 and 4.0"),
        ({"voice": "darth"}, "voice", "joe"),
    ],
)
def test_bad_speech_requests_are_a_400(speech_server, change, param, words_):
    body = {"model": "piper", "voice": "joe", "input": "Hello there."} | change
    err = _error(httpx.post(f"{speech_server.url}{SPEECH}", json=body, headers=AUTH))
    assert words_ in err["message"] and err["param"] == param


def test_a_speech_stream_cut_off_leaves_the_next_one_whole(speech_server, client):
    long = " ".join(["The weather is nice today."] * 12)
    with httpx.stream(
        "POST",
        f"{speech_server.url}{SPEECH}",
        json={"input": long, "response_format": "pcm"},
        headers=AUTH,
        timeout=60,
    ) as answer:
        next(answer.iter_bytes())  # the first sentence, then the client leaves
    again = client.audio.speech.create(model="piper", voice="joe", input="Hello there.")
    seconds = (len(again.content) - 44) / 2 / 22_050  # a streamed WAV's header says "unknown"
    assert 0.4 < seconds < 3  # this text alone, nothing left over from the stream cut off


# -- without the speech extra (in process) ------------------------------------------------------------


def test_without_the_speech_extra_the_server_says_what_to_install(monkeypatch):
    from fastapi.testclient import TestClient

    from genforge.serve.app import create_app
    from genforge.serve.models import Registry

    monkeypatch.setattr(audio, "_available", lambda: (False, False))
    app = create_app(Registry([], allow_load=False))
    with TestClient(app, base_url="http://localhost") as http:
        kinds = [m["genforge"]["kind"] for m in http.get("/v1/models").json()["data"]]
        assert "speech" not in kinds and "transcription" not in kinds
        err = _error(http.post(SPEECH, json={"input": "Hello."}), 404)
        assert "pip install 'genforge[speech]'" in err["message"]
        upload = http.post(TRANSCRIPTIONS, files={"file": ("a.wav", b"RIFF")})
        assert "pip install 'genforge[speech]'" in _error(upload, 404)["message"]
