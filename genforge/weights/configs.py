"""Build a `ModelConfig` from GGUF metadata or a Hugging Face `config.json`, per architecture."""

from __future__ import annotations

from typing import Any

from genforge.errors import GenforgeError
from genforge.model.config import ARCHITECTURES, ModelConfig

# Flags that follow from the family alone.
FAMILY_FLAGS: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {"qkv_bias": True},
    "qwen3": {"qk_norm": True},
    "gemma3": {
        "qk_norm": True,
        "sandwich_norm": True,
        "norm_unit_offset": True,
        "embed_scale": True,
        "activation": "gelu_tanh",
    },
}
GEMMA3_SLIDING_PATTERN = 6  # every 6th gemma3 layer is global; the rest use the sliding window


def unsupported_architecture(arch: str) -> GenforgeError:
    return GenforgeError(
        f"architecture {arch!r} is not supported; genforge runs {', '.join(ARCHITECTURES)} models."
    )


def _gemma3_layer_types(n_layers: int) -> tuple[str, ...]:
    return tuple(
        "full" if (i + 1) % GEMMA3_SLIDING_PATTERN == 0 else "sliding" for i in range(n_layers)
    )


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str]) -> ModelConfig:
    arch = meta.get("general.architecture", "?")
    if arch not in FAMILY_FLAGS:
        raise unsupported_architecture(arch)

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    if "rope_freqs.weight" in tensor_names:
        raise GenforgeError(
            "this GGUF stores per-frequency RoPE factors (rope_freqs), which genforge does not "
            "support yet; use the model's Hugging Face safetensors directory instead."
        )
    n_layers, n_heads = int(get("block_count")), int(get("attention.head_count"))
    dim = int(get("embedding_length"))
    scaling = None
    if get("rope.scaling.type") == "linear":
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    kwargs = dict(
        arch=arch,
        vocab_size=len(meta["tokenizer.ggml.tokens"]),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        head_dim=int(get("attention.key_length", dim // n_heads)),
        hidden_dim=int(get("feed_forward_length")),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        max_seq_len=int(get("context_length", 2048)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        tie_embeddings="output.weight" not in tensor_names,
        **FAMILY_FLAGS[arch],
    )
    if arch == "gemma3":
        kwargs["sliding_window"] = int(get("attention.sliding_window", 0))
        kwargs["layer_types"] = _gemma3_layer_types(n_layers)
    return ModelConfig(**kwargs)


_HF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}


def _hf_rope(cfg: dict, kind: str) -> tuple[float, dict | None]:
    """(theta, scaling) from either `rope_parameters` (transformers 5) or rope_theta/rope_scaling."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and kind in params:  # gemma3 keeps one entry per attention kind
        params = params[kind]
    if isinstance(params, dict) and "rope_theta" in params:
        theta, scaling = params["rope_theta"], params
    else:
        default = 10000.0 if kind == "sliding_attention" else cfg.get("rope_theta", 10000.0)
        theta = cfg.get("rope_local_base_freq", default) if kind == "sliding_attention" else default
        scaling = cfg.get("rope_scaling") if kind == "full_attention" else None
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return float(theta), scaling


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    if cfg.get("model_type") == "gemma3" and "text_config" in cfg:
        cfg = {**cfg["text_config"], "model_type": "gemma3_text"}
    model_type = cfg.get("model_type", "?")
    if model_type not in _HF_ARCH:
        raise unsupported_architecture(model_type)
    arch = _HF_ARCH[model_type]
    n_layers, n_heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    theta, scaling = _hf_rope(cfg, "full_attention")
    kwargs = dict(
        arch=arch,
        vocab_size=cfg["vocab_size"],
        dim=cfg["hidden_size"],
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
        hidden_dim=cfg["intermediate_size"],
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        max_seq_len=cfg.get("max_position_embeddings", 2048),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=cfg.get("tie_word_embeddings", arch == "gemma3"),
        **FAMILY_FLAGS[arch],
    )
    if arch == "qwen2" and cfg.get("use_sliding_window"):
        raise GenforgeError("qwen2 checkpoints with use_sliding_window=true are not supported.")
    if arch == "gemma3":
        kwargs["query_scale"] = cfg.get("query_pre_attn_scalar", 256) ** -0.5
        kwargs["sliding_window"] = cfg.get("sliding_window") or 0
        types = cfg.get("layer_types")
        kwargs["layer_types"] = (
            tuple("sliding" if t == "sliding_attention" else "full" for t in types)
            if types
            else _gemma3_layer_types(n_layers)
        )
        kwargs["rope_local_theta"] = _hf_rope(cfg, "sliding_attention")[0]
    return ModelConfig(**kwargs)
