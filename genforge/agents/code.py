"""Code actions: the model writes Python that calls the tools as functions, run in the sandbox.

The program runs in `genforge.agents.sandbox` (no network, no files outside its temporary folder,
time and memory limits). The tools themselves run here, in the agent's process, with their own
confinement: the program reaches them through the sandbox's one channel (a pair of pipes), one
JSON request line per call. So a code action can call exactly the tools of the agent's `Toolbox`,
dangerous ones only with approval, and nothing else. `final_answer(value)` ends the run.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

from genforge.agents.backends import Call
from genforge.agents.builtin import sandbox_report
from genforge.agents.tools import Tool, ToolArgumentError, Toolbox, format_result

# What a turn looks like: a thought, then one Python block. Local models are held to it.
GRAMMAR = "\n".join(
    [
        'start: THOUGHT "```python\\n" CODE',
        "THOUGHT: /[^`]*/",
        # One lexeme to the closing fence: llguidance's lexemes are greedy, so code followed by
        # a separate "```" could never end (the code would take the first two backticks).
        # The fence may end its line ("```\\n" is one token to Qwen); nothing may follow it.
        "CODE: /(?s:.*)\\n```[ \\t]*\\n?/ & ~/(?s:.*```.*[^ \\t\\n].*)/",
    ]
)
# After a block ran: small models print the answer and then go on checking it for ever.
NEXT = "If this answers the task, call final_answer() with the answer; if not, write the next step."
_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:\n?```|$)", re.DOTALL)

_SYSTEM = """You solve the task by writing Python code, one step at a time. Each reply is a short \
thought, then one code block:
Thought: what you will do next
```python
# code
```
The code runs in a sandbox and you see what it prints, so print() the values you need. Variables \
do not carry over from one block to the next. When you know the answer, call \
final_answer(answer) in a code block. Besides the standard library, you can call these functions:

{functions}"""


def alias(name: str) -> str:
    """A tool's name as a Python function name (MCP tools may have dashes)."""
    out = re.sub(r"\W", "_", name)
    return out if out.isidentifier() else f"tool_{out}"


def signature(tool: Tool) -> str:
    """The tool as a Python stub: `def name(arg: type, ...) -> ...:` and its description."""
    props = tool.parameters.get("properties", {})
    required = set(tool.parameters.get("required", []))
    args = []
    for name, schema in props.items():
        kind = _PY_TYPES.get(schema.get("type"), "object") if isinstance(schema, dict) else "object"
        args.append(f"{name}: {kind}" + ("" if name in required else " = None"))
    doc = tool.description.replace('"""', "'''")
    for name, schema in props.items():
        if isinstance(schema, dict) and schema.get("description"):
            doc += f"\n    {name}: {schema['description']}"
    return f'def {alias(tool.name)}({", ".join(args)}):\n    """{doc}"""'


_PY_TYPES = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "array": "list",
    "object": "dict",
}


def system_prompt(tools: Toolbox) -> str:
    stubs = [signature(t) for t in tools]
    stubs.append('def final_answer(answer):\n    """Give the final answer and end the task."""')
    return _SYSTEM.format(functions="\n\n".join(stubs))


def extract(text: str) -> str | None:
    """The code of the turn's first Python block (to its end, if the turn was cut short)."""
    found = _BLOCK.search(text)
    return found.group(1).strip("\n") if found else None


# The program's side of the channel, put before the model's code (which runs from a string, so
# that its line numbers in tracebacks are its own).
_PRELUDE = """\
import json as _json, os as _os
_request_fd, _reply_fd = (int(x) for x in _os.environ["GENFORGE_CHANNEL"].split(","))
class ToolError(Exception):
    pass
def _call(_name, _arguments):
    _request = {{"tool": _name, "arguments": _arguments}}
    _os.write(_request_fd, (_json.dumps(_request, default=str) + "\\n").encode())
    _buffer = b""
    while not _buffer.endswith(b"\\n"):
        _chunk = _os.read(_reply_fd, 65536)
        if not _chunk:
            raise ToolError("the agent closed the tool channel")
        _buffer += _chunk
    _reply = _json.loads(_buffer)
    if "error" in _reply:
        raise ToolError(_reply["error"])
    return _reply.get("value")
def final_answer(answer):
    _os.write(_request_fd, (_json.dumps({{"final": str(answer)}}) + "\\n").encode())
    _os.read(_reply_fd, 65536)
    raise SystemExit(0)
{functions}
exec(compile({code!r}, "agent_code.py", "exec"))
"""


def _function(tool: Tool) -> str:
    name = alias(tool.name)
    return (
        f"def {name}(**kwargs):\n"
        f"    return _call({tool.name!r}, {{k: v for k, v in kwargs.items() if v is not None}})"
    )


@dataclass
class Outcome:
    output: str  # what the model reads: printed output, and the error if it failed
    error: bool
    seconds: float
    final: str | None  # the final answer, when the code gave one


def execute(code: str, tools: Toolbox, approve, timeout: float = 10.0) -> Outcome:
    """Run a code action in the sandbox, its tool calls answered from `tools`."""
    from genforge.agents.sandbox import run_python

    final: list[str] = []
    lock = threading.Lock()

    def channel(line: bytes) -> bytes:
        try:
            request = json.loads(line)
        except ValueError:
            return json.dumps({"error": "the request is not JSON"}).encode()
        with lock:
            return json.dumps(_answer(request, tools, approve, final), default=str).encode()

    functions = "\n".join(_function(t) for t in tools)
    program = _PRELUDE.format(functions=functions, code=code)
    result = run_python(program, timeout=timeout, memory_mb=512, channel=channel)
    if final:
        return Outcome(f"final answer: {final[0]}", False, result.seconds, final[0])
    failed = result.status != "passed"
    return Outcome(sandbox_report(result), failed, result.seconds, None)


def _answer(request: dict, tools: Toolbox, approve, final: list[str]) -> dict:
    if not isinstance(request, dict):
        return {"error": "the request is not a JSON object"}
    if "final" in request:
        final.append(str(request["final"]))
        return {"ok": True}
    tool = tools.get(str(request.get("tool")))
    if tool is None:
        return {"error": f"there is no tool named {request.get('tool')!r}"}
    arguments = request.get("arguments")
    if not isinstance(arguments, dict):
        return {"error": "call tools with keyword arguments"}
    if tool.dangerous and not (approve is not None and approve(tool, Call(tool.name, arguments))):
        return {"error": f"the user did not approve this call of {tool.name}; do not retry it"}
    try:
        value = tool(**arguments)
    except ToolArgumentError as e:
        return {"error": f"bad arguments for {tool.name}: {e}"}
    except Exception as e:  # the tool failed: the code sees a ToolError, the model reads why
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        value = format_result(value)
    return {"value": value}
