"""The built-in tools: `python`, `calculator`, `rag_search`, `read_file` / `list_dir` /
`write_file` (inside one workspace folder) and `web_get` (only hosts on an allow-list).

Each is made by a function that takes what the tool needs (a workspace, a store, an allow-list)
and returns a `Tool`, so that `builtin_tools(["python", "calculator"], workspace=...)` gives an
agent exactly the tools a user enabled. Later capabilities add entries to `BUILTIN`; the loop does
not change.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genforge.agents.tools import Tool, tool
from genforge.errors import GenforgeError

# -- calculator --------------------------------------------------------------------------------

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MATH = "sqrt exp log log10 log2 sin cos tan asin acos atan atan2 sinh cosh tanh ceil floor"
_MATH += " factorial gcd lcm comb perm hypot degrees radians isqrt trunc"
_FUNCTIONS = {name: getattr(math, name) for name in _MATH.split()}
_FUNCTIONS.update(abs=abs, round=round, min=min, max=max)
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_MAX_EXPONENT = 10_000  # 9 ** 9 ** 9 would take the process's memory and time
_MAX_INT_DIGITS = 1_000


def evaluate_expression(expression: str) -> int | float:
    """The value of an arithmetic expression, read from its syntax tree (never `eval`)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"{expression!r} is not an arithmetic expression") from None
    value = _value(tree.body)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{expression!r} is not a number")
    return value


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"the exponent {right} is too large")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, int) and result.bit_length() > _MAX_INT_DIGITS * 3.33:
            raise ValueError("the result has more than 1000 digits")
        return result
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*(_value(a) for a in node.args))
    raise ValueError(
        f"{ast.unparse(node)!r} is not allowed: use numbers, + - * / // % **, "
        "parentheses, pi, e and math functions such as sqrt or log"
    )


def calculator() -> Tool:
    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression exactly, e.g. "(17 * 23) + sqrt(2) / 4".

        Args:
            expression: numbers, + - * / // % **, parentheses, pi, e and math functions
                (sqrt, log, sin, factorial, ...).
        """
        value = evaluate_expression(expression)
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)

    return calculator


# -- python, in the sandbox --------------------------------------------------------------------


def python(timeout: float = 10.0, memory_mb: int = 512) -> Tool:
    from genforge.agents.sandbox import run_python

    @tool
    def python(code: str) -> str:
        """Run a Python program in a sandbox (no network, no files outside its own temporary
        folder, time and memory limits) and return what it printed. Print the values you need.

        Args:
            code: a complete Python program; print() what you want to see.
        """
        result = run_python(code, timeout=timeout, memory_mb=memory_mb)
        return sandbox_report(result)

    return python


def sandbox_report(result) -> str:
    out = result.stdout.rstrip()
    if result.status == "passed":
        return out or "(the program printed nothing; print() the values you need)"
    ending = {
        "timeout": "it ran out of time",
        "memory": "it ran out of memory",
        "blocked": "the sandbox refused something it tried",
    }.get(result.status, "it failed")
    err = result.stderr.strip()
    parts = [f"the program did not finish: {ending}."]
    if out:
        parts.append(f"stdout:\n{out}")
    if err:
        parts.append(f"stderr:\n{err[-1500:]}")
    return "\n".join(parts)


# -- rag_search --------------------------------------------------------------------------------


def rag_search(store: str | Path, k: int = 4) -> Tool:
    from genforge.rag.retrieve import Retriever
    from genforge.rag.stores import open_store

    retriever = Retriever(open_store(store, create=False))

    @tool
    def rag_search(query: str) -> str:
        """Search the user's documents and return the most relevant passages with their sources.

        Args:
            query: what to look for, in a few words.
        """
        return passages(retriever.search(query, k=k))

    return rag_search


def passages(hits, relative_to: Path | None = None) -> str:
    """Search hits as rag_search gives them to the model: numbered, each with where it is from."""
    if not hits:
        return "no passages found."
    return "\n\n".join(
        f"[{i}] {h.where(relative_to)}\n{h.chunk.text}" for i, h in enumerate(hits, 1)
    )


# -- the workspace -----------------------------------------------------------------------------

MAX_READ_BYTES = 100_000


class Workspace:
    """One folder that file tools read and write; nothing outside it, through `..` or a symlink."""

    def __init__(self, root: str | Path):
        self.root = Path(os.path.realpath(Path(root).expanduser()))
        if not self.root.is_dir():
            raise GenforgeError(f"workspace {root} is not a folder; create it or pick another.")

    def path(self, relative: str) -> Path:
        """The real path of `relative` inside the workspace; ValueError for anything else."""
        if not isinstance(relative, str) or "\x00" in relative:
            raise ValueError("give a path relative to the workspace")
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts:
            raise ValueError(
                f"{relative!r} is outside the workspace: give a path relative to it, without '..'"
            )
        real = Path(os.path.realpath(self.root / relative))
        if real != self.root and self.root not in real.parents:
            raise ValueError(f"{relative!r} leads outside the workspace (a symbolic link)")
        return real

    def check_open(self, fd: int, relative: str) -> None:
        """After opening: the file the descriptor holds is inside (a link swapped in between the
        check and the open is caught here)."""
        real = Path(os.path.realpath(f"/proc/self/fd/{fd}"))
        if real.exists() and real != self.root and self.root not in real.parents:
            raise ValueError(f"{relative!r} leads outside the workspace (a symbolic link)")


def workspace_tools(root: str | Path) -> dict[str, Tool]:
    """read_file, list_dir and write_file, confined to the folder `root`."""
    ws = Workspace(root)

    @tool
    def read_file(path: str) -> str:
        """Read a text file of the workspace.

        Args:
            path: the file's path relative to the workspace.
        """
        real = ws.path(path)
        if not real.is_file():
            raise ValueError(f"{path!r} is not a file of the workspace")
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            ws.check_open(fd, path)
            data = f.read(MAX_READ_BYTES + 1)
        text = data[:MAX_READ_BYTES].decode("utf-8", errors="replace")
        return text + (
            "\n[... the rest of the file is left out]" if len(data) > MAX_READ_BYTES else ""
        )

    @tool
    def list_dir(path: str = ".") -> str:
        """List a folder of the workspace: one entry per line, folders ending in "/".

        Args:
            path: the folder's path relative to the workspace ("." for the workspace itself).
        """
        real = ws.path(path)
        if not real.is_dir():
            raise ValueError(f"{path!r} is not a folder of the workspace")
        lines = []
        for entry in sorted(os.scandir(real), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                lines.append(entry.name + "/")
            else:
                size = entry.stat(follow_symlinks=False).st_size
                lines.append(f"{entry.name} ({size} bytes)")
        return "\n".join(lines) or "(empty)"

    @tool(dangerous=True)
    def write_file(path: str, content: str) -> str:
        """Write a text file in the workspace, replacing it if it exists.

        Args:
            path: the file's path relative to the workspace.
            content: the whole text of the file.
        """
        real = ws.path(path)
        real.parent.mkdir(parents=True, exist_ok=True)
        ws.path(str(real.parent.relative_to(ws.root)))  # a folder made inside stays inside
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content)
            os.replace(tmp, real)  # atomic: a reader sees the old file or the new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return f"wrote {len(content.encode())} bytes to {path}"

    return {t.name: t for t in (read_file, list_dir, write_file)}


# -- web_get -----------------------------------------------------------------------------------

MAX_WEB_BYTES = 200_000


def web_get(allow: list[str], timeout: float = 10.0) -> Tool:
    """GET pages from the hosts in `allow` only (redirects to other hosts are refused)."""
    from urllib.parse import urljoin, urlsplit

    hosts = {h.lower().strip() for h in allow if h.strip()}
    if not hosts:
        raise GenforgeError("web_get needs an allow-list of hosts (--web-allow example.org).")

    def allowed(url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        if parts.hostname.lower() not in hosts:
            raise ValueError(
                f"{parts.hostname} is not on the allow-list ({', '.join(sorted(hosts))})"
            )
        return url

    @tool
    def web_get(url: str) -> str:
        """Fetch a web page (text) from an allowed host.

        Args:
            url: the page's http(s) URL.
        """
        import httpx

        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            for _ in range(5):
                response = client.get(allowed(url))
                if not response.is_redirect:
                    break
                url = urljoin(url, response.headers.get("location", ""))
            else:
                raise ValueError("too many redirects")
        body = response.content[:MAX_WEB_BYTES].decode(response.encoding or "utf-8", "replace")
        return f"HTTP {response.status_code}\n{body}"

    return web_get


# -- by name -----------------------------------------------------------------------------------

BUILTIN = ("python", "calculator", "rag_search", "read_file", "list_dir", "write_file", "web_get")


def builtin_tools(
    names: list[str],
    *,
    workspace: str | Path | None = None,
    store: str | Path | None = None,
    web_allow: list[str] | None = None,
) -> list[Tool]:
    """The built-in tools named in `names`, made with what each needs."""
    unknown = [n for n in names if n not in BUILTIN]
    if unknown:
        raise GenforgeError(
            f"no built-in tool named {', '.join(map(repr, unknown))}; "
            f"the built-in tools are {', '.join(BUILTIN)}."
        )
    out: list[Tool] = []
    files: dict[str, Tool] | None = None
    for name in dict.fromkeys(names):
        if name == "python":
            out.append(python())
        elif name == "calculator":
            out.append(calculator())
        elif name == "rag_search":
            if store is None:
                raise GenforgeError("rag_search needs a document store (--rag FILE).")
            out.append(rag_search(store))
        elif name == "web_get":
            out.append(web_get(web_allow or []))
        else:
            if workspace is None:
                raise GenforgeError(f"{name} needs a workspace folder (--workspace DIR).")
            files = files or workspace_tools(workspace)
            out.append(files[name])
    return out
