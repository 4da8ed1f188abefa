"""Chat templates: render a model's Jinja template the way Hugging Face `apply_chat_template` does.

Templates ship inside model files and are untrusted code, so they run in jinja2's immutable sandbox
with the same environment transformers gives them (`trim_blocks`, `lstrip_blocks`, loop controls,
`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text). Matching it exactly
matters: a prompt that differs by one newline from what the model was trained on degrades it.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from genforge.errors import GenforgeError


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **extra: Any,
) -> str:
    """Render `messages` (and `tools`) with a chat template; template failures raise GenforgeError."""
    # Like transformers: a key set to None (OpenAI's `content=None`, `tool_calls=None`) is dropped,
    # since templates test for a key's presence and would otherwise print "None".
    messages = [_arguments_decoded({k: v for k, v in m.items() if v is not None}) for m in messages]
    context = {"bos_token": bos_token, "eos_token": eos_token, "documents": None, **extra}
    try:
        return _compile(template).render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **context
        )
    except (jinja2.TemplateError, TypeError, ValueError) as e:
        raise GenforgeError(f"The chat template failed to render these messages: {e}") from None


def _arguments_decoded(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's tool calls carry their arguments as a JSON string; templates expect the object
    (Qwen's writes `arguments | tojson`, which would quote the string a second time, a prompt unlike
    the model's training that makes it call the tool again instead of answering). vLLM decodes
    them the same way."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    decoded = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            with contextlib.suppress(json.JSONDecodeError):  # not JSON: shown as it is
                call = {**call, "function": {**fn, "arguments": json.loads(fn["arguments"])}}
        decoded.append(call)
    return {**message, "tool_calls": decoded}


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise GenforgeError(
            f"The chat template is not valid Jinja (line {e.lineno}): {e}"
        ) from None


def _raise_exception(message: str) -> None:
    raise GenforgeError(f"The chat template rejected these messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own `tojson` escapes HTML characters and ASCII-escapes text; templates expect neither.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore attributes, closing a sandbox escape (as transformers)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]  # Jinja's signature trick, so `namespace(self=...)` works
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; render as is.

    Without it, templates written for transformers' assistant-mask feature fail to compile.
    """

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)
