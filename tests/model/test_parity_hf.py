"""Tiny random configs of each family give the same logits as Hugging Face transformers."""

import pytest
import torch
from components import require_module

transformers = require_module("transformers")

from genforge.model.kv_cache import KVCache  # noqa: E402
from genforge.weights.load import build_model, load_hf_dir  # noqa: E402

COMMON = dict(
    vocab_size=257,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
    "rope_theta": 500000.0,
}


def _configs():
    t = transformers
    yield "llama", t.LlamaConfig(**COMMON, tie_word_embeddings=True)
    yield "llama-untied-llama3-rope", t.LlamaConfig(**COMMON, rope_parameters=LLAMA3_ROPE)
    yield (
        "llama-linear-rope",
        t.LlamaConfig(
            **COMMON, rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
        ),
    )
    yield "qwen2", t.Qwen2Config(**COMMON, tie_word_embeddings=False)
    yield "qwen3", t.Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=True)
    yield (
        "gemma3",
        t.Gemma3TextConfig(
            **{**COMMON, "num_hidden_layers": 7, "num_key_value_heads": 1},
            head_dim=32,
            sliding_window=6,
            query_pre_attn_scalar=24,
        ),
    )


def _hf_model(cfg, tmp_path):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # random norm weights so the (1 + w) convention is exercised
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0, 0.3)
    model.eval().save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize(
    "name,cfg", list(_configs()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_logits_match_transformers(name, cfg, tmp_path):
    hf = _hf_model(cfg, tmp_path)
    ours = build_model(load_hf_dir(tmp_path))
    tokens = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert ours.cfg.n_params == sum(p.numel() for p in ours.parameters())


@pytest.mark.parametrize(
    "name,cfg", list(_configs()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_cached_decoding_matches_full_forward(name, cfg, tmp_path):
    """Prefill in two chunks then decode token by token through the KV cache: same logits."""
    _hf_model(cfg, tmp_path)
    model = build_model(load_hf_dir(tmp_path))
    tokens = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache.for_model(model.cfg, batch=1, max_len=16, dtype=torch.float32)
        parts = [model(tokens[:, :5], cache, 0), model(tokens[:, 5:9], cache, 5)]
        parts += [model(tokens[:, i : i + 1], cache, i) for i in range(9, 16)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)
