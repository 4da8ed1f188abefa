"""One flat config for every decoder family genforge runs (llama, qwen2, qwen3, gemma3)."""

from __future__ import annotations

from dataclasses import dataclass, field

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")


@dataclass
class ModelConfig:
    arch: str = "llama"  # family; decides nothing by itself, the flags below do
    vocab_size: int = 49152
    dim: int = 576  # residual stream width
    n_layers: int = 30
    n_heads: int = 9  # query heads
    n_kv_heads: int = 3  # key/value heads (grouped-query attention when < n_heads)
    head_dim: int = 0  # 0 = dim // n_heads
    hidden_dim: int = 1536  # gated-MLP inner width
    norm_eps: float = 1e-5
    max_seq_len: int = 8192  # the context length the model was trained for
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # HF-style {"rope_type": "linear"|"llama3", "factor": ...}
    tie_embeddings: bool = True  # output projection shares the token embedding
    qkv_bias: bool = False  # qwen2 has biases on q/k/v
    qk_norm: bool = False  # RMSNorm on each query/key head (qwen3, gemma3)
    sandwich_norm: bool = False  # extra norms after attention and MLP (gemma3)
    norm_unit_offset: bool = False  # RMSNorm scales by (1 + w) (gemma)
    embed_scale: bool = False  # multiply embeddings by sqrt(dim) (gemma)
    activation: str = "silu"  # gated-MLP activation: "silu" or "gelu_tanh"
    query_scale: float = 0.0  # 0 = head_dim ** -0.5; gemma3 uses query_pre_attn_scalar ** -0.5
    sliding_window: int = 0  # window of the sliding-attention layers; 0 = none
    layer_types: tuple[str, ...] = field(default=())  # per layer "full" or "sliding"; () = all full
    rope_local_theta: float = 10000.0  # RoPE base of the sliding layers (gemma3)

    def __post_init__(self):
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if not self.layer_types:
            self.layer_types = ("full",) * self.n_layers
        self.layer_types = tuple(self.layer_types)
        if self.query_scale == 0.0:
            self.query_scale = self.head_dim**-0.5
        assert len(self.layer_types) == self.n_layers, "one layer type per layer"
        assert self.n_heads % self.n_kv_heads == 0, "query heads must group evenly over kv heads"

    @property
    def n_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        d, h, kv = self.dim, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        attn = d * h + 2 * d * kv + h * d + (h + 2 * kv if self.qkv_bias else 0)
        attn += 2 * self.head_dim if self.qk_norm else 0
        mlp = 3 * d * self.hidden_dim
        norms = d * (4 if self.sandwich_norm else 2)
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * (attn + mlp + norms) + emb + d
