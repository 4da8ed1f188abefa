"""The built-in tools: calculator, workspace files, web_get, python in the sandbox, by name."""

from __future__ import annotations

import http.server
import os
import threading

import pytest

from genforge.agents.builtin import (
    builtin_tools,
    calculator,
    evaluate_expression,
    python,
    web_get,
    workspace_tools,
)
from genforge.agents.tools import run_tool
from genforge.errors import GenforgeError

# -- calculator --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1234 * 5678 + 91", 7006743),
        ("(17 - 5) / 4", 3.0),
        ("2 ** 10 // 3 % 7", 341 % 7),
        ("-3 + +4", 1),
        ("sqrt(16) + factorial(5)", 124.0),
        ("round(pi, 3)", 3.142),
        ("max(1, 7, 3)", 7),
    ],
)
def test_the_calculator_evaluates_arithmetic(expression, value):
    assert evaluate_expression(expression) == pytest.approx(value)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "().__class__.__bases__",
        "open('/etc/passwd')",
        "x + 1",
        "9 ** 9 ** 9",
        "[1, 2]",
        "lambda: 1",
        "'a' * 3",
        "1 if 1 else 2",
    ],
)
def test_the_calculator_refuses_anything_but_arithmetic(expression):
    result = run_tool(calculator(), {"expression": expression})
    assert result.error and "ValueError" in result.output


def test_the_calculator_writes_whole_floats_as_integers():
    assert calculator()(expression="10 / 2") == "5"
    assert calculator()(expression="1 / 3") == repr(1 / 3)


# -- workspace ---------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "a.txt").write_text("alpha\n")
    (tmp_path / "secret.txt").write_text("do not read")
    return root


def test_files_are_read_listed_and_written_inside_the_workspace(workspace):
    tools = workspace_tools(workspace)
    assert tools["read_file"](path="notes/a.txt") == "alpha\n"
    assert tools["list_dir"](path=".") == "notes/"
    assert tools["list_dir"](path="notes") == "a.txt (6 bytes)"
    assert tools["write_file"].dangerous and not tools["read_file"].dangerous
    tools["write_file"](path="out/b.txt", content="beta")
    assert (workspace / "out" / "b.txt").read_text() == "beta"
    assert not [p for p in (workspace / "out").iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("path", ["../secret.txt", "/etc/passwd", "notes/../../secret.txt"])
def test_paths_outside_the_workspace_are_refused(workspace, path):
    tools = workspace_tools(workspace)
    for name, args in [
        ("read_file", {"path": path}),
        ("list_dir", {"path": path}),
        ("write_file", {"path": path, "content": "x"}),
    ]:
        result = run_tool(tools[name], args)
        assert result.error and "outside the workspace" in result.output
    assert (workspace.parent / "secret.txt").read_text() == "do not read"


def test_a_symbolic_link_cannot_lead_out(workspace):
    os.symlink(workspace.parent / "secret.txt", workspace / "link.txt")
    os.symlink(workspace.parent, workspace / "up")
    tools = workspace_tools(workspace)
    assert "symbolic link" in run_tool(tools["read_file"], {"path": "link.txt"}).output
    assert "symbolic link" in run_tool(tools["list_dir"], {"path": "up"}).output
    written = run_tool(tools["write_file"], {"path": "up/new.txt", "content": "x"})
    assert written.error and not (workspace.parent / "new.txt").exists()
    written = run_tool(tools["write_file"], {"path": "link.txt", "content": "x"})
    assert written.error and (workspace.parent / "secret.txt").read_text() == "do not read"


def test_a_missing_workspace_is_a_clear_error(tmp_path):
    with pytest.raises(GenforgeError, match="not a folder"):
        workspace_tools(tmp_path / "nowhere")


# -- web_get -----------------------------------------------------------------------------------


@pytest.fixture
def local_site():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/away":
                self.send_response(302)
                self.send_header("Location", "http://elsewhere.invalid/")
                self.end_headers()
                return
            body = b"hello from the allowed host"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_web_get_fetches_only_from_the_allow_list(local_site):
    fetch = web_get(["127.0.0.1"])
    assert fetch(url=f"{local_site}/page").endswith("hello from the allowed host")
    refused = run_tool(fetch, {"url": "http://example.invalid/"})
    assert refused.error and "not on the allow-list" in refused.output
    redirected = run_tool(fetch, {"url": f"{local_site}/away"})
    assert redirected.error and "elsewhere.invalid" in redirected.output
    assert run_tool(fetch, {"url": "file:///etc/passwd"}).error


def test_web_get_is_off_without_an_allow_list():
    with pytest.raises(GenforgeError, match="allow-list"):
        web_get([])


# -- python, in the sandbox --------------------------------------------------------------------


def test_python_runs_code_and_returns_what_it_printed():
    assert python()(code="print(sum(i * i for i in range(1, 21)))") == "2870"
    failed = python()(code="raise ValueError('boom')")
    assert "did not finish" in failed and "ValueError: boom" in failed


@pytest.mark.parametrize(
    ("code", "ending"),
    [
        ("open('/etc/passwd').read()", "refused"),  # reading outside its folder
        ("import socket; socket.create_connection(('127.0.0.1', 22))", "refused"),  # network
        ("import os\nwhile True: os.fork()", "refused"),  # fork bomb
        ("while True: pass", "out of time"),  # infinite loop
        ("x = bytearray(2 ** 34)", "out of memory"),  # memory bomb
    ],
)
def test_the_python_tool_holds_what_the_sandbox_holds(code, ending):
    out = python(timeout=2.0)(code=code)
    assert "did not finish" in out and ending in out


def test_an_output_flood_comes_back_cut():
    out = python(timeout=5.0)(code="while True: print('x' * 1000)")
    assert len(out) < 10_000


# -- by name -----------------------------------------------------------------------------------


def test_builtin_tools_are_made_by_name_with_what_they_need(workspace):
    names = [
        t.name for t in builtin_tools(["calculator", "read_file", "list_dir"], workspace=workspace)
    ]
    assert names == ["calculator", "read_file", "list_dir"]
    with pytest.raises(GenforgeError, match="no built-in tool named 'shell'"):
        builtin_tools(["shell"])
    with pytest.raises(GenforgeError, match="--rag"):
        builtin_tools(["rag_search"])
    with pytest.raises(GenforgeError, match="allow-list"):
        builtin_tools(["web_get"])
