"""Declarative maps from checkpoint tensor names to genforge parameter names, per architecture.

`{}` stands for the layer index. A GGUF entry may carry a transform that turns the stored tensor into
the Hugging Face layout the model uses: llama files store Q/K rows permuted for llama.cpp's rotary
layout, and gemma3 files store RMSNorm weights as (1 + w).
"""

from __future__ import annotations

_HF_COMMON = {
    "model.embed_tokens.weight": "tok_emb.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attn.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attn.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attn.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attn.wo.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.w_gate.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.mlp.w_up.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.w_down.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attn_norm.weight",
}
_HF_BIAS = {
    "model.layers.{}.self_attn.q_proj.bias": "layers.{}.attn.wq.bias",
    "model.layers.{}.self_attn.k_proj.bias": "layers.{}.attn.wk.bias",
    "model.layers.{}.self_attn.v_proj.bias": "layers.{}.attn.wv.bias",
}
_HF_QK_NORM = {
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.attn.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.attn.k_norm.weight",
}
_HF_PRE_MLP_NORM = {"model.layers.{}.post_attention_layernorm.weight": "layers.{}.mlp_norm.weight"}
_HF_SANDWICH = {
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.post_attn_norm.weight",
    "model.layers.{}.pre_feedforward_layernorm.weight": "layers.{}.mlp_norm.weight",
    "model.layers.{}.post_feedforward_layernorm.weight": "layers.{}.post_mlp_norm.weight",
}

HF_NAMES: dict[str, dict[str, str]] = {
    "llama": {**_HF_COMMON, **_HF_PRE_MLP_NORM},
    "qwen2": {**_HF_COMMON, **_HF_PRE_MLP_NORM, **_HF_BIAS},
    "qwen3": {**_HF_COMMON, **_HF_PRE_MLP_NORM, **_HF_QK_NORM},
    "gemma3": {**_HF_COMMON, **_HF_QK_NORM, **_HF_SANDWICH},
}

_GGUF_COMMON = {
    "token_embd.weight": "tok_emb.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
    "blk.{}.attn_q.weight": "layers.{}.attn.wq.weight",
    "blk.{}.attn_k.weight": "layers.{}.attn.wk.weight",
    "blk.{}.attn_v.weight": "layers.{}.attn.wv.weight",
    "blk.{}.attn_output.weight": "layers.{}.attn.wo.weight",
    "blk.{}.ffn_gate.weight": "layers.{}.mlp.w_gate.weight",
    "blk.{}.ffn_up.weight": "layers.{}.mlp.w_up.weight",
    "blk.{}.ffn_down.weight": "layers.{}.mlp.w_down.weight",
    "blk.{}.attn_norm.weight": "layers.{}.attn_norm.weight",
    "blk.{}.ffn_norm.weight": "layers.{}.mlp_norm.weight",
}
_GGUF_BIAS = {
    "blk.{}.attn_q.bias": "layers.{}.attn.wq.bias",
    "blk.{}.attn_k.bias": "layers.{}.attn.wk.bias",
    "blk.{}.attn_v.bias": "layers.{}.attn.wv.bias",
}
_GGUF_QK_NORM = {
    "blk.{}.attn_q_norm.weight": "layers.{}.attn.q_norm.weight",
    "blk.{}.attn_k_norm.weight": "layers.{}.attn.k_norm.weight",
}
_GGUF_SANDWICH = {
    "blk.{}.post_attention_norm.weight": "layers.{}.post_attn_norm.weight",
    "blk.{}.post_ffw_norm.weight": "layers.{}.post_mlp_norm.weight",
}

GGUF_NAMES: dict[str, dict[str, str]] = {
    "llama": _GGUF_COMMON,
    "qwen2": {**_GGUF_COMMON, **_GGUF_BIAS},
    "qwen3": {**_GGUF_COMMON, **_GGUF_QK_NORM},
    "gemma3": {**_GGUF_COMMON, **_GGUF_QK_NORM, **_GGUF_SANDWICH},
}

# Per architecture: genforge parameter pattern -> transform name applied to the GGUF tensor.
GGUF_TRANSFORMS: dict[str, dict[str, str]] = {
    "llama": {"layers.{}.attn.wq.weight": "unpermute_q", "layers.{}.attn.wk.weight": "unpermute_k"},
    "gemma3": {
        name: "minus_one"
        for name in (
            "norm.weight",
            "layers.{}.attn_norm.weight",
            "layers.{}.mlp_norm.weight",
            "layers.{}.post_attn_norm.weight",
            "layers.{}.post_mlp_norm.weight",
            "layers.{}.attn.q_norm.weight",
            "layers.{}.attn.k_norm.weight",
        )
    },
}


def expand(names: dict[str, str], n_layers: int) -> dict[str, str]:
    """Expand `{}` patterns into one entry per layer."""
    out = {}
    for src, dst in names.items():
        if "{}" in src:
            out.update({src.format(i): dst.format(i) for i in range(n_layers)})
        else:
            out[src] = dst
    return out


def pattern_of(name: str) -> str:
    """'layers.3.attn.wq.weight' -> 'layers.{}.attn.wq.weight'."""
    parts = name.split(".")
    return ".".join("{}" if p.isdigit() else p for p in parts)
