"""Tools: typed Python functions that a model may call, described by JSON schemas.

`@tool` reads a function's type hints and docstring (Google, reST or NumPy style, parsed by
docstring-parser) into a pydantic model: its JSON schema is what the model is shown and what its
calls are decoded under, and the same model validates the arguments before the function runs. A
call the model got wrong (bad arguments, an exception in the tool) becomes a result the model reads
and can correct; a tool that is not in the agent's `Toolbox` cannot be called at all.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from genforge.errors import GenforgeError

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what OpenAI's API accepts as a function name
MAX_RESULT_CHARS = 4000  # what a model reads of one result; the rest is cut with a note


@dataclass
class Tool:
    """One callable tool: its name, description, argument schema and the function behind it."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    fn: Callable[..., Any] = field(repr=False)
    dangerous: bool = False  # asks the agent's approval callback before every call
    # Validated keyword arguments from a call's `arguments`; raises ValueError on bad ones.
    validate: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, repr=False)

    def spec(self) -> dict[str, Any]:
        """The OpenAI-style function tool (what chat templates and the HTTP API take)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def __call__(self, **arguments: Any) -> Any:
        kwargs = self.validate(arguments) if self.validate else arguments
        return self.fn(**kwargs)


@dataclass
class ToolResult:
    """What one call gave back: the text the model reads, and whether it was an error."""

    output: str
    error: bool = False
    seconds: float = 0.0


def run_tool(tool: Tool, arguments: Any) -> ToolResult:
    """Call `tool`; bad arguments and the tool's own exceptions become an error result."""
    start = time.perf_counter()
    if not isinstance(arguments, dict):
        return ToolResult(f"error: the arguments must be a JSON object, not {arguments!r}.", True)
    try:
        value = tool(**arguments)
    except ToolArgumentError as e:
        return ToolResult(f"error: bad arguments for {tool.name}: {e}", True, _since(start))
    except Exception as e:  # the tool failed: the model reads why and may try again
        return ToolResult(f"error: {type(e).__name__}: {e}", True, _since(start))
    return ToolResult(format_result(value), False, _since(start))


def _since(start: float) -> float:
    return time.perf_counter() - start


def format_result(value: Any, limit: int = MAX_RESULT_CHARS) -> str:
    """A tool's return value as the text a model reads: strings as they are, anything else as
    JSON; cut to `limit` characters with a note of how much was left out."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}\n[... {len(text) - limit} more characters left out]"
    return text


class ToolArgumentError(ValueError):
    """A call's arguments do not match the tool's schema."""


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    dangerous: bool = False,
) -> Any:
    """Make a typed function a `Tool`: `@tool` or `@tool(name=..., dangerous=True)`.

    Every parameter needs a type hint; the docstring's first paragraph describes the tool and its
    `Args:` section each parameter. dangerous=True: the agent asks before each call.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return _make_tool(f, name or f.__name__, description, dangerous)

    return wrap(fn) if fn is not None else wrap


def _make_tool(fn, name: str, description: str | None, dangerous: bool) -> Tool:
    import docstring_parser
    import pydantic

    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    param_docs = {p.arg_name: (p.description or "").strip() for p in doc.params}
    try:
        hints = get_type_hints(fn)
    except Exception as e:
        raise GenforgeError(f"tool {name}: its type hints do not resolve ({e}).") from None
    fields = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise GenforgeError(f"tool {name}: *args and **kwargs cannot be described; name them.")
        if p.name not in hints:
            raise GenforgeError(f"tool {name}: parameter {p.name!r} needs a type hint.")
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (
            hints[p.name],
            pydantic.Field(default, description=param_docs.get(p.name) or None),
        )
    model = pydantic.create_model(f"{name}_arguments", **fields)
    schema = _untitled(model.model_json_schema())
    schema.setdefault("properties", {})
    # A first sentence wrapped onto a second line is one paragraph, not a summary and a body.
    between = "\n\n" if doc.blank_after_short_description else " "
    text = description or between.join(
        part for part in (doc.short_description, doc.long_description) if part
    )

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            parsed = model.model_validate(arguments)
        except pydantic.ValidationError as e:
            raise ToolArgumentError(_validation_message(e)) from None
        return {k: getattr(parsed, k) for k in fields}

    return Tool(name, (text or name).strip(), schema, fn, dangerous, validate)


def _untitled(schema: Any) -> Any:
    """The schema without pydantic's generated "title" keys: tokens a model reads for nothing."""
    if isinstance(schema, dict):
        return {
            k: (_untitled(v) if k not in ("properties", "$defs") else _untitled_map(v))
            for k, v in schema.items()
            if k != "title"
        }
    if isinstance(schema, list):
        return [_untitled(s) for s in schema]
    return schema


def _untitled_map(properties: Any) -> Any:
    if not isinstance(properties, dict):
        return properties
    return {k: _untitled(v) for k, v in properties.items()}


def _validation_message(error) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(x) for x in e["loc"]) or "arguments"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def schema_validator(name: str, schema: dict[str, Any]):
    """`Tool.validate` for a tool known only by its JSON schema (an MCP server's): arguments are
    checked with jsonschema where it is installed, and passed on as they are."""

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            import jsonschema
        except ImportError:  # the server checks them itself
            return arguments
        try:
            jsonschema.validate(arguments, schema)
        except jsonschema.ValidationError as e:
            where = ".".join(str(x) for x in e.absolute_path) or "arguments"
            raise ToolArgumentError(f"{where}: {e.message}") from None
        except jsonschema.SchemaError:
            return arguments
        return arguments

    return validate


class Toolbox:
    """The tools an agent may call, by name. Nothing outside it can be called."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()):
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool | Callable[..., Any]) -> Tool:
        if not isinstance(t, Tool):
            t = tool(t)
        if t.name in self._tools:
            raise GenforgeError(f"two tools are named {t.name!r}; rename one (tool(name=...)).")
        if not _NAME.fullmatch(t.name):
            raise GenforgeError(
                f"tool name {t.name!r} must be 1-64 letters, digits, underscores or dashes."
            )
        self._tools[t.name] = t
        return t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self):
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self._tools.values()]
