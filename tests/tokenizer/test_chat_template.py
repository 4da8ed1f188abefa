"""Chat templates: the sandboxed environment, then parity with transformers' apply_chat_template."""

from __future__ import annotations

import json

import pytest

from genforge.errors import GenforgeError
from genforge.tokenizer import Tokenizer, render_chat_template
from genforge.tokenizer.gguf import byte_alphabet

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"}},
                "required": ["city"],
            },
        },
    }
]
CHATS = {
    "system_user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there! Ça va? 東京"},
    ],
    "user_assistant_user": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
}
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "name": "get_weather", "content": '{"temp_c": 21}'},
]


def tiny_tokenizer(chat_template: str | None, add_bos: bool = True) -> Tokenizer:
    """A byte-level tokenizer with <s> as BOS and </s> as EOS."""
    tokens = [byte_alphabet()[b] for b in range(256)] + ["<s>", "</s>"]
    return Tokenizer.from_gguf_metadata(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [1] * 256 + [3, 3],
            "tokenizer.ggml.merges": [],
            "tokenizer.ggml.bos_token_id": 256,
            "tokenizer.ggml.eos_token_id": 257,
            "tokenizer.ggml.add_bos_token": add_bos,
            **({"tokenizer.chat_template": chat_template} if chat_template else {}),
        }
    )


# --- hermetic -----------------------------------------------------------------------------------


def test_raise_exception_becomes_genforge_error():
    template = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('Only user roles') }}{% endif %}"
    )
    with pytest.raises(GenforgeError, match="Only user roles"):
        render_chat_template(template, [{"role": "system", "content": "x"}])
    assert render_chat_template(template, [{"role": "user", "content": "x"}]) == ""


@pytest.mark.parametrize(
    "template",
    [
        "{% if %}",
        "{{ messages[0].content + 1 }}",
        "{{ ''.__class__.__mro__ }}",
        "{% set ns = namespace(_x=1) %}",
    ],
    ids=["syntax", "type", "sandbox", "namespace-underscore"],
)
def test_broken_or_unsafe_templates_are_user_errors(template):
    with pytest.raises(GenforgeError, match="chat template"):
        render_chat_template(template, [{"role": "user", "content": "x"}])


def test_environment_matches_hugging_face():
    data = {"name": "Zürich", "n": [1, 2]}
    assert render_chat_template("{{ tools[0] | tojson }}", [], tools=[data]) == json.dumps(
        data, ensure_ascii=False
    )
    assert render_chat_template(
        "{{ tools[0] | tojson(indent=2) }}", [], tools=[data]
    ) == json.dumps(data, ensure_ascii=False, indent=2)
    # trim_blocks / lstrip_blocks, loop controls, {% generation %}, extra kwargs, tools=None,
    # and keys set to None dropped (templates test `is defined`).
    template = (
        "{% for m in messages %}\n"
        "  {% if m.role == 'system' %}{% continue %}{% endif %}\n"
        "{% generation %}[{{ m.content }}]{% endgeneration %}\n"
        "{{ m.tool_calls is defined }}\n"
        "{% endfor %}{{ tools is none }}{{ flavour }}{{ strftime_now('%Y')|length }}"
    )
    chat = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u", "tool_calls": None},
    ]
    assert render_chat_template(template, chat, flavour="!") == "[u]False\nTrue!4"


def test_missing_template_names_the_fix():
    tok = tiny_tokenizer(None)
    with pytest.raises(GenforgeError, match="no chat template; use `genforge generate`"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_encode_chat_adds_bos_only_when_the_template_did_not():
    chat = [{"role": "user", "content": "hi"}]
    writes_bos = tiny_tokenizer("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}")
    assert writes_bos.apply_chat_template(chat) == "<s>hi</s>"
    assert writes_bos.encode_chat(chat).count(256) == 1
    assert writes_bos.encode_chat(chat)[0] == 256
    no_bos = tiny_tokenizer("{{ messages[0].content }}")
    assert no_bos.encode_chat(chat)[0] == 256
    assert tiny_tokenizer("{{ messages[0].content }}", add_bos=False).encode_chat(chat)[0] != 256


# --- real files: parity with transformers -------------------------------------------------------


@pytest.fixture(
    scope="module", params=[pytest.param("smollm2"), pytest.param("qwen", marks=pytest.mark.slow)]
)
def model(request, tokenizer_pair):
    """(name, our tokenizer, transformers' tokenizer) for one real GGUF file with a template."""
    return (request.param, *tokenizer_pair(request.param))


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("chat", CHATS)
def test_template_matches_transformers(model, chat, add_generation_prompt):
    _, ours, reference = model
    messages = CHATS[chat]
    expected = reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert (
        ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
    )
    assert ours.encode_chat(
        messages, add_generation_prompt=add_generation_prompt
    ) == reference.encode(expected, add_special_tokens=False)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["qwen"], indirect=True)
def test_qwen_tools_and_tool_calls_match_transformers(model):
    _, ours, reference = model
    for add_generation_prompt in (True, False):
        expected = reference.apply_chat_template(
            TOOL_CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        rendered = ours.apply_chat_template(TOOL_CHAT, add_generation_prompt, tools=TOOLS)
        assert rendered == expected
    assert '"name": "get_weather"' in rendered and "<tool_response>" in rendered


@pytest.mark.slow
def test_gemma_base_has_no_template(gemma_path):
    from genforge.weights.gguf import read_gguf

    tok = Tokenizer.from_gguf_metadata(read_gguf(gemma_path).metadata)
    assert tok.chat_template is None
    with pytest.raises(GenforgeError, match="has no chat template"):
        tok.encode_chat([{"role": "user", "content": "hi"}])
