"""Skips for a missing component say what to install, and fail under CI (tests/components.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
PROBE = """\
    import pytest
    from components import require, require_module

    def test_module():
        require_module("genforge_no_such_module", "llama-cpp")

    def test_flag():
        require("chromium", False, "chromium")

    def test_importorskip():
        pytest.importorskip("genforge_no_such_module")

    def test_other_skip():
        pytest.skip("not a git checkout")

    def test_present():
        require_module("json")
"""

MODULE_PROBE = 'import pytest\n\npytest.importorskip("genforge_no_such_module")\n'


def run_probe(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(PROBE))
    (tmp_path / "test_probe_module.py").write_text(MODULE_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": "true"} if ci else {})
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "components",
        "-rsfE",
        "-p",
        "no:cacheprovider",
    ]
    command += ["--continue-on-collection-errors"]
    return subprocess.run(
        [*command, "--rootdir", ".", "-c", os.devnull],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("ci", [False, True], ids=["local", "ci"])
def test_missing_components_skip_locally_and_fail_under_ci(tmp_path, ci):
    out = run_probe(tmp_path, ci).stdout
    if ci:
        assert "3 failed, 1 passed, 1 skipped, 1 error" in out, out
        assert "ERROR test_probe_module.py - CI's set-up should have installed this" in out
        for name in ("test_module", "test_flag", "test_importorskip"):
            assert f"FAILED test_probe.py::{name} - CI's set-up should have installed this" in out
    else:
        assert "1 passed, 5 skipped" in out, out
        assert "install it with: make setup-dev (llama-cpp-python" in out
        assert "install it with: make browser (apt-get install chromium" in out
    assert "SKIPPED [1] " in out and "not a git checkout" in out  # not a component: still a skip
