"""`/v1/audio/transcriptions` and `/v1/audio/speech`, in OpenAI's shapes (genforge/serve/audio.py
holds the models).

Transcriptions: a multipart upload (`file`, and `model`, `language`, `prompt`, `temperature`,
`response_format` of json, text, verbose_json, srt or vtt, `timestamp_granularities[]` of segment
and word) up to `--max-audio-bytes` (25 MB, as OpenAI's) and `--max-audio-minutes` of sound. Bad
audio (empty, not audio, no audio stream, too long) is a 400 naming what is wrong.

Speech: a JSON body (`model`, `input`, `voice`, `response_format` of wav or pcm, `speed`); the
audio is streamed, a sentence at a time as Piper speaks it, so playback can start after the first.
The first sentence is spoken before the answer starts: a text that cannot be spoken is still a
400, not a broken stream. WAV has the voice's own rate (22,050 Hz for Joe) and a header saying
"length unknown"; PCM is OpenAI's 24 kHz 16-bit mono.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from genforge.errors import GenforgeError
from genforge.serve.audio import PCM_RATE
from genforge.serve.errors import bad_request
from genforge.serve.routes.generation import until_disconnect
from genforge.serve.schemas import SpeechRequest
from genforge.speech import formats
from genforge.speech.recognize import BadAudio
from genforge.speech.synthesize import wav_header

TRANSCRIPTIONS = "/v1/audio/transcriptions"
SPEECH = "/v1/audio/speech"
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
SPEECH_FORMATS = ("wav", "pcm")
SPEAKING = 4  # speech streams at once; more wait (each holds a Piper worker process)

router = APIRouter()


class _Cancelled(Exception):
    """The client left: the transcription stops at its next window."""


@router.post(TRANSCRIPTIONS)
async def transcribe(request: Request):
    speech = request.app.state.speech
    form = await _form(request)
    speech.check_transcriber(_field(form, "model"))
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise bad_request(
            "Missing the audio: send it as the multipart field 'file' (a file upload).",
            param="file",
        )
    fmt = _field(form, "response_format") or "json"
    if fmt not in TRANSCRIPTION_FORMATS:
        raise bad_request(
            f"Unsupported response_format {fmt!r}; use one of {', '.join(TRANSCRIPTION_FORMATS)}.",
            param="response_format",
        )
    granularities = form.getlist("timestamp_granularities[]") or form.getlist(
        "timestamp_granularities"
    )
    if bad := [g for g in granularities if g not in ("segment", "word")]:
        raise bad_request(
            f"Unknown timestamp granularity {bad[0]!r}; use segment or word.",
            param="timestamp_granularities[]",
        )
    words = "word" in granularities
    if words and fmt != "verbose_json":
        raise bad_request(
            "Word timestamps come with response_format verbose_json; ask for that format.",
            param="timestamp_granularities[]",
        )
    options = {
        "language": _field(form, "language") or None,
        "prompt": _field(form, "prompt") or None,
        "temperature": _temperature(_field(form, "temperature")),
        "word_timestamps": words,
        "max_seconds": request.app.state.config.max_audio_seconds,
    }
    audio = io.BytesIO(await upload.read())
    audio.name = upload.filename or "the upload"  # errors name the file the client sent
    speech.prepare()  # a voice chat reads its answer aloud next: a Piper worker gets ready meanwhile
    recognizer = await speech.recognizer()
    return await until_disconnect(request, _transcribe(request, recognizer, audio, fmt, options))


async def _transcribe(request: Request, recognizer, audio: io.BytesIO, fmt: str, options):
    metrics, left = request.app.state.metrics, threading.Event()

    def on_segment(_segment) -> None:
        if left.is_set():
            raise _Cancelled

    started = time.perf_counter()
    metrics.in_flight.inc()
    try:
        transcript = await asyncio.to_thread(
            recognizer.transcribe, audio, on_segment=on_segment, **options
        )
    except asyncio.CancelledError:
        left.set()
        raise
    except BadAudio as e:
        raise bad_request(str(e), param="file", code="invalid_audio") from None
    finally:
        metrics.in_flight.dec()
        metrics.duration.labels(TRANSCRIPTIONS).observe(time.perf_counter() - started)
    if fmt == "text":
        return PlainTextResponse(formats.to_text(transcript))
    if fmt in ("srt", "vtt"):
        text = formats.to_srt(transcript) if fmt == "srt" else formats.to_vtt(transcript)
        return PlainTextResponse(text)
    usage = {"type": "duration", "seconds": round(transcript.duration)}
    if fmt == "json":
        return JSONResponse(formats.to_json(transcript) | {"usage": usage})
    body = formats.to_verbose_json(transcript) | {"usage": usage}
    if not options["word_timestamps"]:  # OpenAI sends words only when they were asked for
        body.pop("words")
        for segment in body["segments"]:
            segment.pop("words")
    return JSONResponse(body)


@router.post(SPEECH)
async def speak(body: SpeechRequest, request: Request):
    speech = request.app.state.speech
    speech.check_speaker(body.model, body.voice)
    if body.response_format not in SPEECH_FORMATS:
        raise bad_request(
            f"Unsupported response_format {body.response_format!r}: this server streams wav "
            "(the default) or pcm (16-bit mono at 24 kHz); ask for one of those.",
            param="response_format",
        )
    if not body.input.strip():
        raise bad_request("input is empty; give the text to speak.", param="input")
    if not 0.25 <= body.speed <= 4.0:
        raise bad_request(
            f"speed must be between 0.25 and 4.0 (1 = the voice's own), got {body.speed}.",
            param="speed",
        )
    gate = request.app.state.speaking
    await gate.acquire()
    try:
        pcm = body.response_format == "pcm"
        chunks = speech.speak(body.input, body.speed, PCM_RATE if pcm else None)
        first = await asyncio.to_thread(next, chunks, b"")  # the first sentence, or its error
    except GenforgeError as e:
        gate.release()
        raise bad_request(str(e), param="input") from None
    except BaseException:
        gate.release()
        raise
    if pcm:
        media, head = f"audio/pcm;rate={PCM_RATE};encoding=signed-int;bits=16;channels=1", b""
    else:
        media, head = "audio/wav", wav_header(speech.sample_rate)
    return StreamingResponse(_stream(head + first, chunks, gate), media_type=media)


async def _stream(first: bytes, chunks, gate: asyncio.Semaphore):
    """The audio, a sentence at a time; the next is spoken in a worker thread while this one is
    sent. Ends the synthesis (and frees its place) when the client leaves."""
    try:
        yield first
        while chunk := await asyncio.to_thread(next, chunks, b""):
            yield chunk
    finally:
        gate.release()
        # a stream cut off ends its worker process; if a sentence is still being spoken in its
        # thread, the generator is closed (and the worker ended) when it is collected
        with contextlib.suppress(ValueError):
            chunks.close()


# -- the form ---------------------------------------------------------------------------------------


async def _form(request: Request):
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise bad_request(
            "Send the audio as multipart/form-data, with the recording in the field 'file' "
            f"(the request's Content-Type was {kind or 'missing'!r})."
        )
    try:
        return await request.form(max_files=1, max_fields=32)
    except Exception as e:  # noqa: BLE001 - python-multipart's and Starlette's parse errors
        raise bad_request(f"The multipart body could not be read ({e}); send it again.") from None


def _field(form, name: str) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{name} must be a plain form field, not a file.", param=name)
    return value


def _temperature(value: str | None) -> float | None:
    """OpenAI's temperature: 0 (the default) lets Whisper raise it where decoding fails; above 0,
    that one temperature."""
    if value in (None, ""):
        return None
    try:
        t = float(value)
    except ValueError:
        raise bad_request(
            f"temperature must be a number, got {value!r}.", param="temperature"
        ) from None
    if not 0 <= t <= 1:
        raise bad_request(f"temperature must be between 0 and 1, got {t}.", param="temperature")
    return t or None
