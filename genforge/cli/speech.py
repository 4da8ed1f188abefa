"""`genforge transcribe` and `genforge speak`: speech to text and text to speech (genforge.speech)."""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Iterator

from genforge.errors import GenforgeError


def add_parsers(sub) -> None:
    from genforge.speech.formats import FORMATS  # the standard library only: --help stays fast

    t = sub.add_parser(
        "transcribe",
        help="write down what is said in a recording (Whisper)",
        description="Transcribe speech in an audio or video file with Whisper base (faster-whisper "
        "on the CPU, pulled on first use like the language models). Any format FFmpeg reads: "
        "WAV, MP3, FLAC, OGG/Opus, M4A, WebM, the sound of a video. The text goes to stdout or "
        "-o FILE; a progress bar over the audio shows on a terminal. Needs the speech extra: "
        "pip install 'genforge[speech]' (or make speech-setup).",
    )
    t.add_argument("file", metavar="FILE", help="the recording; - reads it from stdin")
    t.add_argument(
        "--language",
        default=None,
        metavar="CODE",
        help="the language spoken, as a code such as en, de, fr, ja (default: detected from the "
        "first 30 seconds)",
    )
    t.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text (default); json: OpenAI's verbose_json, with each word's start, end and "
        "probability; srt or vtt: subtitles, one cue per segment",
    )
    t.add_argument(
        "-o", "--out", default=None, metavar="FILE", help="write to FILE (default: stdout)"
    )
    t.add_argument(
        "-m",
        "--model",
        default="whisper-base",
        metavar="MODEL",
        help="whisper-base (the default) or a folder with a CTranslate2 Whisper model",
    )
    t.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: one per physical core)",
    )
    t.add_argument(
        "--max-hours",
        type=float,
        default=2.0,
        metavar="H",
        help="refuse recordings longer than this (default: 2); a recording is held in memory "
        "whole, with its spectrogram: about 2.7 GB an hour at the peak",
    )
    t.set_defaults(func=run_transcribe)

    s = sub.add_parser(
        "speak",
        help="say a text out loud into a WAV file (Piper)",
        description="Speak TEXT with a Piper voice (Joe, US English, CC0) into a 16-bit mono WAV "
        "file. Long text is spoken sentence by sentence and each sentence is written as soon as "
        "it is ready, so `-o - | aplay` starts playing before the text is done. Needs the speech "
        "extra: pip install 'genforge[speech]' (or make speech-setup); it brings piper-tts, "
        "which is GPL-3.0 and runs in a process of its own.",
    )
    s.add_argument("text", metavar="TEXT", help="what to say; - reads it from stdin as it comes")
    s.add_argument(
        "-o",
        "--out",
        default="out.wav",
        metavar="FILE",
        help="the .wav file to write (default: out.wav); - writes the WAV to stdout as it is "
        "spoken",
    )
    s.add_argument(
        "--voice",
        default=None,
        metavar="VOICE",
        help="joe (the default) or the path of a Piper voice's .onnx file (its .onnx.json beside it)",
    )
    s.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="how fast to talk: each sound's length is divided by X, so 2 is about 1.6 times as "
        "fast (0.25 to 4; default: 1, the voice's own pace)",
    )
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for the voice (default: OMP_NUM_THREADS if set, else onnxruntime's: "
        "one per physical core)",
    )
    s.set_defaults(func=run_speak)


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise GenforgeError(f"--threads must be at least 1, got {threads}.")


def run_transcribe(args: argparse.Namespace) -> int:
    from pathlib import Path

    _check_threads(args.threads)
    if args.max_hours <= 0:
        raise GenforgeError(f"--max-hours must be more than 0, got {args.max_hours}.")
    if args.out and Path(args.out).is_dir():
        raise GenforgeError(f"{args.out} is a folder; give the path of a file to write.")
    from genforge.speech import formats
    from genforge.speech.recognize import Recognizer, load_audio

    audio = sys.stdin.buffer if args.file == "-" else args.file
    samples = load_audio(audio, max_seconds=args.max_hours * 3600)  # bad audio: before the model
    recognizer = Recognizer(args.model, threads=args.threads)
    transcript = recognizer.transcribe(
        samples,
        language=args.language,
        word_timestamps=args.format == "json",
        progress=sys.stderr.isatty(),
    )
    text = formats.render(transcript, args.format)
    if args.out:
        formats.save(text, args.out)
        print(
            f"wrote {args.out} ({transcript.duration:.1f} s of audio, language {transcript.language})"
        )
    else:
        sys.stdout.write(text)
    return 0


def run_speak(args: argparse.Namespace) -> int:
    from genforge.speech import synthesize

    _check_threads(args.threads)
    synthesize.check_speed(args.speed)
    to_stdout = args.out == "-"
    if to_stdout and sys.stdout.isatty():
        raise GenforgeError(
            "-o - writes audio to stdout, which is a terminal here; pipe it (| aplay) or "
            "redirect it (> speech.wav)."
        )
    if not to_stdout:
        synthesize.check_wav_path(args.out)  # before the voice starts: nothing spoken is lost
    text = _stdin_text() if args.text == "-" else args.text
    with synthesize.Synthesizer(args.voice, threads=args.threads) as synth:
        chunks = synth.stream(text, speed=args.speed)
        if to_stdout:
            synthesize.write_wav(sys.stdout.buffer, synth.sample_rate, chunks)
            return 0
        path = synthesize.save_wav(args.out, synth.sample_rate, chunks)
    seconds = (path.stat().st_size - len(synthesize.wav_header(1))) / 2 / synth.sample_rate
    print(f"wrote {path} ({seconds:.1f} s of speech)")
    return 0


def _stdin_text() -> Iterator[str]:
    """stdin's text as it arrives, not line by line: a model's answer may be one long line."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while chunk := sys.stdin.buffer.read1(1 << 16):
        yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)
