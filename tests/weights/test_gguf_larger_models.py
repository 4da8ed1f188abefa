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


def test_qwens_q5_0_matrices_stay_in_their_own_blocks(qwen_path):
    """The default dtype keeps Qwen2.5-Coder's Q5_0 matrices as they are in the file (q5, 5.5 bits
    a weight): the embedding's rows, an attention output and a fused gate/up come back exactly
    as gguf reads them; q/k/v stay q5 where all three are Q5_0 and become q8 where v is Q8_0,
    exactly too. Its Q4_K down projections keep their own 4-bit values (q4), its Q6_K ones q8."""
    from genforge.weights.gguf import read_gguf

    model = genforge.load(str(qwen_path)).model
    g = read_gguf(qwen_path)

    def file(name):
        return torch.from_numpy(g.tensor(name))

    assert model.tok_emb.kind == "q5"
    ids = torch.tensor([0, 1, 9707, 151935])
    assert torch.equal(model.tok_emb(ids[None])[0], file("token_embd.weight")[ids])
    kinds = set()
    for i, layer in enumerate(model.layers):
        assert layer.attn.wo.kind == "q5"
        qkv = torch.cat([file(f"blk.{i}.attn_{p}.weight") for p in "qkv"])
        v_q5 = g.tensors[f"blk.{i}.attn_v.weight"].ggml_type == 6  # Q5_0
        assert layer.attn.wqkv.kind == ("q5" if v_q5 else "q8")
        kinds.add(layer.attn.wqkv.kind)
        down = g.tensors[f"blk.{i}.ffn_down.weight"].ggml_type
        assert layer.mlp.w_down.kind == {12: "q4", 14: "q8"}[down]  # Q4_K, Q6_K
        if i in (0, len(model.layers) - 1):
            assert torch.equal(layer.attn.wo.dequantize(), file(f"blk.{i}.attn_output.weight"))
            gate_up = torch.cat([file(f"blk.{i}.ffn_{p}.weight") for p in ("gate", "up")])
            assert layer.mlp.w_gate_up.kind == "q5"
            assert torch.equal(layer.mlp.w_gate_up.dequantize(), gate_up)
            assert torch.equal(layer.attn.wqkv.dequantize(), qkv)
    assert kinds == {"q5", "q8"}  # the file has both kinds of layer


def test_gemma_base_model_completes_text_and_has_no_chat_template(gemma_path):
    llm = genforge.load(str(gemma_path))
    assert "Berlin" in llm.generate(
        "The capital of France is Paris. The capital of Germany is", temperature=0, max_tokens=6
    )
    assert "five, six" in llm.generate("One, two, three, four,", temperature=0, max_tokens=6)
    with pytest.raises(GenforgeError, match="no chat template"):
        llm.chat("hello")
