"""A real `genforge serve` process on a free port, and the official OpenAI client pointed at it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key"
CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches for the network (it is closed here: chromium would retry forever).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m genforge serve ARGS` until stopped; `url` is its base URL."""

    def __init__(self, *args: str, ready_timeout: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "GENFORGE_API_KEY": ""}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "genforge", "serve", "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"genforge serve exited:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("genforge serve did not become ready")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read()


@pytest.fixture(scope="session")
def server(smollm2_path):
    """One server for the API tests: an API key, small limits to test them, the default model."""
    s = Server(
        "-m",
        MODEL,
        "--api-key",
        API_KEY,
        "--max-tokens",
        "512",
        "--max-body-bytes",
        "65536",
        "--ctx",
        "1024",
    )
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def metric(server: Server, name: str, labels: str = "") -> float:
    """A sample's value from /metrics (0 if absent)."""
    text = httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {API_KEY}"}).text
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def chromium_args() -> list[str]:
    """The browser's command line; a test module overrides this fixture to add to it."""
    return CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser(chromium_args):
    """Debian's chromium driven by Playwright (its own browser download does not work offline).

    One per test module: while Playwright's sync API is open, its event loop counts as running in
    the main thread, and a later test's `asyncio.run` there would fail."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; `make test` installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def image_run(tmp_path_factory):
    """A tiny text-to-image run of the library's own trainer (2 steps on the shapes scenes, seconds
    on a CPU): it draws noise, but it is a real model folder, so the server serves it as any."""
    from components import require_module

    require_module("diffusers", "image")
    require_module("PIL", "image")
    from genforge.train.images import ImageTrainConfig, train_images

    run = tmp_path_factory.mktemp("image") / "run"
    cfg = ImageTrainConfig(
        out=str(run),
        data="shapes",
        steps=2,
        batch_size=4,
        widths=(16, 32),
        text_dim=32,
        text_layers=1,
        eval_every=2,
    )
    train_images(cfg, progress=False)
    return run


@pytest.fixture(scope="session")
def image_server(image_run, tiny_model_dir):
    """A server whose image model is `image_run` (a random 2-layer chat model beside it: a server
    needs one, and this one loads in an instant)."""
    s = Server("-m", str(tiny_model_dir), "--image-model", str(image_run), "--api-key", API_KEY)
    yield s
    s.stop()
