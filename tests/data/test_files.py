"""The one folder walk and the one text check that every reader of user folders shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from genforge.data.files import NotText, Unreadable, decode_text, read_regular, walk


def test_walk_lists_regular_files_and_says_why_it_skips_others(tmp_path, fifo):
    for name in ("b.md", "a.txt", "sub/c.py", "sub/deeper/d.rst", ".hidden.md", ".git/x.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text")
    for skipped_dir in ("node_modules", "build", "__pycache__", ".cache"):
        (tmp_path / skipped_dir).mkdir()
        (tmp_path / skipped_dir / "y.md").write_text("tooling")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "z.md").write_text("linked")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)  # a symlinked folder: not followed
    (tmp_path / "sub" / "link.md").symlink_to(tmp_path / "outside" / "z.md")
    (tmp_path / "sub" / "dangling.md").symlink_to(tmp_path / "nowhere")
    skipped = []
    with fifo(tmp_path / "sub" / "feed.md"):
        found = list(walk(tmp_path, lambda path, why: skipped.append((path.name, why))))
    rel = [str(p.relative_to(tmp_path)) for p in found]
    assert rel == [
        "a.txt",
        "b.md",
        "outside/z.md",
        "sub/c.py",
        "sub/link.md",
        "sub/deeper/d.rst",
    ]
    assert skipped == [
        ("dangling.md", "unreadable (No such file or directory)"),
        ("feed.md", "not a regular file (a FIFO)"),
    ]


def test_read_regular_refuses_what_is_not_a_regular_file(tmp_path, fifo):
    (tmp_path / "a.txt").write_bytes(b"x" * 100)
    assert read_regular(tmp_path / "a.txt") == b"x" * 100
    with pytest.raises(Unreadable, match="larger than 0 MB"):
        read_regular(tmp_path / "a.txt", max_bytes=10)
    with fifo(tmp_path / "feed.txt") as feed, pytest.raises(Unreadable, match="a FIFO"):
        read_regular(feed)
    with pytest.raises(Unreadable, match="a folder"):
        read_regular(tmp_path)
    with pytest.raises(Unreadable, match="No such file"):
        read_regular(tmp_path / "missing.txt")
    with pytest.raises(Unreadable, match="character device"):  # it would never end
        read_regular(Path("/dev/zero"))


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"plain", "plain"),
        ("caf\u00e9".encode(), "caf\u00e9"),
        (b"\xef\xbb\xbfwith a mark", "with a mark"),
    ],
)
def test_decode_text(data, text):
    assert decode_text(data) == text


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x89PNG\x00\x00", "looks binary"),
        ("utf-16".encode("utf-16"), "looks binary"),
        ("caf\u00e9".encode("latin-1"), r"not UTF-8 text \(byte 3\)"),
    ],
)
def test_not_text(data, why):
    with pytest.raises(NotText, match=why):
        decode_text(data)
