"""The sandbox's folder seen from outside: measured and removed whatever a program left there."""

from __future__ import annotations

import logging

from genforge.agents.workdir import MAX_ENTRIES, folder_over, remove_folder


def test_removal_gives_back_permissions_and_does_not_follow_links(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("kept")
    folder = tmp_path / "sandbox"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "a" / "b" / "f").write_text("x")
    (folder / "a" / "link").symlink_to(outside)
    (folder / "dirlink").symlink_to(tmp_path)
    (folder / "a" / "b").chmod(0)
    (folder / "a").chmod(0o500)
    remove_folder(str(folder))
    assert not folder.exists()
    assert outside.read_text() == "kept"


def test_removal_never_raises(tmp_path, caplog):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with caplog.at_level(logging.WARNING, logger="genforge.agents.workdir"):
        remove_folder(str(not_a_folder))
        remove_folder(str(tmp_path / "missing"))  # nothing there: nothing to say
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "could not remove the sandbox folder"
    ]


def test_folder_measure_counts_allocated_bytes_and_entries(tmp_path):
    (tmp_path / "sparse").write_bytes(b"")
    with open(tmp_path / "sparse", "r+b") as f:
        f.truncate(2**30)  # 1 GB long, nothing held
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "data").write_bytes(b"x" * 2**20)
    assert not folder_over(str(tmp_path), 2 * 2**20)
    assert folder_over(str(tmp_path), 2**19)  # the MB two folders down counts
    many = tmp_path / "many"
    many.mkdir()
    for i in range(MAX_ENTRIES):
        (many / str(i)).touch()
    assert folder_over(str(tmp_path), 2**30)
