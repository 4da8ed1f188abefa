"""Reading a corpus: text files, folders, JSONL and the named corpora that install offline.

Every source becomes `Document`s (text + where it came from). Folders are walked by
`genforge.data.files.walk` (tooling folders, hidden names and non-regular files such as FIFOs are
left out); files that are not UTF-8 text are skipped and counted, never fed to a tokenizer. Exact
duplicates are dropped by a hash of their text; the validation split is chosen by that hash too, so
the same corpus always splits the same way, whatever order its files are read in.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from genforge import hub
from genforge.data.files import NotText, Unreadable, decode_text, read_regular, walk
from genforge.errors import GenforgeError

TEXT_SUFFIXES = frozenset(
    (".txt", ".md", ".markdown", ".rst", ".py", ".pyi", ".jsonl", ".text", ".tex", ".html", "")
)


def _pydocs() -> list[Path]:
    root = Path("/usr/share/doc/python3.11/html/_sources")
    if not root.is_dir():
        raise GenforgeError(
            "the pydocs corpus is Debian's python3.11-doc package; install it with "
            "`apt-get install python3.11-doc`."
        )
    return [root]


def _stdlib() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.iterdir() if p.name not in ("site-packages", "test", "idlelib"))


def _kjv() -> list[Path]:
    """The King James Bible as one text file per book, extracted once from Debian's compressed
    bible-kjv-text with its `bible` reader into the genforge cache."""
    folder = hub.home() / "corpora" / "kjv"
    if folder.is_dir():
        return [folder]
    if shutil.which("bible") is None:
        raise GenforgeError(
            "the kjv corpus is Debian's bible-kjv package; install it with "
            "`apt-get install bible-kjv`."
        )
    text = subprocess.run(
        ["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    books: dict[str, list[str]] = {}
    for line in text.splitlines():
        if m := re.match(r"(\d?[A-Za-z]+)(\d+):(\d+) (.*)", line):
            books.setdefault(m[1], []).append(m[4])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".kjv."))
    for i, (book, verses) in enumerate(books.items()):
        (tmp / f"{i + 1:02d}-{book}.txt").write_text("\n".join(verses) + "\n")
    tmp.chmod(0o755)
    tmp.rename(folder)
    return [folder]


NAMED = {"pydocs": _pydocs, "stdlib": _stdlib, "kjv": _kjv}


@dataclass
class Document:
    text: str
    source: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass
class ReadStats:
    files: int = 0
    documents: int = 0
    duplicates: int = 0
    skipped_binary: list[str] = field(default_factory=list)
    bytes: int = 0


def _files(source: str) -> list[Path]:
    if source in NAMED and not Path(source).exists():
        roots = NAMED[source]()
    else:
        roots = [Path(source).expanduser()]
    out = []
    for root in roots:
        if root.is_file():
            out.append(root)
        elif root.is_dir():
            # sorted by path parts, as before the walk was shared: the shards' order depends on it
            out += sorted(p for p in walk(root) if p.suffix.lower() in TEXT_SUFFIXES)
        else:
            known = ", ".join(NAMED)
            raise GenforgeError(
                f"{source} is neither a file, a folder nor a named corpus ({known})."
            )
    return out


def _text(path: Path) -> str | None:
    try:
        return decode_text(read_regular(path))
    except NotText:
        return None
    except Unreadable as e:
        raise GenforgeError(f"{path} is {e}; fix it or leave it out of the sources.") from None


def _jsonl(path: Path, text: str) -> Iterator[str]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise GenforgeError(f"{path}:{n} is not valid JSON; fix or remove that line.") from None
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            yield obj["text"]
        elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            yield "\n".join(
                f"{m.get('role', 'user')}: {m.get('content') or ''}"
                for m in obj["messages"]
                if isinstance(m, dict)
            )
        else:
            raise GenforgeError(
                f'{path}:{n} has neither a "text" string nor a "messages" list; '
                "each JSONL line needs one."
            )


def read_documents(sources: list[str], stats: ReadStats | None = None) -> Iterator[Document]:
    """Every distinct non-empty document of `sources` (files, folders, named corpora)."""
    stats = stats if stats is not None else ReadStats()
    seen: set[str] = set()
    for source in sources:
        for path in _files(source):
            text = _text(path)
            stats.files += 1
            if text is None:
                stats.skipped_binary.append(str(path))
                continue
            stats.bytes += len(text.encode())
            texts = _jsonl(path, text) if path.suffix.lower() == ".jsonl" else [text]
            for t in texts:
                if not t.strip():
                    continue
                doc = Document(t, str(path))
                if doc.digest in seen:
                    stats.duplicates += 1
                    continue
                seen.add(doc.digest)
                stats.documents += 1
                yield doc


def is_validation(doc: Document, fraction: float) -> bool:
    """Whether `doc` belongs to the held-out split (decided by its hash: stable across runs)."""
    return int(doc.digest[:8], 16) / 0xFFFFFFFF < fraction


def split(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, validation); with two or more documents, neither side is empty."""
    train = [d for d in docs if not is_validation(d, fraction)]
    val = [d for d in docs if is_validation(d, fraction)]
    if fraction > 0 and not val and len(train) > 1:
        val = [train.pop()]
    if not train and len(val) > 1:
        train = [val.pop()]
    return train, val


def no_text_error(sources: list[str], stats: ReadStats) -> GenforgeError:
    detail = (
        f"{len(stats.skipped_binary)} binary or non-UTF-8 file(s) skipped, e.g. "
        f"{stats.skipped_binary[0]}"
        if stats.skipped_binary
        else f"{stats.files} file(s) read, all empty"
    )
    return GenforgeError(
        f"found no text in {', '.join(sources)} ({detail}); give UTF-8 text, Markdown, reST, "
        "Python or JSONL files."
    )
