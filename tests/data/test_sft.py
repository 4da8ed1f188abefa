"""Fine-tuning data: loss masks on the real models' templates, the plain formats, preference pairs,
and one sentence naming the file and line for every bad line.

The real tokenizers come from the GGUF metadata of the pulled models (no weights are loaded); a
model that is not pulled skips its tests. The rest use a tiny byte-level tokenizer built here.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from genforge import hub
from genforge.data.sft import (
    CHATML_CHAT_TEMPLATE,
    GEMMA_CHAT_TEMPLATE,
    ReadStats,
    chat_template_for,
    encode_messages,
    read_preferences,
    read_sft,
)
from genforge.errors import GenforgeError
from genforge.tokenizer import Tokenizer
from genforge.tokenizer.gguf import byte_alphabet
from genforge.weights.gguf import read_gguf

MODELS = {
    "smollm2": "smollm2-135m-instruct",  # ChatML, its own template
    "qwen": "qwen2.5-coder-0.5b-instruct",  # ChatML with tools, its own template
    "gemma": "gemma3-270m",  # no template: the Gemma fallback
}
TURN_END = {"smollm2": "<|im_end|>", "qwen": "<|im_end|>", "gemma": "<end_of_turn>"}

# The first answer quotes both families' turn-end tokens: as content they are text, not a turn end.
ANSWERS = [
    "Bern, not Zürich. A template ends turns with <|im_end|> or <end_of_turn>.",
    "東京 (Tokyo).",
]
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of Switzerland?"},
    {"role": "assistant", "content": ANSWERS[0]},
    {"role": "user", "content": "And of Japan?"},
    {"role": "assistant", "content": ANSWERS[1]},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_CHAT = [
    {"role": "system", "content": "You check the weather."},
    {"role": "user", "content": "Weather in Paris and Bern?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {  # OpenAI writes arguments as a JSON string
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Bern"}},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": '{"temp_c": 18}'},
    {"role": "assistant", "content": "Paris has 21 °C, Bern 18 °C."},
]
# What Qwen's template writes for the tool-calling turn, after its "<|im_start|>assistant\n".
QWEN_TOOL_CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bern"}}\n</tool_call>'
)


@pytest.fixture(scope="module")
def real():
    """name -> that pulled model's tokenizer, built once per module."""
    built: dict[str, Tokenizer] = {}

    def get(name: str) -> Tokenizer:
        if name not in built:
            path = hub.installed_path(MODELS[name])
            if path is None:
                pytest.skip(
                    f"{MODELS[name]} is not installed; install it with: "
                    f"genforge pull {MODELS[name]}"
                )
            built[name] = Tokenizer.from_gguf_metadata(read_gguf(path).metadata)
        return built[name]

    return get


def tiny(specials: tuple[str, ...] = (), add_bos: bool = True, template: str | None = None):
    """A byte-level tokenizer: <s> BOS, </s> EOS, and `specials` as control tokens."""
    tokens = [byte_alphabet()[b] for b in range(256)] + ["<s>", "</s>", *specials]
    return Tokenizer.from_gguf_metadata(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [1] * 256 + [3] * (2 + len(specials)),
            "tokenizer.ggml.merges": [],
            "tokenizer.ggml.bos_token_id": 256,
            "tokenizer.ggml.eos_token_id": 257,
            "tokenizer.ggml.add_bos_token": add_bos,
            **({"tokenizer.chat_template": template} if template else {}),
        }
    )


@pytest.fixture(scope="module")
def chatml():
    """No template of its own, but ChatML tokens: chat lines use the ChatML fallback."""
    return tiny(("<|im_start|>", "<|im_end|>"))


def with_template(tok: Tokenizer) -> Tokenizer:
    """`tok` with the template chat data is rendered with, for comparing with `encode_chat`."""
    out = copy.copy(tok)
    out.chat_template = chat_template_for(tok)
    return out


def token_bytes(tok: Tokenizer, ids: list[int]) -> list[bytes]:
    """The bytes each token stands for, read off its vocabulary piece (never by re-encoding)."""
    added = tok.hf.get_added_tokens_decoder()
    unbyte = {c: b for b, c in byte_alphabet().items()}
    sentencepiece = tok.hf.token_to_id("<0x0A>") is not None  # pieces with byte fallback

    def one(token_id: int) -> bytes:
        if token_id in added:
            return added[token_id].content.encode()
        piece = tok.hf.id_to_token(token_id)
        if sentencepiece:
            byte = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
            return bytes([int(byte[1], 16)]) if byte else piece.replace("▁", " ").encode()
        return bytes(unbyte[c] for c in piece)

    return [one(i) for i in ids]


def masked_runs(ids: list[int], mask: list[bool]) -> list[list[int]]:
    runs: list[list[int]] = []
    for k, (token, target) in enumerate(zip(ids, mask, strict=True)):
        if target:
            if k == 0 or not mask[k - 1]:
                runs.append([])
            runs[-1].append(token)
    return runs


def write_lines(path, *lines: str):
    path.write_text("".join(lines), encoding="utf-8")
    return path


def line(obj) -> str:
    return (obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)) + "\n"


# --- the loss mask on the real templates --------------------------------------------------------


@pytest.fixture
def tok(real, model) -> Tokenizer:
    """The tokenizer of the test's `model` parameter, built in the set-up, not in the test."""
    return real(model)


def with_parsed_arguments(chat: list[dict]) -> list[dict]:
    """`chat` with tool-call arguments as data: templates `tojson` them, and a JSON string would
    come out quoted twice."""
    chat = json.loads(json.dumps(chat))
    for message in chat:
        for call in message.get("tool_calls") or []:
            if isinstance(call["function"]["arguments"], str):
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return chat


@pytest.mark.parametrize(
    "model, chat, tools, answers",
    [
        ("smollm2", CHAT, None, ANSWERS),
        ("qwen", CHAT, None, ANSWERS),
        ("qwen", TOOL_CHAT, TOOLS, [QWEN_TOOL_CALLS, TOOL_CHAT[-1]["content"]]),
        ("gemma", CHAT, None, ANSWERS),
    ],
    ids=["smollm2-chatml", "qwen", "qwen-tools", "gemma-fallback"],
)
def test_mask_covers_exactly_the_assistant_turns(tok, model, chat, tools, answers):
    ids, mask = encode_messages(tok, chat, tools)
    templated, chat = with_template(tok), with_parsed_arguments(chat)
    assert ids == templated.encode_chat(chat, add_generation_prompt=False, tools=tools)

    # Where each token lies in the rendered text, from its vocabulary piece.
    text = templated.apply_chat_template(chat, add_generation_prompt=False, tools=tools).encode()
    pieces = token_bytes(tok, ids)
    assert b"".join(pieces) == text
    # Expected targets: each answer as the template writes it, then the turn's end token.
    expected: set[int] = set()
    cursor = 0
    for answer in answers:
        span = (answer + TURN_END[model]).encode()
        at = text.index(span, cursor)
        expected |= set(range(at, at + len(span)))
        cursor = at + len(span)
    offset = 0
    for k, (piece, target) in enumerate(zip(pieces, mask, strict=True)):
        inside = {b in expected for b in range(offset, offset + len(piece))}
        assert len(inside) == 1, f"token {k} {piece!r} straddles a target's edge"
        assert target == inside.pop(), f"token {k} {piece!r}: mask {target}"
        offset += len(piece)
    # Each run ends on the real turn-end token; the quoted ones in the content stayed text.
    end_id = tok.hf.token_to_id(TURN_END[model])
    runs = masked_runs(ids, mask)
    assert len(runs) == len(answers)
    assert all(run[-1] == end_id and run.count(end_id) == 1 for run in runs)


def test_a_trailing_user_turn_carries_no_loss_and_is_left_out(real):
    tok = real("smollm2")
    assert encode_messages(tok, [*CHAT, {"role": "user", "content": "Thanks!"}]) == (
        encode_messages(tok, CHAT)
    )
    ids, mask = encode_messages(tok, CHAT[:3] + CHAT[3:4])  # ends with a user turn
    assert ids == tok.encode_chat(CHAT[:3], add_generation_prompt=False)


def test_an_answer_starting_with_a_newline_keeps_the_cut_after_the_header(real):
    """Encoded whole, ChatML's header newline and the answer's merge into one token; the target
    starts where generation does, after the prompt's own tokens."""
    tok = real("smollm2")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\nHello"}]
    ids, mask = encode_messages(tok, chat)
    assert tok.decode(ids, skip_special=False) == tok.apply_chat_template(chat, False)
    prompt = tok.encode_chat(chat[:1], add_generation_prompt=True)
    assert ids[: len(prompt)] == prompt and not any(mask[: len(prompt)])
    assert tok.decode(masked_runs(ids, mask)[0], skip_special=False) == "\nHello<|im_end|>"


def test_chatml_fallback_ends_turns_on_its_own_end_token(chatml):
    """The fallback's end token ends a turn even when the model does not list it in eos_ids."""
    tok = copy.copy(chatml)
    tok.eos_ids = frozenset({257})
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye."},
    ]
    ids, mask = encode_messages(tok, chat)
    assert ids == with_template(tok).encode_chat(chat, add_generation_prompt=False)
    assert ids[0] == tok.bos_id and not mask[0]
    runs = [tok.decode(run, skip_special=False) for run in masked_runs(ids, mask)]
    assert runs == ["Hey.<|im_end|>", "Bye.<|im_end|>"]


def test_chat_template_for_prefers_the_models_own_then_falls_back_by_vocabulary(real, chatml):
    assert chat_template_for(real("smollm2")) == real("smollm2").chat_template
    assert chat_template_for(real("gemma")) == GEMMA_CHAT_TEMPLATE
    assert chat_template_for(chatml) == CHATML_CHAT_TEMPLATE
    with pytest.raises(GenforgeError, match="no chat template"):
        chat_template_for(tiny())


def test_gemma_fallback_renders_like_gemma_3(real):
    text = with_template(real("gemma")).apply_chat_template(CHAT[:2], add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nYou are terse.\n\nCapital of Switzerland?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


# --- prompt/completion and text lines -----------------------------------------------------------


def test_prompt_completion_is_text_or_a_chat_by_the_prompts_type(real, tmp_path):
    """As TRL reads them: a text prompt is plain text even for a chat model; a prompt of messages
    is rendered with the chat template."""
    tok = real("smollm2")
    user = [{"role": "user", "content": "2+2?"}]
    path = write_lines(
        tmp_path / "pc.jsonl",
        line({"prompt": user, "completion": "4"}),
        line({"prompt": user, "completion": [{"role": "assistant", "content": "4"}]}),
        line({"prompt": "2+2?", "completion": " 4"}),
    )
    chat, chat_message, plain = read_sft(path, tok, max_len=256)
    expected = encode_messages(tok, [*user, {"role": "assistant", "content": "4"}])
    assert (chat.ids, chat.mask) == (chat_message.ids, chat_message.mask) == expected
    assert chat.source == f"{path}:1"
    head = tok.encode("2+2?")
    assert plain.ids[: len(head)] == head and plain.ids[len(head) :][-1] in tok.eos_ids
    assert plain.mask == [False] * len(head) + [True] * (len(plain.ids) - len(head))


@pytest.mark.parametrize("add_bos", [True, False])
def test_plain_prompt_completion_and_text_without_a_template(tmp_path, add_bos):
    tok = tiny(add_bos=add_bos)
    path = write_lines(
        tmp_path / "plain.jsonl",
        line({"prompt": "Q: 1+1? A:", "completion": " 2"}),
        line({"text": "Just text."}),
    )
    completion, text = read_sft(path, tok, max_len=64)
    bos = [256] if add_bos else []
    prompt_ids, answer_ids = tok.encode("Q: 1+1? A:", add_special=False), tok.encode(" 2", False)
    assert completion.ids == [*bos, *prompt_ids, *answer_ids, 257]
    assert completion.mask == [False] * (len(bos) + len(prompt_ids)) + [True] * 3
    assert text.ids == [*bos, *tok.encode("Just text.", add_special=False), 257]
    assert text.mask == [False] * len(bos) + [True] * (len(text.ids) - len(bos))


def test_text_on_a_real_model_ends_with_its_eos(real, tmp_path):
    tok = real("gemma")  # adds BOS; its eos is <eos>, not <end_of_turn>
    (example,) = read_sft(write_lines(tmp_path / "t.jsonl", line({"text": "Hi"})), tok, 64)
    assert example.ids == [tok.bos_id, *tok.encode("Hi", add_special=False), 1]
    assert example.mask == [False] + [True] * (len(example.ids) - 1)


# --- preference pairs ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["qwen", "gemma"])
def test_preference_pairs_share_the_prompt_ids(real, tmp_path, model):
    tok = real(model)
    end = TURN_END[model]
    path = write_lines(
        tmp_path / "prefs.jsonl",
        line({"messages": CHAT[:4], "chosen": "Tokyo.", "rejected": "Kyoto."}),
        line(
            {
                "messages": CHAT[:2],
                "chosen": {"role": "assistant", "content": "Bern."},
                "rejected": [{"role": "assistant", "content": "Zürich."}],
            }
        ),
    )
    pairs = read_preferences(path, tok, max_len=512)
    for pair, chat, answers in zip(
        pairs, [CHAT[:4], CHAT[:2]], [("Tokyo.", "Kyoto."), ("Bern.", "Zürich.")], strict=True
    ):
        prompt = with_template(tok).encode_chat(chat, add_generation_prompt=True)
        for example, answer in zip((pair.chosen, pair.rejected), answers, strict=True):
            assert example.ids[: len(prompt)] == prompt and not any(example.mask[: len(prompt)])
            runs = masked_runs(example.ids, example.mask)
            assert [tok.decode(run, skip_special=False) for run in runs] == [answer + end]
    assert pairs[0].source == f"{path}:1" == pairs[0].chosen.source


def test_preference_prompt_is_plain_text_without_a_template_of_its_own(real, tmp_path):
    tok = real("gemma")
    path = write_lines(
        tmp_path / "p.jsonl", line({"prompt": "Sky colour?", "chosen": " Blue", "rejected": " Red"})
    )
    (pair,) = read_preferences(path, tok, max_len=64)
    prompt = tok.encode("Sky colour?")
    for example, answer in ((pair.chosen, " Blue"), (pair.rejected, " Red")):
        body = [*tok.encode(answer, add_special=False), 1]
        assert example.ids == prompt + body
        assert example.mask == [False] * len(prompt) + [True] * len(body)


# --- bad lines ----------------------------------------------------------------------------------

GOOD = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
BAD_SFT = {
    "json": ('{"text": "a",}', "not valid JSON"),
    "not-an-object": ("[1, 2]", "not an object"),
    "unknown-keys": ({"input": "a", "output": "b"}, "unknown line format (keys: input, output)"),
    "text-type": ({"text": 5}, '"text" must be a string'),
    "no-completion": ({"prompt": "a"}, '"completion" must be a string, but it is missing'),
    "preference-line": ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference line"),
    "messages-type": ({"messages": "hi"}, "non-empty list of messages"),
    "message-type": ({"messages": ["hi"]}, "message 1 must be an object"),
    "role": ({"messages": [{"role": "bot", "content": "b"}]}, "role 'bot'"),
    "content": ({"messages": [{"role": "user", "content": ["a"]}]}, "needs a string content"),
    "no-assistant": ({"messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
    "assistant-first": (
        {"messages": [{"role": "assistant", "content": "a"}]},
        "starts with an assistant message",
    ),
    "arguments": (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"name": "f", "arguments": "{city"}}],
                },
            ]
        },
        "arguments that are not valid JSON",
    ),
    "fallback-tools": (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]},
            ]
        },
        "fallback has no tool calls",
    ),
    "too-long": ({"text": "x" * 40}, "42 tokens, longer than the context of 32; raise --seq-len"),
}


@pytest.mark.parametrize("case", BAD_SFT)
def test_a_bad_sft_line_names_file_and_line_or_is_skipped(chatml, tmp_path, case):
    bad, words = BAD_SFT[case]
    path = write_lines(tmp_path / "data.jsonl", line(GOOD), "\n", line(bad), line(GOOD))
    with pytest.raises(GenforgeError) as raised:
        read_sft(path, chatml, max_len=32)
    message = str(raised.value)
    assert message.startswith(f"{path} line 3: ") and words in message
    assert message.endswith(".") and "\n" not in message

    stats = ReadStats()
    examples = read_sft(path, chatml, max_len=32, skip_bad=True, stats=stats)
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:4"]
    assert (stats.lines, stats.skipped, stats.first_errors) == (3, 1, [message])


BAD_PREFERENCES = {
    "no-rejected": ({"prompt": "a", "chosen": "b"}, 'has no "rejected"'),
    "no-prompt": ({"chosen": "b", "rejected": "c"}, 'needs a "prompt" (text or messages)'),
    "answer-type": ({"prompt": "a", "chosen": 3, "rejected": "c"}, '"chosen" must be a string'),
    "answer-role": (
        {"prompt": "a", "chosen": {"role": "user", "content": "b"}, "rejected": "c"},
        '"chosen" must be a string, an assistant message',
    ),
    "too-long": ({"prompt": "a", "chosen": "b", "rejected": "c" * 40}, "longer than the context"),
}


@pytest.mark.parametrize("case", BAD_PREFERENCES)
def test_a_bad_preference_line_names_file_and_line_or_is_skipped(chatml, tmp_path, case):
    bad, words = BAD_PREFERENCES[case]
    good = {"prompt": "a", "chosen": "b", "rejected": "c"}
    path = write_lines(tmp_path / "prefs.jsonl", line(good), line(bad))
    with pytest.raises(GenforgeError, match=f"^{re.escape(str(path))} line 2: ") as raised:
        read_preferences(path, chatml, max_len=32)
    assert words in str(raised.value)
    stats = ReadStats()
    assert len(read_preferences(path, chatml, 32, skip_bad=True, stats=stats)) == 1
    assert (stats.lines, stats.skipped) == (2, 1)


def test_empty_missing_and_all_bad_files_are_errors(chatml, tmp_path):
    with pytest.raises(GenforgeError, match="does not exist"):
        read_sft(tmp_path / "nowhere.jsonl", chatml, 32)
    with pytest.raises(GenforgeError, match="is empty"):
        read_sft(write_lines(tmp_path / "empty.jsonl", "\n  \n"), chatml, 32)
    path = write_lines(tmp_path / "bad.jsonl", *[line({"text": i}) for i in range(7)])
    stats = ReadStats()
    with pytest.raises(GenforgeError, match="no usable example: all 7 lines were bad"):
        read_sft(path, chatml, 32, skip_bad=True, stats=stats)
    assert stats.skipped == 7 and len(stats.first_errors) == 5
    assert stats.first_errors[4].startswith(f"{path} line 5: ")


def test_a_byte_order_mark_is_dropped_and_a_line_not_in_utf8_is_bad(chatml, tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(GOOD).encode() + b'{"text": "caf\xe9"}\n')
    stats = ReadStats()
    assert len(read_sft(path, chatml, 32, skip_bad=True, stats=stats)) == 1
    assert stats.first_errors == [
        f"{path} line 2: not UTF-8 text (byte 13); save the file as UTF-8."
    ]


def test_stats_add_up_over_files(chatml, tmp_path):
    stats = ReadStats()
    for name in ("a.jsonl", "b.jsonl"):
        path = write_lines(tmp_path / name, line(GOOD), line({"text": 1}))
        read_sft(path, chatml, 32, skip_bad=True, stats=stats)
    assert (stats.lines, stats.skipped, len(stats.first_errors)) == (4, 2, 2)


def test_a_model_without_any_chat_template_is_not_a_skippable_line(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", line({"text": "ok"}), line(GOOD))
    with pytest.raises(GenforgeError, match="line 2: .* has no chat template"):
        read_sft(path, tiny(), 32, skip_bad=True)


def test_a_template_that_rerenders_earlier_turns_is_refused(tmp_path):
    """The last message rendered apart from the others: a prefix no longer stays a prefix."""
    template = (
        "{% for m in messages %}{% if loop.last %}[{{ m.content }}]{% else %}"
        "({{ m.content }}){% endif %}{% endfor %}"
    )
    path = write_lines(tmp_path / "chat.jsonl", line(GOOD))
    with pytest.raises(GenforgeError, match="line 1: the chat template renders the turns before"):
        read_sft(path, tiny(template=template), 32)


def test_the_target_ends_at_the_first_turn_end_token():
    """A template that writes two end tokens: the model stops at the first, so that is the last
    target; what follows it is context."""
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n</s>"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = tiny(("<|im_start|>", "<|im_end|>"), template=template)
    ids, mask = encode_messages(tok, GOOD["messages"])
    assert [tok.decode(run, skip_special=False) for run in masked_runs(ids, mask)] == [
        "b<|im_end|>"
    ]
    assert tok.decode(ids, skip_special=False).endswith("b<|im_end|>\n</s>")
