"""The web UI reads citation markers as genforge.rag.cite does: the same table of cases, run by node."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import genforge.serve

sys.path.insert(0, str(Path(__file__).parents[1] / "rag"))
from test_cite import MARKER_CASES  # noqa: E402

NODE = shutil.which("node")
SCRIPT = Path(genforge.serve.__file__).parent / "static" / "citations.js"


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_web_ui_markers_match_the_python_reader(tmp_path):
    module = tmp_path / "citations.mjs"  # .mjs: an ES module whatever node's default
    module.write_text(SCRIPT.read_text())
    cases = [[answer, count] for answer, count, _ in MARKER_CASES]
    run = subprocess.run(
        [NODE, "--input-type=module", "-e", RUNNER.format(module=json.dumps(module.as_uri()))],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got = json.loads(run.stdout)
    for (answer, _, expected), numbers in zip(MARKER_CASES, got, strict=True):
        assert [tuple(n) for n in numbers] == expected, answer


RUNNER = """
import {{ markers }} from {module};
let input = "";
for await (const chunk of process.stdin) input += chunk;
const cases = JSON.parse(input);
console.log(JSON.stringify(cases.map(([text, count]) => markers(text, count).map((m) => m.numbers))));
"""
