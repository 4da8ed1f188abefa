"""Qwen2.5-Coder-0.5B and Gemma 3 270M: parity with transformers and sensible generation (slow)."""

import pytest
import torch
from components import require_module

import genforge
from genforge.errors import GenforgeError

pytestmark = pytest.mark.slow


def _hf_logits(path, ids):
    transformers = require_module("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        return hf(ids).logits[0]


@pytest.mark.parametrize("fixture", ["qwen_path", "gemma_path"])
def test_logits_match_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    llm = genforge.load(str(path), dtype="fp32")
    # 600 tokens: longer than Gemma's 512-token sliding window, so the window mask is exercised.
    ids = torch.randint(100, 5000, (1, 600), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = llm.model(ids)[0]
    theirs = _hf_logits(path, ids)
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-4)


def test_qwen_coder_writes_python(qwen_path):
    llm = genforge.load(str(qwen_path))
    answer = llm.chat(
        "Write a Python function add(a, b) that returns the sum. Reply with code only.",
        temperature=0,
        max_tokens=80,
    )
    assert "def add(a, b)" in answer and "return" in answer


def test_gemma_base_model_completes_text_and_has_no_chat_template(gemma_path):
    llm = genforge.load(str(gemma_path))
    assert "Berlin" in llm.generate(
        "The capital of France is Paris. The capital of Germany is", temperature=0, max_tokens=6
    )
    assert "five, six" in llm.generate("One, two, three, four,", temperature=0, max_tokens=6)
    with pytest.raises(GenforgeError, match="no chat template"):
        llm.chat("hello")
