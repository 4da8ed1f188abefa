"""The real SmolLM2 GGUF against transformers' own GGUF loader on the same file."""

import pytest
import torch

from genforge.generate.sampling import SamplingParams
from genforge.weights.load import build_model, load_checkpoint

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def ours(smollm2_path):
    return build_model(load_checkpoint(smollm2_path))


def test_config_read_from_gguf(ours):
    cfg = ours.cfg
    assert (cfg.arch, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads) == (
        "llama",
        30,
        576,
        9,
        3,
    )
    assert cfg.tie_embeddings and cfg.vocab_size == 49152 and cfg.max_seq_len == 8192
    assert cfg.n_params == sum(p.numel() for p in ours.parameters()) == 134_515_008


def test_first_token_logits_match_transformers(ours, hf_smollm2, smollm2):
    # Both dequantize the same Q4_1/Q8_0 blocks to fp32, so only float summation order differs:
    # we allow 1e-3 absolute on logits of magnitude ~20.
    for prompt in PROMPTS:
        ids = torch.tensor([smollm2.tokenizer.encode(prompt)])
        with torch.no_grad():
            expected = hf_smollm2(ids).logits[0, -1]
            got = ours(ids)[0, -1]
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)


def test_greedy_continuation_matches_transformers(smollm2, hf_smollm2):
    for prompt in PROMPTS:
        ids = smollm2.tokenizer.encode(prompt)
        params = SamplingParams(temperature=0, max_tokens=24)
        ours = list(smollm2.engine.generate(ids, params, smollm2.tokenizer.eos_ids))
        with torch.no_grad():
            out = hf_smollm2.generate(
                torch.tensor([ids]),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=sorted(smollm2.tokenizer.eos_ids),
            )
        theirs = out[0, len(ids) :].tolist()
        assert ours == theirs, prompt


def test_q4_1_and_q8_0_load_as_the_files_own_blocks_without_floats(smollm2_path):
    """The file's Q4_1 / Q8_0 blocks are rearranged into genforge's q4 / q8 layouts byte for byte
    (no dequantize-and-requantize): they dequantize to exactly what gguf's own reader gives, and
    an int4 model holds them, rows un-permuted for RoPE where llama's q/k are."""
    import genforge
    from genforge.model import kernels
    from genforge.weights.gguf import read_gguf
    from genforge.weights.load import _unpermute

    g = read_gguf(smollm2_path)
    for name in ("blk.3.ffn_gate.weight", "blk.5.attn_k.weight", "token_embd.weight"):
        kind, parts = g.blocks(name)
        assert kind == ("q8" if name == "token_embd.weight" else "q4")
        got = kernels.Blocks(kind, parts, g.tensors[name].shape).dequantize()
        assert torch.equal(got, torch.from_numpy(g.tensor(name)))
    assert g.blocks("blk.0.attn_norm.weight") is None  # float32: not blocks
    model = genforge.load(str(smollm2_path), dtype="int4").model
    _, k_parts = g.blocks("blk.5.attn_k.weight")
    want = _unpermute(k_parts["qweight"], model.cfg.n_kv_heads)
    q_dim = model.cfg.n_heads * model.cfg.head_dim
    kv_dim = model.cfg.n_kv_heads * model.cfg.head_dim
    assert torch.equal(model.layers[5].attn.wqkv.qweight[q_dim : q_dim + kv_dim], want)


def test_a_loaded_model_keeps_its_header_without_the_vocabulary(smollm2_path):
    """Once the tokenizer is built, a loaded model keeps its file's header without the long
    vocabulary arrays (the tokenizer holds the vocabulary), and the header read for the load is
    not kept either: the tokenizer still encodes and decodes."""
    import genforge
    from genforge.weights import gguf

    llm = genforge.load(str(smollm2_path), progress=False)
    metadata = llm.checkpoint.metadata
    assert metadata["general.architecture"] == "llama"
    assert "tokenizer.ggml.tokens" not in metadata and "tokenizer.ggml.merges" not in metadata
    assert all(not isinstance(v, list) or len(v) <= gguf.BIG_ARRAY for v in metadata.values())
    assert gguf._last is None
    ids = llm.tokenizer.encode("The capital of France is Paris.")
    assert len(ids) > 3 and llm.tokenizer.decode(ids).strip() == "The capital of France is Paris."
    assert len(gguf.read_gguf(smollm2_path).metadata["tokenizer.ggml.tokens"]) == 49152
