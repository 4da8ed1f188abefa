"""The Python API on the real default model (SmolLM2-135M-Instruct)."""

import pytest

import genforge
from genforge.errors import GenforgeError


def test_chat_answers_a_factual_question(smollm2):
    answer = smollm2.chat("Name the capital of France.", temperature=0, max_tokens=40)
    assert "Paris" in answer


def test_streamed_equals_non_streamed(smollm2):
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}):
        whole = smollm2.generate("Once upon a time", max_tokens=30, **kw)
        pieces = list(smollm2.generate("Once upon a time", max_tokens=30, stream=True, **kw))
        assert "".join(pieces) == whole and len(pieces) > 1


def test_seed_reproduces_and_different_seeds_differ(smollm2):
    kw = {"temperature": 1.2, "top_k": 0, "top_p": 1.0, "min_p": 0, "max_tokens": 24}
    a = smollm2.generate("My favourite animal is", seed=11, **kw)
    b = smollm2.generate("My favourite animal is", seed=11, **kw)
    others = {smollm2.generate("My favourite animal is", seed=s, **kw) for s in (12, 13, 14)}
    assert a == b
    assert others - {a}


def test_stop_string_ends_output_and_is_not_included(smollm2):
    prompt = "1, 2, 3, 4, 5,"
    full = smollm2.generate(prompt, temperature=0, max_tokens=20)
    assert " 8" in full
    cut = smollm2.generate(prompt, temperature=0, max_tokens=20, stop=[" 8"])
    assert cut == full[: full.index(" 8")]


def test_max_tokens_and_finish_reason(smollm2):
    ids = smollm2.tokenizer.encode("The history of Rome")
    c = smollm2.complete(ids, temperature=0, max_tokens=5)
    assert (c.completion_tokens, c.finish_reason, c.prompt_tokens) == (5, "length", len(ids))
    chat = smollm2.tokenizer.encode_chat([{"role": "user", "content": "Say hi."}])
    c = smollm2.complete(chat, temperature=0, max_tokens=200)
    assert c.finish_reason == "stop" and c.completion_tokens < 200


def test_dry_breaks_a_loop_that_greedy_decoding_keeps_going(smollm2):
    prompt = "1, 2, 1, 2, 1, 2, 1, 2,"
    plain = smollm2.generate(prompt, temperature=0, max_tokens=24)
    assert plain.startswith(" 1, 2, 1, 2, 1, 2, 1, 2")  # without it the model goes round
    dry = smollm2.generate(prompt, temperature=0, max_tokens=24, dry_multiplier=0.8)
    assert " 1, 2, 1, 2, 1, 2" not in dry  # a run of the output repeated costs more each token
    newline = smollm2.tokenizer.encode("\n", add_special=False)
    the = smollm2.tokenizer.encode(" the", add_special=False)
    assert set(newline) <= smollm2.engine.sequence_breakers  # runs end at lines, quotes, colons
    assert not set(the) & smollm2.engine.sequence_breakers


def test_prompt_longer_than_context_is_refused_with_numbers(smollm2):
    long_prompt = "word " * 9000
    with pytest.raises(GenforgeError, match=r"prompt is \d+ tokens but the context holds 8192"):
        smollm2.generate(long_prompt)
    with pytest.raises(GenforgeError, match="lower max_tokens to at most"):
        smollm2.generate("word " * 8000, max_tokens=500)


def test_invalid_sampling_value_is_refused(smollm2):
    with pytest.raises(GenforgeError, match="top_p"):
        smollm2.generate("hi", top_p=0)


def test_quantized_dtypes_still_answer(smollm2_path):
    import genforge

    for dtype in ("int4", "int8", "bf16"):
        m = genforge.load(str(smollm2_path), dtype=dtype)
        assert m.dtype == dtype
        # (the chat question above is a near tie between "The" and "L'" for this model's first
        # token, so any rounding may flip it; a plain completion is not)
        assert "Paris" in m.generate("The capital of France is", temperature=0, max_tokens=5)


def test_unknown_dtype_is_refused():
    import genforge

    with pytest.raises(GenforgeError, match="dtype must be one of"):
        genforge.load("smollm2-135m-instruct", dtype="fp8")


def test_auto_runs_a_q4_1_files_own_blocks(smollm2_path, tiny_model_dir):
    """auto is int4 for a GGUF file whose layers are all Q4_1 (int4 holds them bit for bit), and
    int8 for anything else, here a float safetensors folder."""
    from genforge.generate.loading import auto_dtype

    assert auto_dtype(smollm2_path) == "int4"
    assert auto_dtype(tiny_model_dir) == "int8"
    with pytest.raises(GenforgeError, match="dtype must be one of"):
        genforge.load(str(tiny_model_dir), dtype="int5")
