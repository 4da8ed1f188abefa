"""The README's quick start in a fresh clone: no .venv, an empty model cache (slow: builds a venv)."""

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_make_run_in_a_fresh_clone_answers_piped_question(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "genforge"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["GENFORGE_HOME"] = str(tmp_path / "cache")
    r = subprocess.run(
        ["make", "run"],
        cwd=clone,
        input="Name the capital of France.\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # An answer, and only the answer, on stdout: the set-up (venv, pip, the model pull) is on stderr.
    assert r.stdout.strip(), r.stderr[-2000:]
    noise = ("Successfully installed", "pulling it now", "Requirement already", "make:")
    assert not any(w in r.stdout for w in noise), r.stdout
    assert list((tmp_path / "cache" / "models" / "smollm2-135m-instruct").glob("*.gguf"))
    # The answer above is sampled; the same installed command answers correctly when greedy.
    greedy = subprocess.run(
        [str(clone / ".venv" / "bin" / "genforge"), "chat", "--temperature", "0"],
        input="Name the capital of France.\n",
        capture_output=True,
        text=True,
        env=env,
    )
    assert "Paris" in greedy.stdout, greedy.stderr[-2000:]
