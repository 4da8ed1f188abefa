"""Fine-tuning data: JSONL lines -> token ids and a loss mask, for SFT and preference tuning (DPO).

One JSON object per line; the format is told by its keys:
- `{"messages": [...], "tools": [...]}`: an OpenAI-style chat (system, user, assistant with optional
  `tool_calls`, tool), rendered with the model's chat template;
- `{"prompt": ..., "completion": ...}`, as TRL reads them: text prompt and completion are plain
  text (the prompt, then the completion and EOS: what `genforge generate` and the multiple-choice
  evaluations see); a prompt that is a list of messages, with a completion (string or assistant
  message), is a chat rendered with the template;
- `{"text": ...}`: plain text, BOS (if the model adds one), the text, one EOS;
- preferences: `{"prompt": ... | "messages": [...], "chosen": X, "rejected": X}`, X an answer string,
  an assistant message, or a list holding one; plain text or chat by the same rule.

Design choices:
- The mask is True on what the model should learn to write: each assistant turn's content (its tool
  calls included) and the token that ends the turn; never role headers, the newline after the end
  token, or system, user and tool turns. In plain formats: the completion (or text) and the EOS.
- Spans are found on the rendered text, the same way for every template: for assistant message i,
  P = render(messages[:i], generation prompt) and F = render(messages[:i + 1]); the target is
  F[len(P):] up to and including the first turn-end token (an id in `eos_ids`).
- The text is encoded piecewise, cut at those span boundaries, so the mask is exact. The ids equal
  `encode_chat` unless the tokenizer would merge a token across a boundary (content that starts with
  a newline after a header ending in one); the cut is kept then, since a model generating its answer
  also starts from the prompt's tokens alone.
- Special-token text inside messages stays plain text, as in `encode_chat`: only the template writes
  special tokens.
- A model without a template of its own gets a fallback (Gemma-style or ChatML, chosen by its
  vocabulary); `chat_template_for` says which, so a trainer can save it with the adapter.
- A bad line raises one sentence naming "FILE line N"; with `skip_bad` it is counted and skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

from genforge.errors import GenforgeError
from genforge.tokenizer import Tokenizer, render_chat_template

# encode_chat's own hiding of special-token text, so content encodes exactly as it does there
from genforge.tokenizer.core import _SpecialTextMask

log = logging.getLogger(__name__)

# Gemma 3's official template, text only, with its system-to-first-user-turn rule and trimming.
GEMMA_CHAT_TEMPLATE = r"""{{ bos_token }}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}"""

CHATML_CHAT_TEMPLATE = r"""{%- for message in messages -%}
    {{ '<|im_start|>' + message['role'] + '\n' }}{{ message['content'] }}{{ '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<|im_start|>assistant\n' }}
{%- endif -%}"""

# fallback template -> (the token that must be in the vocabulary, the token that ends a turn)
FALLBACK_TEMPLATES = {
    GEMMA_CHAT_TEMPLATE: ("<start_of_turn>", "<end_of_turn>"),
    CHATML_CHAT_TEMPLATE: ("<|im_start|>", "<|im_end|>"),
}
ROLES = ("system", "user", "assistant", "tool")
MAX_ERRORS_KEPT = 5
SFT_LINES = '{"messages": [...]}, {"prompt": "...", "completion": "..."} or {"text": "..."}'
FORMATS = f"expected {SFT_LINES}"


@dataclass
class Example:
    ids: list[int]  # token ids of the whole example
    mask: list[bool]  # same length; True where the token is a training target (assistant output)
    source: str  # "FILE:LINE" for error messages


@dataclass
class Pair:
    chosen: Example  # prompt + chosen answer (mask True on the answer tokens only)
    rejected: Example  # prompt + rejected answer (the same prompt ids)
    source: str  # "FILE:LINE"


@dataclass
class ReadStats:
    lines: int = 0  # non-empty lines read
    skipped: int = 0  # bad lines skipped (with skip_bad)
    first_errors: list[str] = field(default_factory=list)  # up to 5 messages of skipped lines


class _ModelUnfit(GenforgeError):
    """The model cannot take this kind of line at all: raised at once, even with skip_bad."""


# --- reading files ----------------------------------------------------------------------------


def read_sft(
    path: str | Path,
    tokenizer: Tokenizer,
    max_len: int,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
) -> list[Example]:
    """The examples of a JSONL file, each at most `max_len` tokens with at least one target."""

    def parse(obj: dict[str, Any], source: str) -> Example:
        example = _sft_example(tokenizer, obj, source)
        _check_size(example, max_len)
        return example

    return _read(Path(path), parse, skip_bad, stats)


def read_preferences(
    path: str | Path,
    tokenizer: Tokenizer,
    max_len: int,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
) -> list[Pair]:
    """The preference pairs of a JSONL file; chosen and rejected share their prompt ids."""

    def parse(obj: dict[str, Any], source: str) -> Pair:
        pair = _pair(tokenizer, obj, source)
        _check_size(pair.chosen, max_len)
        _check_size(pair.rejected, max_len)
        return pair

    return _read(Path(path), parse, skip_bad, stats)


T = TypeVar("T")


def _read(
    path: Path,
    parse: Callable[[dict[str, Any], str], T],
    skip_bad: bool,
    stats: ReadStats | None,
) -> list[T]:
    stats = stats if stats is not None else ReadStats()
    items: list[T] = []
    lines = skipped = 0  # this file's, while `stats` may add up several files
    first_error = ""
    for number, raw in _lines(path):
        lines += 1
        stats.lines += 1
        try:
            items.append(parse(_json_object(raw), f"{path}:{number}"))
        except GenforgeError as e:
            message = f"{path} line {number}: {_mid_sentence(str(e))}"
            if not skip_bad or isinstance(e, _ModelUnfit):
                raise GenforgeError(message) from None
            skipped += 1
            stats.skipped += 1
            first_error = first_error or message
            if len(stats.first_errors) < MAX_ERRORS_KEPT:
                stats.first_errors.append(message)
    if lines == 0:
        raise GenforgeError(f"{path} is empty; write one JSON object per line.")
    if not items:
        raise GenforgeError(
            f"{path} has no usable example: all {lines} lines were bad; the first: {first_error}"
        )
    if skipped:
        log.warning("skipped %d bad lines of %s; the first: %s", skipped, path, first_error)
    return items


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-blank line."""
    if not path.exists():
        raise GenforgeError(f"{path} does not exist; pass a JSONL file with one example per line.")
    if not path.is_file():  # a folder, or a FIFO that would block the read
        raise GenforgeError(f"{path} is not a file; pass a JSONL file with one example per line.")
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                yield number, raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise GenforgeError(f"not UTF-8 text (byte {e.start}); save the file as UTF-8.") from None
    except json.JSONDecodeError as e:
        raise GenforgeError(
            f"not valid JSON ({e.msg}); each line must be one JSON object."
        ) from None
    if not isinstance(obj, dict):
        raise GenforgeError(f"a JSON {_json_type(obj)}, not an object; {FORMATS}.")
    return obj


def _mid_sentence(message: str) -> str:
    """A message from deeper down, put after "FILE line N: "."""
    return "t" + message[1:] if message.startswith("The ") else message


def _check_size(example: Example, max_len: int) -> None:
    if len(example.ids) > max_len:
        raise GenforgeError(
            f"{len(example.ids)} tokens, longer than the context of {max_len}; raise --seq-len "
            "or shorten it (or --skip-bad)."
        )
    if not any(example.mask):
        raise GenforgeError("nothing to learn from (no target token); give it an answer.")


# --- SFT lines ---------------------------------------------------------------------------------


def _sft_example(tokenizer: Tokenizer, obj: dict[str, Any], source: str) -> Example:
    if "messages" in obj:
        ids, mask = encode_messages(tokenizer, obj["messages"], _tools(obj))
    elif "chosen" in obj or "rejected" in obj:
        raise GenforgeError(
            "a preference line (chosen/rejected), not an SFT line; use the file for preference "
            f"tuning, or write SFT lines: {SFT_LINES}."
        )
    elif "prompt" in obj or "completion" in obj:
        if isinstance(obj.get("prompt"), list):  # conversational, as TRL: the chat template
            prompt = _checked_messages(obj["prompt"], '"prompt"')
            answer = _answer(obj.get("completion"), "completion")
            ids, mask = _encode_chat(tokenizer, [*prompt, answer], _tools(obj), [len(prompt)])
        else:  # plain text, as TRL's standard format: the prompt, then the completion and EOS
            ids, mask = _plain(tokenizer, _string(obj, "prompt"), _string(obj, "completion"))
    elif "text" in obj:
        ids = [*tokenizer.encode(_string(obj, "text")), _eos_id(tokenizer)]
        mask = [not (i == 0 and tokenizer.add_bos) for i in range(len(ids))]
    else:
        keys = ", ".join(sorted(obj)) or "none"
        raise GenforgeError(f"unknown line format (keys: {keys}); {FORMATS}.")
    return Example(ids, mask, source)


def _plain(tokenizer: Tokenizer, prompt: str, answer: str) -> tuple[list[int], list[bool]]:
    """Prompt (BOS first if the model adds one), then the answer and EOS as the target."""
    head = tokenizer.encode(prompt)
    body = [*tokenizer.encode(answer, add_special=False), _eos_id(tokenizer)]
    return head + body, [False] * len(head) + [True] * len(body)


def _eos_id(tokenizer: Tokenizer) -> int:
    if tokenizer._eos_text is not None:
        return tokenizer.hf.token_to_id(tokenizer._eos_text)
    if tokenizer.eos_ids:
        return min(tokenizer.eos_ids)
    raise _ModelUnfit(
        f"{tokenizer.name} has no end-of-sequence token, so a plain-text example cannot end; "
        "use a model with one."
    )


def _string(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in obj else f"a JSON {_json_type(value)}"
        raise GenforgeError(f'"{key}" must be a string, but it is {got}.')
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _tools(obj: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = obj.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise GenforgeError('"tools" must be a list of tool objects (OpenAI format).')
    return tools or None


# --- preference lines --------------------------------------------------------------------------


def _pair(tokenizer: Tokenizer, obj: dict[str, Any], source: str) -> Pair:
    missing = [key for key in ("chosen", "rejected") if key not in obj]
    if missing:
        raise GenforgeError(
            f'a preference line needs "chosen" and "rejected" answers; this one has no '
            f'"{missing[0]}".'
        )
    answers = [_answer(obj[key], key) for key in ("chosen", "rejected")]
    tools = _tools(obj)
    if "messages" in obj or isinstance(obj.get("prompt"), list):  # conversational: the template
        prompt = _checked_messages(obj.get("messages", obj.get("prompt")))
        encoded = [_encode_chat(tokenizer, [*prompt, a], tools, [len(prompt)]) for a in answers]
    elif "prompt" in obj:  # plain text: the prompt, then each answer and EOS
        prompt = [{"role": "user", "content": _string(obj, "prompt")}]
        encoded = [_plain(tokenizer, prompt[0]["content"], _plain_answer(a)) for a in answers]
    else:
        raise GenforgeError('a preference line needs a "prompt" (text or messages) or "messages".')
    chosen, rejected = (Example(ids, mask, source) for ids, mask in encoded)
    start = chosen.mask.index(True) if any(chosen.mask) else len(chosen.ids)
    if rejected.ids[:start] != chosen.ids[:start] or rejected.mask[:start] != chosen.mask[:start]:
        raise GenforgeError(
            "the chat template renders the prompt differently for the chosen and the rejected "
            "answer, so they cannot be compared; use a model whose template does not."
        )
    return Pair(chosen, rejected, source)


def _answer(value: Any, key: str) -> dict[str, Any]:
    """A preference answer as one assistant message."""
    if isinstance(value, str):
        value = {"role": "assistant", "content": value}
    elif isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict) or value.get("role", "assistant") != "assistant":
        raise GenforgeError(
            f'"{key}" must be a string, an assistant message, or a list holding one assistant '
            "message."
        )
    (message,) = _checked_messages([{"role": "assistant", **value}], what=f'"{key}"')
    return message


def _plain_answer(message: dict[str, Any]) -> str:
    if message.get("tool_calls") or message.get("content") is None:
        raise GenforgeError(
            "an answer with tool calls needs a model with a chat template; answer in text."
        )
    return message["content"]


# --- chats -------------------------------------------------------------------------------------


def chat_template_for(tokenizer: Tokenizer) -> str:
    """The template chat data is rendered with: the model's own, else a fallback by vocabulary."""
    if tokenizer.chat_template:
        return tokenizer.chat_template
    for template, tokens in FALLBACK_TEMPLATES.items():
        if all(tokenizer.hf.token_to_id(t) is not None for t in tokens):
            return template
    raise _ModelUnfit(
        f"{tokenizer.name} has no chat template and chat data needs one; write prompt/completion "
        "or text lines instead."
    )


def encode_messages(
    tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[int], list[bool]]:
    """One chat -> (ids, mask), the mask True on every assistant turn (see the module docstring).

    The chat need not end with an assistant message: turns after the last assistant turn carry no
    loss, so they are left out. The ids equal `encode_chat` of the chat up to that turn.
    """
    messages = _checked_messages(messages)
    targets = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not targets:
        raise GenforgeError(
            "the chat has no assistant turn to learn from; add an assistant message."
        )
    return _encode_chat(tokenizer, messages, tools, targets)


def _encode_chat(
    tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    targets: list[int],
) -> tuple[list[int], list[bool]]:
    """Encode `messages[: targets[-1] + 1]`, the assistant turns at `targets` as the target."""
    if targets[0] == 0:  # templates index messages[0]; a prompt rendered from nothing breaks them
        raise GenforgeError(
            "the chat starts with an assistant message; put the user (or system) message that it "
            "answers before it."
        )
    template = chat_template_for(tokenizer)
    if template in FALLBACK_TEMPLATES and (tools or any(_uses_tools(m) for m in messages)):
        raise GenforgeError(
            f"{tokenizer.name} has no chat template of its own and the fallback has no tool "
            "calls; use a model whose template has them, or leave tools out."
        )
    hider = _SpecialTextMask(tokenizer._special_text)
    messages, tools = hider.hide(messages), hider.hide(tools)

    def render(chat: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return render_chat_template(
            template,
            chat,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            bos_token=tokenizer._bos_text,
            eos_token=tokenizer._eos_text,
        )

    text = render(messages[: targets[-1] + 1], False)
    cuts = [0]
    for i in targets:
        prompt, full = render(messages[:i], True), render(messages[: i + 1], False)
        stop = len(prompt) + _through_turn_end(full[len(prompt) :], _turn_ends(tokenizer, template))
        if not full.startswith(prompt) or text[:stop] != full[:stop]:
            raise GenforgeError(
                f"the chat template renders the turns before message {i + 1} differently once "
                "more turns follow, so its target cannot be found; split the chat into one line "
                "per assistant turn."
            )
        cuts += [len(prompt), stop]
    cuts.append(len(text))
    ids: list[int] = []
    mask: list[bool] = []
    for k, (a, b) in enumerate(pairwise(cuts)):
        piece = tokenizer._encode_rendered(text[a:b], hider)
        ids += piece
        mask += [k % 2 == 1] * len(piece)
    wrote_bos = tokenizer._bos_text is not None and text.startswith(tokenizer._bos_text)
    if tokenizer.add_bos and not wrote_bos:
        ids, mask = [tokenizer.bos_id, *ids], [False, *mask]
    return ids, mask


def _turn_ends(tokenizer: Tokenizer, template: str) -> list[str]:
    """The texts of the special tokens that end a turn: `eos_ids`, and a fallback's own end."""
    ends = [tokenizer.hf.id_to_token(i) for i in tokenizer.eos_ids if i in tokenizer._special_ids]
    if template in FALLBACK_TEMPLATES:
        ends.append(FALLBACK_TEMPLATES[template][1])
    return ends


def _through_turn_end(answer: str, ends: list[str]) -> int:
    """Length of `answer` up to and including its first turn-end token (all of it if none)."""
    found = [answer.find(end) + len(end) for end in ends if end in answer]
    return min(found, default=len(answer))


def _uses_tools(message: dict[str, Any]) -> bool:
    return message["role"] == "tool" or bool(message.get("tool_calls"))


def _checked_messages(messages: Any, what: str = '"messages"') -> list[dict[str, Any]]:
    """OpenAI-format messages, checked, with tool-call arguments parsed from JSON strings."""
    if not isinstance(messages, list) or not messages:
        raise GenforgeError(f"{what} must be a non-empty list of messages.")
    checked = []
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise GenforgeError(f"{what} message {n} must be an object with role and content.")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise GenforgeError(
                f"{what} message {n} has role {role!r}; roles are system, user, assistant and tool."
            )
        message = dict(message)
        if role == "assistant" and message.get("tool_calls"):
            message["tool_calls"] = _checked_tool_calls(
                message["tool_calls"], f"{what} message {n}"
            )
            if content is not None and not isinstance(content, str):
                raise GenforgeError(f"{what} message {n} has content that is not a string.")
        elif not isinstance(content, str):
            raise GenforgeError(
                f"{what} message {n} ({role}) needs a string content, not "
                f"{'nothing' if content is None else 'a JSON ' + _json_type(content)}."
            )
        checked.append(message)
    return checked


def _checked_tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise GenforgeError(f"{where} has tool_calls that are not a list.")
    checked = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise GenforgeError(
                f'{where} has a tool call without {{"function": {{"name": ..., "arguments": ...}}}}.'
            )
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):  # OpenAI writes them as a JSON string; templates want data
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                raise GenforgeError(
                    f"{where} calls {function['name']} with arguments that are not valid JSON "
                    f"({e.msg})."
                ) from None
        checked.append({**call, "function": {**function, "arguments": arguments}})
    return checked
