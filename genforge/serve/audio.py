"""Speech on the server: the Whisper model that `/v1/audio/transcriptions` uses and the Piper voice
that `/v1/audio/speech` speaks with (genforge.speech does the work).

- Served when the speech extra is installed: `whisper-base` (kind "transcription", pulled on first
  use like the language models) and `piper` with the voice `joe` (kind "speech"). OpenAI's model
  names are accepted for them (`whisper-1`; `tts-1`, `tts-1-hd`, `gpt-4o-mini-tts`), so a client
  written for OpenAI works unchanged; one voice ships, so OpenAI's voice names (alloy, ash, ...)
  all speak as Joe, and `/v1/models` says so.
- The Whisper model loads on the first transcription (0.5 to 2 s) and stays. Its work runs on the
  compute thread one 30-second window at a time, so chats and transcriptions take turns; a client
  that leaves stops its transcription at the next window.
- Piper runs in worker processes (genforge/speech/synthesize.py: GPL code never loads here). A
  worker takes 2 to 3 s to start and holds 140 to 190 MB, its first sentence takes 0.4 s, so the
  server keeps started workers: each request borrows an idle one or starts another, and gives it
  back when its stream ends whole (a stream cut off ends its worker); at most `KEEP` idle ones are
  kept. None is started before speech is wanted: a server nobody speaks with pays nothing for it.
  A transcription starts one in the background (a voice chat reads its answer aloud next), and
  `warm` (`genforge serve --speech-warm`) starts one with the server.
- `pcm` is OpenAI's: 16-bit little-endian mono at 24 kHz. Joe speaks at 22,050 Hz, so PCM is
  resampled (FFmpeg's resampler through PyAV, which the speech extra brings); WAV keeps the voice's
  own rate, which its header states.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Iterator

from genforge.errors import GenforgeError
from genforge.serve.errors import APIError
from genforge.speech import recognize, synthesize

log = logging.getLogger(__name__)

TRANSCRIBER = "whisper-base"
SPEAKER = "piper"
VOICE = "joe"
OPENAI_TRANSCRIBERS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
OPENAI_SPEAKERS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
PCM_RATE = 24_000  # OpenAI's `pcm`: 24 kHz, 16-bit signed little-endian, mono
KEEP = 2  # idle Piper workers kept started
EXTRA = "pip install 'genforge[speech]'"


def _available() -> tuple[bool, bool]:
    return recognize.available(), synthesize.available()


class SpeechModels:
    """What the server speaks and hears with; `enabled=False` serves neither (tests, --no-speech)."""

    def __init__(self, *, enabled: bool = True, threads: int | None = None, warm: bool = False):
        hears, speaks = _available() if enabled else (False, False)
        self.hears, self.speaks = hears, speaks
        self.threads = threads
        self._recognizer = None
        self._load_lock = asyncio.Lock()
        self._idle: list = []  # started Synthesizers, ready for a stream
        self._idle_lock = threading.Lock()
        self._closed = False
        self._warming = False  # a worker is being started in the background
        self.warm = warm and speaks

    # -- what is served ------------------------------------------------------------------------

    def entries(self) -> list[dict]:
        """`/v1/models` entries: kind "transcription" and "speech"."""
        out = []
        if self.hears:
            out.append(
                _entry(
                    TRANSCRIBER,
                    "transcription",
                    loaded=self._recognizer is not None,
                    aliases=list(OPENAI_TRANSCRIBERS),
                )
            )
        if self.speaks:
            out.append(
                _entry(
                    SPEAKER,
                    "speech",
                    loaded=bool(self._idle),
                    aliases=list(OPENAI_SPEAKERS),
                    voices=[VOICE],
                    voice_aliases=list(OPENAI_VOICES),
                )
            )
        return out

    def check_transcriber(self, name: str | None) -> None:
        _check_model(self.hears, "Transcription", name, TRANSCRIBER, OPENAI_TRANSCRIBERS)

    def check_speaker(self, name: str | None, voice: str | None) -> None:
        _check_model(self.speaks, "Speech synthesis", name, SPEAKER, OPENAI_SPEAKERS)
        if voice not in (None, "", VOICE, *OPENAI_VOICES):
            shown = voice if isinstance(voice, str) else "a voice object"
            raise APIError(
                400,
                f"Unknown voice {shown!r}; this server speaks with {VOICE} (OpenAI's voice names "
                "are accepted and speak as it too).",
                param="voice",
                code="invalid_value",
            )

    # -- hearing -------------------------------------------------------------------------------

    async def recognizer(self):
        """The Whisper model, loaded on first use (on the compute thread)."""
        if self._recognizer is None:
            async with self._load_lock:
                if self._recognizer is None:
                    try:
                        self._recognizer = await asyncio.to_thread(
                            recognize.Recognizer, TRANSCRIBER, threads=self.threads, progress=False
                        )
                    except GenforgeError as e:
                        raise APIError(
                            500, f"The model {TRANSCRIBER!r} failed to load: {e}"
                        ) from None
        return self._recognizer

    # -- speaking ------------------------------------------------------------------------------

    def start(self) -> None:
        """At the server's start: a Piper worker, if `warm`."""
        if self.warm:
            self.prepare()

    def prepare(self) -> None:
        """Start a Piper worker in the background unless one is ready or starting, so that the
        next speech request finds it ready."""
        with self._idle_lock:
            if not self.speaks or self._idle or self._warming or self._closed:
                return
            self._warming = True
        threading.Thread(target=self._warm_one, name="piper-warm", daemon=True).start()

    def _warm_one(self) -> None:
        try:
            synth = self._new()
            synth._worker()  # started now, not on its first stream
        except GenforgeError as e:
            log.warning("the speech worker did not start: %s", e)
            return
        finally:
            self._warming = False
        self._give_back(synth)

    def _new(self):
        return synthesize.Synthesizer(VOICE, threads=self.threads or 1)

    def borrow(self):
        """An idle Synthesizer (its worker started), or a new one."""
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        return self._new()

    def _give_back(self, synth) -> None:
        with self._idle_lock:
            if not self._closed and len(self._idle) < KEEP:
                self._idle.append(synth)
                return
        synth.close()

    def speak(self, text: str, speed: float, rate: int | None) -> Iterator[bytes]:
        """16-bit mono PCM chunks of `text` spoken, one a sentence, resampled to `rate` if given;
        the Synthesizer goes back to the idle ones when the stream ends whole."""
        synth = self.borrow()
        try:
            chunks = synth.stream(text, speed=speed)  # checks speed and text before any audio
        except BaseException:
            self._give_back(synth)  # refused before it spoke: the worker is as it was
            raise
        return self._returning(synth, chunks, rate)

    def _returning(self, synth, chunks: Iterator[bytes], rate: int | None) -> Iterator[bytes]:
        whole = False
        try:
            if rate is None or rate == synth.sample_rate:
                yield from chunks
            else:
                yield from _resampled(chunks, synth.sample_rate, rate)
            whole = True
        finally:
            if whole:
                self._give_back(synth)
            else:  # cut off: the worker may still hold audio meant for this stream
                synth.close()

    @functools.cached_property
    def sample_rate(self) -> int:
        """The voice's own rate (a WAV answer's), read once from its config."""
        return synthesize.sample_rate(VOICE)

    def close(self) -> None:
        with self._idle_lock:
            self._closed, idle, self._idle = True, self._idle, []
        for synth in idle:
            synth.close()


def _check_model(
    served: bool, what: str, name: str | None, ours: str, aliases: tuple[str, ...]
) -> None:
    """A 404 unless `name` (None: the default) is `ours` or one of OpenAI's `aliases` for it."""
    if not served:
        raise APIError(
            404,
            f"{what} needs the speech extra, which this server lacks; install it with {EXTRA} "
            "and restart the server.",
            param="model",
            code="model_not_found",
        )
    if name not in (None, "", ours, *aliases):
        raise APIError(
            404,
            f"The model {name!r} is not served here for {what.lower()}; use {ours} (or "
            f"{aliases[0]}, which means the same here).",
            param="model",
            code="model_not_found",
        )


def _entry(name: str, kind: str, *, loaded: bool, **extra) -> dict:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "genforge",
        "genforge": {"kind": kind, "loaded": loaded, **extra},
    }


def _resampled(chunks: Iterator[bytes], rate_in: int, rate_out: int) -> Iterator[bytes]:
    """16-bit mono PCM at `rate_in` as 16-bit mono PCM at `rate_out`, chunk by chunk (FFmpeg's
    resampler keeps its filter's state between chunks, so the seams are clean)."""
    import av
    import numpy as np

    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_out)
    pts = 0
    for chunk in chunks:
        samples = np.frombuffer(chunk[: len(chunk) - len(chunk) % 2], dtype="<i2")
        if not len(samples):
            continue
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate_in, pts
        pts += len(samples)
        yield b"".join(bytes(f.planes[0])[: f.samples * 2] for f in resampler.resample(frame))
    with contextlib.suppress(ValueError):  # nothing was fed: nothing to flush
        tail = resampler.resample(None)
        if data := b"".join(bytes(f.planes[0])[: f.samples * 2] for f in tail):
            yield data
