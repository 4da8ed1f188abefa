"""Structured output: decode under a grammar so the result cannot fail to parse.

A `Grammar` is compiled by llguidance from a JSON schema, a Lark grammar or a regex, and checked
against the model's tokenizer up front: a schema it cannot enforce is refused with the feature named,
never silently ignored. Each request then gets its own `Constraint` (an llguidance matcher): before
every sampling step the engine masks the logits of tokens the grammar does not allow, and after it
the constraint consumes the sampled token. End-of-sequence is allowed only where the grammar is
complete, so output that ends because the model stopped always parses (output cut by `max_tokens`
can still be short). JSON schemas are read strictly (`strict_schema`): an object that lists its
properties gets no other key, so a small model cannot add keys until `max_tokens`.

Tool calls use the same machinery: `tool_call_grammar` builds a Lark grammar whose calls are
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks (the format Qwen and Hermes
models are trained on) with the arguments held to each function's JSON schema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genforge.errors import GenforgeError

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def _llg():
    try:
        import llguidance
    except ImportError:  # pragma: no cover - a core dependency
        raise GenforgeError(
            "structured output needs the llguidance package; reinstall genforge."
        ) from None
    return llguidance


def ll_tokenizer(tokenizer, vocab_size: int):
    """The llguidance view of a genforge `Tokenizer` (built once per tokenizer, ~0.5 s)."""
    cached = getattr(tokenizer, "_ll_tokenizer", None)
    if cached is not None and cached[0] == vocab_size:
        return cached[1]
    llg = _llg()
    lt = llg.LLTokenizer(
        tokenizer.hf.to_str(), n_vocab=vocab_size, eos_token=sorted(tokenizer.eos_ids) or None
    )
    tokenizer._ll_tokenizer = (vocab_size, lt)
    return lt


@dataclass(frozen=True)
class Grammar:
    """A compiled-by-llguidance grammar (its serialized form) and what it came from."""

    spec: str
    kind: str  # "json_schema", "lark", "regex"
    source: Any = None  # the schema, grammar text or pattern it was compiled from
    calls: bool = False  # tool calls: the answer ends at a call that repeats an earlier one

    @classmethod
    def json_schema(cls, schema: dict | bool | str) -> Grammar:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GenforgeError(f"the JSON schema is not valid JSON: {e}.") from None
        if not isinstance(schema, dict | bool):
            raise GenforgeError("a JSON schema must be a JSON object.")
        schema = strict_schema(schema)
        try:
            spec = _llg().LLMatcher.grammar_from_json_schema(schema)
        except ValueError as e:
            raise GenforgeError(f"the JSON schema is not usable: {e}.") from None
        return cls(spec, "json_schema", schema)

    @classmethod
    def json_object(cls) -> Grammar:
        """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def lark(cls, text: str) -> Grammar:
        return cls(_llg().LLMatcher.grammar_from_lark(text), "lark", text)

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        return cls(_llg().LLMatcher.grammar_from_regex(pattern), "regex", pattern)

    def check(self, tokenizer, vocab_size: int) -> None:
        """Raise a GenforgeError naming what llguidance cannot enforce (unsupported keyword...)."""
        self._raise(
            _llg().LLMatcher.validate_grammar(self.spec, ll_tokenizer(tokenizer, vocab_size))
        )

    def constraint(self, tokenizer, vocab_size: int) -> Constraint:
        """A fresh matcher for one request; an unenforceable grammar raises as in `check` (the
        matcher reports it itself, so the grammar is compiled once, not validated first)."""
        matcher = _llg().LLMatcher(ll_tokenizer(tokenizer, vocab_size), self.spec, log_level=0)
        self._raise(matcher.get_error() if matcher.is_error() else "")
        return CallsConstraint(matcher, tokenizer) if self.calls else Constraint(matcher)

    def _raise(self, error: str) -> None:
        if error:
            what = {"json_schema": "JSON schema", "lark": "grammar", "regex": "regex"}[self.kind]
            raise GenforgeError(
                f"this {what} cannot be enforced ({error.strip().rstrip('.')}); "
                "remove or rewrite that part."
            )


# Keywords whose value is a schema, a list of schemas, or a {name: schema} map. Not walked: `not`
# and `if` (closing an object there would widen, not narrow, what they allow), and
# `dependentSchemas` (it adds to the object around it, as `allOf` does).
_SUBSCHEMA = ("items", "additionalItems", "contains", "unevaluatedItems")
_SUBSCHEMA += ("additionalProperties", "unevaluatedProperties")
_SUBSCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_OPEN_BY_CHOICE = {"additionalProperties", "patternProperties", "unevaluatedProperties"}


JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def strict_schema(schema: dict | bool) -> dict | bool:
    """`schema` as OpenAI's strict mode reads it, written as `json.dumps` writes JSON: `": "` after a
    key, `", "` between items, no other whitespace outside strings (compact `":"` and `","` made
    Qwen2.5-Coder name 2 of 8 invented users `","`: the separators models learned are these).

    An object that lists `properties` admits no other key unless the schema says so itself
    (`additionalProperties`, `patternProperties`, `unevaluatedProperties`): JSON Schema's default
    is "any other key too", which lets a small model add keys until `max_tokens`. llguidance
    already writes the listed keys in their order, each at most once. An object that lists
    properties and also has `allOf`/`anyOf`/`oneOf`, an `allOf` branch, and an object that
    requires a key it does not list keep the open default (closing one part would forbid the
    keys of another); an object that lists no properties (`{"type": "object"}`) stays any object.
    """
    if not isinstance(schema, dict):
        return schema
    options = schema.get("x-guidance")  # llguidance's own options, if the schema sets any
    options = {**JSON_STYLE, **(options if isinstance(options, dict) else {})}
    return {**_close(schema, closable=True), "x-guidance": options}


def _close(schema, closable: bool):
    if isinstance(schema, list):  # draft-4 tuple `items`
        return [_close(s, closable) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    has_props = isinstance(schema.get("properties"), dict)
    for key in _SUBSCHEMA:
        if key in out:
            out[key] = _close(out[key], True)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: _close(v, True) for k, v in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            open_branches = key == "allOf" or (key != "prefixItems" and has_props)
            out[key] = [_close(s, not open_branches) for s in out[key]]
    composed = any(k in schema for k in ("allOf", "anyOf", "oneOf"))
    # A required key that is not listed can only be an extra key: the schema wants them.
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    unlisted = has_props and not set(required) <= set(schema["properties"])
    if closable and has_props and not (composed or unlisted or _OPEN_BY_CHOICE & schema.keys()):
        out["additionalProperties"] = False
    return out


class Constraint:
    """One request's position in a grammar: which tokens may come next, and the tokens so far."""

    def __init__(self, matcher):
        self.matcher = matcher

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (V,) with every token the grammar does not allow next set to -inf."""
        allowed = np.frombuffer(self.matcher.compute_logit_bias(), dtype=np.uint8)
        if not allowed.any():
            raise GenforgeError(f"the grammar allows no next token: {self.error() or 'dead end'}.")
        keep = torch.from_numpy(allowed.astype(bool))
        return logits.masked_fill(~keep[: logits.shape[-1]], float("-inf"))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GenforgeError(f"the grammar refused token {token}: {self.error()}.")

    def error(self) -> str:
        return self.matcher.get_error()

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()


class CallsConstraint(Constraint):
    """A tool-call grammar's constraint that ends the answer after a call that repeats an earlier
    one. Small models asked for calls tend to write the same call again and again (greedily, for
    ever), and a grammar of several calls would let them until `max_tokens`; the repeat is dropped
    by `parse_tool_calls`, so the answer is the calls before it."""

    def __init__(self, matcher, tokenizer):
        super().__init__(matcher)
        self.decoder = tokenizer.stream(skip_special=False)
        self.eos = torch.tensor(sorted(tokenizer.eos_ids), dtype=torch.long)
        self.text = ""  # since the last call ended
        self.seen: set[str] = set()
        self.repeated = False

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        logits = super().mask(logits)
        if self.repeated and len(self.eos):
            eos = self.eos[self.eos < logits.shape[-1]]
            if torch.isfinite(logits[eos]).any():  # the grammar may end here: end it
                ended = torch.full_like(logits, float("-inf"))
                ended[eos] = logits[eos]
                return ended
        return logits

    def advance(self, token: int) -> None:
        super().advance(token)
        self.text += self.decoder.step(token)
        start = self.text.rfind(TOOL_CALL_OPEN)
        if start < 0:  # no call open: keep only what may yet begin one (this runs every token)
            self.text = self.text[-len(TOOL_CALL_OPEN) :]
        elif self.text.rstrip().endswith(TOOL_CALL_CLOSE):
            call = self.text[start + len(TOOL_CALL_OPEN) :].rstrip()[: -len(TOOL_CALL_CLOSE)]
            self.repeated = call.strip() in self.seen
            self.seen.add(call.strip())
            self.text = ""


# -- tool calls --------------------------------------------------------------------------------


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise GenforgeError('each tool must be {"type": "function", "function": {...}}.')
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise GenforgeError("each tool needs a function with a non-empty name.")
    return fn


def tool_call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON schema of one call: {"name": <a tool's name>, "arguments": <that tool's parameters>}."""
    variants = []
    for tool in tools:
        fn = _function(tool)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return strict_schema(variants[0] if len(variants) == 1 else {"anyOf": variants})


def tool_call_grammar(
    tools: list[dict[str, Any]],
    required: bool,
    answer: Grammar | None = None,
    tokenizer=None,
    parallel: bool = True,
    bare: bool = False,
) -> Grammar:
    """Calls of `tools` (one or more, newline-separated); with required=False, or an answer instead:
    one matching `answer` (a JSON schema grammar), or else any text that does not start with a
    tool call, so a model that begins a call is held to the schema from its first token.
    parallel=False allows one call only.

    When the tokenizer has the tags as tokens of their own (Qwen), the grammar asks for those
    tokens, as the model was trained to write them. bare=True (with required=False and no answer
    schema) also takes one call written as a bare JSON object, without the tags, or in a ```json
    fence, as small models often write it (Qwen2.5-Coder-0.5B fences every call), and so holds any
    answer that starts with "{" or a fenced "{" to the calls' schema.
    """
    schema = json.dumps(tool_call_schema(tools))
    open_, close = (_tag(tokenizer, t) for t in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE))
    rules = [
        'calls: call ("\\n" call)*' if parallel else "calls: call",
        f'call: {open_} "\\n" args "\\n" {close}',
        f"args: %json {schema}",
    ]
    if required:
        start = ["start: calls"]
    elif answer is not None:
        if answer.kind != "json_schema":
            raise GenforgeError("with tools, only a JSON schema can constrain the answer.")
        start = ["start: answer | calls", f"answer: %json {json.dumps(answer.source)}"]
    elif bare:
        start = [
            "start: TEXT | calls | args | fenced",
            'fenced: FENCE args "\\n```"',
            "FENCE: /```(json)?\\n/",
            f"TEXT: /(?s:.*)/ & ~/(?s:[ \\t\\n]*{_BARE_STARTS}.*)/",
        ]
    else:
        start = [
            "start: TEXT | calls",
            f"TEXT: /(?s:.*)/ & ~/(?s:[ \\t\\n]*{TOOL_CALL_OPEN}.*)/",
        ]
    grammar = Grammar.lark("\n".join(start + rules))
    return dataclasses.replace(grammar, calls=True) if parallel else grammar


def no_call_grammar(bare: bool = False) -> Grammar:
    """An answer that is not a tool call (`tool_choice="none"`): any text of at least one
    character that does not start with the call tag, nor with "{" (or a fenced "{") when bare
    calls count."""
    starts = _BARE_STARTS if bare else TOOL_CALL_OPEN
    return Grammar.lark(f"start: TEXT\nTEXT: /(?s:.+)/ & ~/(?s:[ \\t\\n]*{starts}.*)/")


# How a bare call begins: the tag, "{", or a ```json fence opening on "{".
_BARE_STARTS = f"({TOOL_CALL_OPEN}|\\{{|```(json)?[ \\t\\n]*\\{{)"
_FENCED = re.compile(r"```(?:json)?[ \t]*\n?(\{.*\})\s*```", re.DOTALL)


def call_start(text: str, bare: bool = False) -> bool | None:
    """Whether an answer beginning with `text` is a tool call: True, False, or None while it
    cannot tell yet. A call opens with the call tag or, when bare calls count, with "{" or a
    ```json fence around "{" (the starts `_BARE_STARTS` matches)."""
    head = text.lstrip()
    if head.startswith(TOOL_CALL_OPEN):
        return True
    if not head or TOOL_CALL_OPEN.startswith(head):
        return None
    if not bare:
        return False
    if head.startswith("{"):
        return True
    if "```json".startswith(head):
        return None
    if not head.startswith("```"):
        return False
    rest = head[3:].removeprefix("json").lstrip(" \t\n")
    return rest.startswith("{") if rest else None


def _tag(tokenizer, text: str) -> str:
    """A Lark item for `text`: its own token where the vocabulary has one, else the literal text."""
    token_id = tokenizer.hf.token_to_id(text) if tokenizer is not None else None
    return f"<[{token_id}]>" if token_id is not None else json.dumps(text)


def parse_tool_calls(
    text: str, bare: bool = False, tools: list[dict[str, Any]] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Split model output into (text before the calls, [{"name", "arguments"}...]).

    Output produced under `tool_call_grammar` always parses; unconstrained output that is not a
    well-formed call is left as text. A call cut short (by `max_tokens`) after complete ones is
    dropped and the complete ones kept; a call that repeats an earlier one is dropped.
    bare=True: output that is one JSON object with a "name" (and "arguments", or "parameters"),
    alone or in a ```json fence, is a call too (`tool_call_grammar(bare=True)`). With `tools`, a
    bare call counts only if it names one of them with arguments its schema accepts (decoded
    without a grammar, it may not); else the output stays text.
    """
    if bare:
        call = _bare_call(text, tools)
        if call is not None:
            return "", [call]
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return text, []
    content, rest = text[:start], text[start:]
    calls: list[dict[str, Any]] = []
    while rest.strip():
        rest = rest.lstrip()
        end = rest.find(TOOL_CALL_CLOSE)
        if (
            calls
            and end < 0
            and (rest.startswith(TOOL_CALL_OPEN) or TOOL_CALL_OPEN.startswith(rest))
        ):
            break  # the last call was cut short: the complete ones before it stand
        if not rest.startswith(TOOL_CALL_OPEN) or end < 0:
            return text, []
        try:
            call = json.loads(rest[len(TOOL_CALL_OPEN) : end])
        except json.JSONDecodeError:
            return text, []
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return text, []
        call = {"name": call["name"], "arguments": call.get("arguments", {})}
        if call not in calls:
            calls.append(call)
        rest = rest[end + len(TOOL_CALL_CLOSE) :]
    return content.strip(), calls


def _bare_call(text: str, tools: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The call `text` holds as a bare or fenced JSON object, or None."""
    fenced = _FENCED.fullmatch(text.strip())
    if not fenced and not text.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    key = "arguments" if "arguments" in obj or "parameters" not in obj else "parameters"
    if set(obj) - {"name", key}:
        return None
    call = {"name": obj["name"], "arguments": obj.get(key, {})}
    if tools is not None and not _valid_call(call, tools):
        return None
    return call


def _valid_call(call: dict[str, Any], tools: list[dict[str, Any]]) -> bool:
    """Whether `call` names one of `tools` with arguments that its parameters' schema accepts."""
    import jsonschema

    for tool in tools:
        fn = _function(tool)
        if fn["name"] == call["name"]:
            params = fn.get("parameters") or {"type": "object"}
            try:
                jsonschema.validate(call["arguments"], strict_schema(params))
            except (jsonschema.ValidationError, jsonschema.SchemaError):
                return False
            return True
    return False


def tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    """How to call `tools`, for chat templates that do not render tools themselves."""
    lines = "\n".join(json.dumps(_function(t), ensure_ascii=False) for t in tools)
    return (
        "You may call one or more functions to help with the user's request. The functions are "
        f"described by these JSON schemas:\n<tools>\n{lines}\n</tools>\n"
        f"To call a function, reply with a JSON object with its name and arguments inside "
        f'{TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} tags:\n{TOOL_CALL_OPEN}\n{{"name": <function-name>, '
        f'"arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}'
    )


def inline_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict]:
    """`messages` rewritten for a template without tool support: the tools described in the system
    message, assistant tool calls written out as text, tool results as user turns."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = [
                f"{TOOL_CALL_OPEN}\n{json.dumps(_call_dict(c), ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"
                for c in m.pop("tool_calls")
            ]
            m["content"] = "\n".join([m.get("content") or "", *calls]).strip()
        elif m.get("role") == "tool":
            m = {
                "role": "user",
                "content": f"<tool_response>\n{m.get('content', '')}\n</tool_response>",
            }
        out.append(m)
    if tools:
        prompt = tools_system_prompt(tools)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{prompt}".strip()}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _call_dict(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        with contextlib.suppress(json.JSONDecodeError):
            args = json.loads(args)
    return {"name": fn.get("name"), "arguments": args}
