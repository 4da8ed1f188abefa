"""Which files a folder holds, and whether a file is text: one answer for every reader.

The training corpus reader, RAG ingest and the server's index checks all walk folders with `walk`
and decide text from bytes with `decode_text`, so they agree on what a folder holds.

Design choices:
- Folders that hold tooling rather than documents (`SKIP_DIRS`) and hidden names are skipped.
- Symlinked folders are not followed (no loops); a symlinked file is listed like any other.
- Only regular files are listed: reading a FIFO blocks until a writer comes, a device may never
  end, and neither is a document. They are passed to `skipped` with the reason, never opened.
  `read_regular` re-checks the opened file, so one swapped in after the walk cannot block a read.
- Text is UTF-8 without NUL bytes in its first 8 KB (which is how UTF-16 and binaries look); a
  byte-order mark is dropped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from genforge.errors import GenforgeError

SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        "build",
        "dist",
    }
)
BINARY_PROBE = 8192  # bytes looked at for NULs

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotText(GenforgeError):
    """Why some bytes are not text (one sentence, shown after the file's path)."""


class Unreadable(GenforgeError):
    """Why a file was not read (one sentence, shown after the file's path)."""


def _irregular(mode: int) -> str | None:
    """Why a file of `mode` (st_mode) is not a regular file, or None if it is one."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def why_not_regular(path: Path) -> str | None:
    """Why `path` (symlinks followed) cannot be read as a regular file, or None if it can."""
    try:
        return _irregular(os.stat(path).st_mode)
    except OSError as e:
        return f"unreadable ({e.strerror})"


def walk(root: Path, skipped: Callable[[Path, str], None] | None = None) -> Iterator[Path]:
    """The regular files under the folder `root`: each folder's files by name, then its
    subfolders by name. Other non-hidden files go to `skipped(path, why)`."""
    for folder, dirs, names in os.walk(root):  # symlinked folders are not followed: no loops
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder, name)
            why = why_not_regular(path)
            if why is None:
                yield path
            elif skipped is not None:
                skipped(path, why)


def read_regular(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file `path`; `Unreadable` for anything else or a file larger
    than `max_bytes`. Opened without blocking, so a FIFO put in its place cannot hang the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise Unreadable(f"unreadable ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if why := _irregular(info.st_mode):
            raise Unreadable(why)
        if max_bytes is not None and info.st_size > max_bytes:
            raise Unreadable(f"unreadable (larger than {max_bytes >> 20} MB)")
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise Unreadable(f"unreadable ({e.strerror})") from None
    finally:
        os.close(fd)


def decode_text(data: bytes) -> str:
    """`data` as text; `NotText` if it looks binary or is not UTF-8."""
    if b"\x00" in data[:BINARY_PROBE]:
        raise NotText("looks binary (NUL bytes in its first 8 KB); UTF-16 text must be UTF-8")
    try:
        return data.decode("utf-8-sig")  # also plain UTF-8; drops a byte-order mark
    except UnicodeDecodeError as e:
        raise NotText(f"not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
