"""Speech to text: Whisper (CTranslate2) through faster-whisper, on the CPU.

Design choices:
- faster-whisper's `WhisperModel` on a pulled model folder (`genforge pull whisper-base`), never a
  hub name, so nothing is downloaded at run time. The weights are fp16 on disk and run as int8
  (CTranslate2 quantizes them while loading): faster than fp32 on a CPU, the same words on clear
  speech.
- Audio goes through faster-whisper's own decoder (PyAV, which bundles FFmpeg's libraries): any
  format FFmpeg reads, resampled to 16 kHz mono. It is checked first, one sentence for each way it
  can be wrong: empty, not audio, no audio stream, longer than `max_seconds` (read from the file's
  header when it has one, so a ten-hour file is refused before it is decoded into memory).
- The model works on genforge's compute thread (genforge/compute.py), one 30-second window per job:
  transcription and the language models take turns on the cores, and a long file holds up a
  chat by one window at a time, not by the whole file.
- Word timestamps come from faster-whisper's cross-attention alignment; they are on by default, as
  every format but plain text can use them.
- A `Transcript` is plain data; formats.py turns it into text, JSON, SRT or WebVTT.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from genforge import compute, hub
from genforge.errors import GenforgeError

if TYPE_CHECKING:
    import numpy as np

    # a file's path, its bytes, a binary file object, or the samples load_audio returned
    AudioInput = str | os.PathLike | bytes | BinaryIO | np.ndarray

log = logging.getLogger(__name__)

INSTALL = "pip install 'genforge[speech]' (or make speech-setup)"
DEFAULT_MODEL = "whisper-base"
SAMPLE_RATE = 16_000  # what Whisper hears
# Longer audio is refused: the whole recording is held in memory, and faster-whisper's spectrogram of
# all of it peaks at about 2.7 GB an hour (460 MB measured for 10 minutes).
MAX_SECONDS = 2 * 3600.0
FORMATS_HINT = "WAV, MP3, FLAC, OGG/Opus, M4A or WebM"


class BadAudio(GenforgeError):
    """Audio that cannot be transcribed as given (one sentence, for the user)."""


@dataclass(frozen=True)
class Word:
    start: float  # seconds from the start of the audio
    end: float
    word: str  # as Whisper wrote it: a leading space, punctuation attached
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float  # seconds from the start of the audio
    end: float
    text: str
    words: tuple[Word, ...]  # empty when word timestamps were not asked for
    # Whisper's own figures, which OpenAI's verbose_json reports for each segment
    seek: int
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str  # the code Whisper heard or was told, e.g. "en"
    duration: float  # seconds of audio
    segments: tuple[Segment, ...]

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]


def available() -> bool:
    """Whether faster-whisper is installed (nothing is imported)."""
    return importlib.util.find_spec("faster_whisper") is not None


class Recognizer:
    """A Whisper model, loaded once; `transcribe` as many recordings with it as you like."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        threads: int | None = None,
        compute_type: str = "int8",
        progress: bool = True,
    ):
        if not available():
            raise GenforgeError(f"genforge transcribe needs the speech extra: {INSTALL}.")
        self.name = model
        self.folder = model_folder(model, progress=progress)
        self.threads = threads or default_threads()
        self._model = compute.run(_load, self.folder, self.threads, compute_type)

    def transcribe(
        self,
        audio: AudioInput,
        *,
        language: str | None = None,
        word_timestamps: bool = True,
        beam_size: int = 5,
        prompt: str | None = None,
        temperature: float | None = None,
        max_seconds: float = MAX_SECONDS,
        progress: bool = False,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcript:
        """The words spoken in `audio`: a path, the file's bytes, a binary file object, or the
        16 kHz samples `load_audio` returned.

        language: a code such as "en" or "de"; None detects it from the first 30 seconds.
        prompt: text that comes before the audio (names, spellings, the style to write in), as
        Whisper's initial prompt. temperature: sample at this one temperature; None decodes
        greedily (beam search) and falls back to sampling at rising temperatures only where the
        text repeats itself or is unlikely, as Whisper does.
        progress: a bar over the audio's duration on stderr. on_segment: called with each segment
        as it is done (a server can stream them)."""
        import numpy as np
        from tqdm import tqdm

        language = self._check_language(language)
        if isinstance(audio, np.ndarray):
            samples = _check_length(audio.astype(np.float32, copy=False), "the audio", max_seconds)
        else:
            samples = load_audio(audio, max_seconds=max_seconds)
        duration = len(samples) / SAMPLE_RATE
        pieces, info = compute.run(
            self._model.transcribe,
            samples,
            language=language,
            beam_size=beam_size,
            word_timestamps=word_timestamps,
            initial_prompt=prompt or None,
            **({} if temperature is None else {"temperature": temperature}),
        )
        segments = []
        with tqdm(
            total=duration,
            desc="transcribing",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio "
            "[{elapsed}<{remaining}]",
            disable=not progress,
        ) as bar:
            # one window per job: other model work gets the compute thread in between
            while (piece := compute.run(next, pieces, None)) is not None:
                segment = _segment(len(segments), piece)
                segments.append(segment)
                bar.update(max(0.0, min(segment.end, duration) - bar.n))
                if on_segment is not None:
                    on_segment(segment)
            bar.update(max(0.0, duration - bar.n))
        text = "".join(s.text for s in segments).strip()
        return Transcript(text, info.language, duration, tuple(segments))

    def _check_language(self, language: str | None) -> str | None:
        if language is None:
            return None
        code = language.strip().lower()
        if code not in self._model.supported_languages:
            raise GenforgeError(
                f"unknown language {language!r}; give a code Whisper knows, such as en, de, fr, "
                f"es, ja or zh ({len(self._model.supported_languages)} in all), or leave it out "
                "to detect it."
            )
        return code


_RECOGNIZERS: dict[tuple, Recognizer] = {}
_RECOGNIZERS_LOCK = threading.Lock()


def recognizer(
    model: str = DEFAULT_MODEL, *, threads: int | None = None, compute_type: str = "int8"
) -> Recognizer:
    """The process's `Recognizer` for these settings, loaded on first use."""
    key = (model, threads, compute_type)
    with _RECOGNIZERS_LOCK:
        if key not in _RECOGNIZERS:
            _RECOGNIZERS[key] = Recognizer(model, threads=threads, compute_type=compute_type)
        return _RECOGNIZERS[key]


def transcribe(
    audio: AudioInput,
    *,
    model: str = DEFAULT_MODEL,
    threads: int | None = None,
    compute_type: str = "int8",
    **options,
) -> Transcript:
    """The words spoken in `audio`; the model is loaded once per process. `options` are
    `Recognizer.transcribe`'s: language, word_timestamps, beam_size, max_seconds, progress,
    on_segment."""
    return recognizer(model, threads=threads, compute_type=compute_type).transcribe(
        audio, **options
    )


def model_folder(model: str, *, progress: bool = True) -> Path:
    """A speech recognition model's name (pulled on first use) or a CTranslate2 Whisper folder."""
    known = hub.KNOWN.get(model)
    if known is not None and known.kind == "speech-to-text":
        return hub.named_path(model, progress=progress).parent
    path = Path(model).expanduser()
    if path.is_dir() and (path / "model.bin").is_file() and (path / "tokenizer.json").is_file():
        return path
    if path.is_dir():
        raise GenforgeError(
            f"{path} is not a Whisper model folder: it needs model.bin, config.json and "
            "tokenizer.json (a CTranslate2 conversion, as faster-whisper reads)."
        )
    raise hub.unknown_model(model, kind="speech-to-text")


def default_threads() -> int:
    """OMP_NUM_THREADS when set (CTranslate2 has its own thread pool), else one per physical core."""
    if (threads := os.environ.get("OMP_NUM_THREADS", "")).isdigit() and int(threads) > 0:
        return int(threads)
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _load(folder: Path, threads: int, compute_type: str):
    from faster_whisper import WhisperModel

    log.info("loading %s (%s, %d threads)", folder, compute_type, threads)
    return WhisperModel(
        str(folder), device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=1
    )


def _segment(index: int, piece) -> Segment:
    words = tuple(
        Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in piece.words or ()
    )
    return Segment(
        id=index,  # from 0, as OpenAI's are (faster-whisper counts from 1)
        start=float(piece.start),
        end=float(piece.end),
        text=piece.text,
        words=words,
        seek=piece.seek,
        tokens=tuple(piece.tokens),
        temperature=float(piece.temperature or 0.0),
        avg_logprob=float(piece.avg_logprob),
        compression_ratio=float(piece.compression_ratio),
        no_speech_prob=float(piece.no_speech_prob),
    )


# -- decoding and checking the audio ---------------------------------------------------------------


def load_audio(
    audio: str | os.PathLike | bytes | BinaryIO, *, max_seconds: float = MAX_SECONDS
) -> np.ndarray:
    """`audio` decoded to 16 kHz mono float32 samples, or a `BadAudio` saying what is wrong."""
    if not available():
        raise GenforgeError(f"genforge transcribe needs the speech extra: {INSTALL}.")
    import av
    from faster_whisper import decode_audio

    source, name = _source(audio)
    seconds = _probe(source, name)
    if seconds is not None and seconds > max_seconds:
        raise _too_long(name, seconds, max_seconds)
    try:
        samples = decode_audio(source, sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, ValueError, IndexError) as e:  # PyAV's types for broken files
        raise BadAudio(f"{name} could not be decoded ({e}); give a {FORMATS_HINT} file.") from None
    return _check_length(samples, name, max_seconds)


def _check_length(samples: np.ndarray, name: str, max_seconds: float) -> np.ndarray:
    if samples.ndim != 1:
        raise BadAudio(f"{name} has shape {samples.shape}; give mono samples, one dimension.")
    if len(samples) == 0:
        raise BadAudio(f"{name} holds no audio samples; give a recording with sound in it.")
    if len(samples) / SAMPLE_RATE > max_seconds:
        raise _too_long(name, len(samples) / SAMPLE_RATE, max_seconds)
    return samples


def _source(audio: str | os.PathLike | bytes | BinaryIO) -> tuple[str | BinaryIO, str]:
    """What PyAV opens (a path, or a seekable file object at its start) and the input's name."""
    if isinstance(audio, str | os.PathLike):
        path = Path(audio)
        if not path.exists():
            raise BadAudio(f"{path} does not exist; check the path.")
        if not path.is_file():
            raise BadAudio(f"{path} is not a file; give an audio file such as a {FORMATS_HINT}.")
        if path.stat().st_size == 0:
            raise BadAudio(f"{path} is empty (0 bytes); give a recording in a {FORMATS_HINT} file.")
        return str(path), str(path)
    if isinstance(audio, bytes | bytearray | memoryview):
        data, name = bytes(audio), "the audio"
    else:
        name = str(getattr(audio, "name", "") or "the audio")
        if audio.seekable():
            start = audio.tell()
            empty = audio.read(1) == b""
            audio.seek(start)
            if not empty:
                return audio, name
            data = b""
        else:  # a pipe: PyAV reads the file twice (its header, then the samples)
            data = audio.read()
    if not data:
        raise BadAudio(f"{name} is empty (0 bytes); give a recording in a {FORMATS_HINT} file.")
    return io.BytesIO(data), name


def _probe(source: str | BinaryIO, name: str) -> float | None:
    """The length in seconds that the file's header gives (None if it gives none), after checking
    that FFmpeg can open it and that it has an audio stream."""
    import av

    start = None if isinstance(source, str) else source.tell()
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if container.format.name in _TEXT_ART:  # FFmpeg's last guess for any bytes
                raise av.error.InvalidDataError(0, "text art")
            if not container.streams.audio:
                kinds = " and ".join(sorted({s.type for s in container.streams})) or "nothing"
                raise BadAudio(
                    f"{name} has no audio stream (FFmpeg reads it as {container.format.name}, "
                    f"with {kinds} only); give a {FORMATS_HINT} file."
                )
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
            return None
    except av.error.FFmpegError:
        raise BadAudio(
            f"{name} is not audio that FFmpeg can read; give a {FORMATS_HINT} file."
        ) from None
    finally:
        if start is not None:
            source.seek(start)


# FFmpeg's demuxers for text drawn with characters (ANSI art and the like): what it reads a text
# file, or bytes it cannot place, as when no file name says otherwise. Never audio.
_TEXT_ART = {"tty", "bin", "adf", "idf", "xbin"}


def _too_long(name: str, seconds: float, limit: float) -> BadAudio:
    return BadAudio(
        f"{name} is {_clock(seconds)} long, over the limit of {_clock(limit)}; split it into "
        "shorter files (e.g. ffmpeg -i IN -f segment -segment_time 3600 -c copy part%d.EXT) "
        "or raise the limit (genforge transcribe --max-hours, max_seconds in Python)."
    )


def _clock(seconds: float) -> str:
    """A length as a person says it: 2 h 05 min, 3 min 20 s, 0.4 s."""
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
