"""The Model Context Protocol against real servers: `genforge mcp serve` over stdio, and a small
server of the SDK's written here, over stdio and streamable HTTP."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from components import require_module

require_module("mcp", "agents")

from genforge.agents.backends import Call, Reply  # noqa: E402
from genforge.agents.loop import Agent, FinalAnswer, ToolStep  # noqa: E402
from genforge.agents.mcp import MCPToolError, connect  # noqa: E402
from genforge.agents.mcp_server import generate_tool  # noqa: E402
from genforge.agents.tools import run_tool  # noqa: E402
from genforge.errors import GenforgeError  # noqa: E402

GENFORGE_SERVE = shlex.join([sys.executable, "-m", "genforge", "mcp", "serve"])

# Written into tmp_path and run: `add` (read-only), `fail` (raises), `erase` (no hints, so
# dangerous); its pid goes to argv[1]; over HTTP on the port argv[2], else over stdio.
SERVER = textwrap.dedent(
    """
    import os, sys
    from mcp.server import MCPServer
    from mcp.types import ToolAnnotations

    app = MCPServer("arith", log_level="WARNING")

    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    def add(a: int, b: int) -> int:
        \"\"\"Add two integers.\"\"\"
        return a + b

    @app.tool(annotations=ToolAnnotations(destructive_hint=False))
    def fail(reason: str) -> str:
        \"\"\"Always fails.\"\"\"
        from mcp.server.mcpserver.exceptions import ToolError
        raise ToolError(f"refused: {reason}")

    @app.tool()
    def erase(path: str) -> str:
        \"\"\"Erase a file.\"\"\"
        return "erased"

    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    if len(sys.argv) > 2:
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        app.run()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the test server exited: {process.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the test server did not listen on {port} in {seconds} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def server_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("mcp") / "server.py"
    path.write_text(SERVER)
    return path


@pytest.fixture(scope="module")
def http_url(server_script):
    port = _free_port()
    pid_file = server_script.with_name("http.pid")
    process = subprocess.Popen(
        [sys.executable, str(server_script), str(pid_file), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


def test_genforge_serve_over_stdio_runs_python_in_the_sandbox():
    with connect(GENFORGE_SERVE) as server:
        assert server.name == "genforge"
        tools = {t.name: t for t in server.tools()}
        assert set(tools) == {"python", "generate"}  # rag_search only with --rag
        assert tools["python"].parameters["required"] == ["code"]
        assert not tools["python"].dangerous  # served read-only: the sandbox keeps it so
        assert tools["python"](code="print(sum(range(10)) * 3)") == "135"
        # Checked here, against the schema the server listed, before the server is asked.
        bad = run_tool(tools["python"], {"code": 42})
        assert bad.error and "code" in bad.output
        # The server's own checks come back as an error result too.
        with pytest.raises(MCPToolError, match="bad arguments for python"):
            server.call("python", {"program": "print(1)"})
        blocked = tools["python"](code="import socket; socket.create_connection(('1.1.1.1', 80))")
        assert "did not finish" in blocked


def test_http_server_tools_results_and_errors(http_url):
    with connect(http_url) as server:
        assert server.name == "arith"
        tools = {t.name: t for t in server.tools()}
        assert tools["add"].parameters["required"] == ["a", "b"]
        assert tools["add"](a=2, b=40) == "42"
        assert [t.name for t in server.tools(prefix="math.")][0] == "math_add"
        # read-only, or explicitly not destructive: safe; no hints at all: dangerous
        assert [tools[n].dangerous for n in ("add", "fail", "erase")] == [False, False, True]
        failed = run_tool(tools["fail"], {"reason": "on purpose"})
        assert failed.error and "refused: on purpose" in failed.output
        wrong = run_tool(tools["add"], {"a": "two", "b": 3})
        assert wrong.error and "'two' is not of type 'integer'" in wrong.output


def test_closing_stops_a_stdio_server(server_script):
    pid_file = server_script.with_name("stdio.pid")
    server = connect(shlex.join([sys.executable, str(server_script), str(pid_file)]))
    assert server.tools()[0](a=1, b=1) == "2"
    pid = int(pid_file.read_text())
    assert _alive(pid)
    server.close()
    assert not _alive(pid)
    with pytest.raises(MCPToolError, match="closed"):
        server.call("add", {"a": 1, "b": 2})


class ScriptedBackend:
    """A model that calls the MCP tools it is scripted to, then answers from their results."""

    context_length = 4096

    def __init__(self, calls: list[Call]):
        self.calls = calls
        self.turns = 0

    def respond(self, messages, tools, **options) -> Reply:
        self.turns += 1
        if self.turns == 1:
            assert {t["function"]["name"] for t in tools} >= {c.name for c in self.calls}
            return Reply("", self.calls, 10, 5, "tool_calls")
        results = [m["content"] for m in messages if m["role"] == "tool"]
        return Reply(f"the results: {' | '.join(results)}", [], 10, 5, "stop")

    def count(self, messages, tools) -> int:
        return 100


def test_agent_calls_mcp_tools(http_url):
    with connect(http_url) as server:
        backend = ScriptedBackend(
            [Call("add", {"a": 19, "b": 23}), Call("erase", {"path": "notes.txt"})]
        )
        steps = list(Agent(backend, server.tools()).run("add 19 and 23, then erase notes.txt"))
    tool_steps = [s for s in steps if isinstance(s, ToolStep)]
    assert [(s.call.name, s.output, s.error) for s in tool_steps][0] == ("add", "42", False)
    erase = tool_steps[1]  # dangerous and nobody approves it: refused, never sent
    assert erase.error and erase.approved is False and "did not approve" in erase.output
    final = steps[-1]
    assert isinstance(final, FinalAnswer) and final.text.startswith("the results: 42 | error:")


def test_connection_errors_are_one_sentence(tmp_path):
    with pytest.raises(GenforgeError, match="there is no command 'genforge-no-such-server'"):
        connect("genforge-no-such-server --stdio")
    crash = shlex.join(
        [sys.executable, "-c", "import sys; sys.exit('unknown flag --port')", "--port"]
    )
    with pytest.raises(GenforgeError, match="exited before it answered.*unknown flag --port"):
        connect(crash)
    with pytest.raises(GenforgeError, match="cannot reach the MCP server at http"):
        connect(f"http://127.0.0.1:{_free_port()}/mcp")
    start = time.monotonic()
    silent = shlex.join([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(GenforgeError, match="did not answer within 1 s"):
        connect(silent, timeout=1)
    assert time.monotonic() - start < 8  # the handshake's limit, and the SDK's stop of ~4 s
    with pytest.raises(GenforgeError, match="URL or a command line"):
        connect("  ")


class FakeLLM:
    def __init__(self):
        self.prompts = []

    def chat(self, prompt, **sampling):
        self.prompts.append((prompt, sampling))
        return f"reply to {prompt}"


def test_generate_tool_loads_its_model_once_on_the_first_call():
    loads = []

    def load():
        loads.append(FakeLLM())
        return loads[-1]

    generate = generate_tool(load, max_tokens=100)
    assert loads == []
    assert generate(prompt="hi") == "reply to hi"
    assert generate(prompt="again", max_tokens=50, temperature=0.0) == "reply to again"
    assert len(loads) == 1
    assert loads[0].prompts[1] == ("again", {"max_tokens": 50, "temperature": 0.0})
    too_long = run_tool(generate, {"prompt": "x", "max_tokens": 1000})
    assert too_long.error and "between 1 and 100" in too_long.output


@pytest.mark.slow
def test_genforge_serve_generates_with_a_real_model(smollm2_path):
    with connect(f"{GENFORGE_SERVE} -m smollm2-135m-instruct", call_timeout=120) as server:
        generate = {t.name: t for t in server.tools()}["generate"]
        start = time.monotonic()
        reply = generate(prompt="Say hello.", max_tokens=8, temperature=0)
        first = time.monotonic() - start
        start = time.monotonic()
        again = generate(prompt="Say hello.", max_tokens=8, temperature=0)
        second = time.monotonic() - start
    assert reply.strip() and again.strip() and not reply.startswith("error")
    assert second < first  # the model was loaded by the first call only
