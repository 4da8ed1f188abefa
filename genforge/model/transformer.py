"""The decoder-only transformer behind every model genforge runs.

Design choices:
- One module covers the llama (SmolLM2, Llama), qwen2/qwen3 (Qwen2.5, Qwen3) and gemma3 families; they
  differ only in flags of `ModelConfig` (qkv bias, q/k norms, sandwich norms, (1 + w) norms, scaled
  embeddings, GELU vs SiLU, sliding-window layers), never in subclasses.
- Pure and single-device: no file I/O, no logging, no distributed code. Weights are loaded from
  outside (`genforge.weights`) by name maps onto the parameter names used here.
- RoPE in the "rotate half" layout of Hugging Face checkpoints; GGUF llama files are un-permuted into
  it at load time, so there is one rotary code path.
- Attention is `F.scaled_dot_product_attention` with native grouped-query support; sliding-window
  layers get an explicit mask. Keys/values go through a `KVCache` when one is given. Training on
  the CPU takes `genforge.model.attention.flash_attention` instead (genforge's own kernels where
  they run), and packed training rows (`positions=`) attend one sequence a row there.
- Norms compute in float32 and cast back, as the reference implementations do, so that bf16 runs stay
  close to fp32 ones.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from genforge.model import kernels
from genforge.model.attention import Packing, flash_attention, keep_attention, packing
from genforge.model.config import ModelConfig
from genforge.model.kv_cache import KVCache, PagedBatch
from genforge.model.lora import shared_input
from genforge.model.quant import BLOCK_KINDS, QuantLinear, cat


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, unit_offset: bool):
        super().__init__()
        self.eps, self.unit_offset = eps, unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and not self.unit_offset:
            if kernels.ops is not None and x.is_cpu and not torch.is_grad_enabled():
                # genforge's: DecodeStep's norm, so both paths give the same bits
                return kernels.ops.rms_norm(x, self.weight, self.eps)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:  # gemma: scale by (1 + w) in float32, then cast
            return (h * (1.0 + self.weight.float())).type_as(x)
        return self.weight * h.type_as(x)  # llama/qwen: cast, then scale


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,), with the linear and llama3 scaling variants."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor, low, high = (
            scaling["factor"],
            scaling["low_freq_factor"],
            scaling["high_freq_factor"],
        )
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    elif kind != "default":
        raise ValueError(f"unsupported rope scaling {kind!r}")
    return inv_freq.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, T, H, D); cos/sin: (T, 1, D), or (B, T, 1, D) for packed rows
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).type_as(x)


def concat_linears(mods: list[nn.Module]) -> nn.Module | None:
    """One linear layer computing the outputs of `mods` side by side (same input), or None."""
    if not all(isinstance(m, nn.Linear) for m in mods):
        return type(mods[0]).concat(mods)  # e.g. quantized layers
    has_bias = mods[0].bias is not None
    n_out = sum(m.out_features for m in mods)
    fused = nn.Linear(mods[0].in_features, n_out, bias=has_bias, device="meta")
    fused.weight = nn.Parameter(cat([m.weight for m in mods]), requires_grad=False)
    if has_bias:
        fused.bias = nn.Parameter(cat([m.bias for m in mods]), requires_grad=False)
    return fused


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = cfg.query_scale
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.wq = nn.Linear(cfg.dim, q_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, kv_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, kv_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(q_dim, cfg.dim, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, cfg.norm_unit_offset)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, cfg.norm_unit_offset)
        else:
            self.q_norm = self.k_norm = None
        self.wqkv, self.qkv_sizes = None, (q_dim, kv_dim, kv_dim)

    def fuse(self) -> None:
        """One matmul for q, k and v instead of three (inference only: the weights are concatenated)."""
        self.wqkv = concat_linears([self.wq, self.wk, self.wv])
        if self.wqkv is not None:
            del self.wq, self.wk, self.wv

    def forward(
        self, x, cos, sin, mask, cache, layer: int, start_pos: int, sliding: bool, pack=None
    ):
        B, T, _ = x.shape  # (B, T, C)
        if (
            isinstance(cache, PagedBatch)
            and self.wqkv is not None
            and self.q_norm is None
            and x.dtype == torch.float32
            and x.is_cpu
            and kernels.ops is not None
        ):
            # genforge's kernels: RoPE and the cache writes in one call, attention on the pool
            qkv = self.wqkv(x)[0]
            y = cache.attention_fused(
                layer, qkv, self.n_heads, self.n_kv_heads, cos, sin, self.scale, sliding
            )
            return self.wo(y.reshape(B, T, -1))
        if self.wqkv is not None:
            q, k, v = self.wqkv(x).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = shared_input(x, (self.wq, self.wk, self.wv))
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if isinstance(cache, PagedBatch):  # B == 1: the tokens of several sequences, end to end
            # Attention in float32: PyTorch's bf16 attention is several times slower on CPUs
            # without native bf16, and the cache is read many times more than it is written.
            q, k, v = q[0].float(), k[0].float(), v[0].float()
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            y = cache.attention(layer, q, k, v, self.scale, sliding)
            return self.wo(y.to(x.dtype).reshape(B, T, -1))
        if pack is not None:
            return self.wo(self._packed(q, k, v, cos, sin, mask, pack).view(B, T, -1))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if (  # training in bf16 on the CPU: genforge's kernels where they run (rows as they are)
            cache is None
            and mask is None
            and q.is_cpu
            and torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu")
        ):
            y, _ = flash_attention(*_autocast(q, k, v), None, self.scale)
            return self.wo(y.view(B, T, -1))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(layer, start_pos, k, v)  # (B, Hkv, start_pos + T, D)
        causal = mask is None and (cache is None or T > 1)  # no SymBool when compiled
        y = self._sdpa(q, k, v, mask, causal)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))

    def _sdpa(self, q, k, v, mask, causal: bool) -> torch.Tensor:
        """PyTorch's attention of q (B, H, T, D) on k, v (B, Hkv, S, D), grouped-query natively."""
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            scale=self.scale,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )

    def _packed(self, q, k, v, cos, sin, mask, pack: Packing) -> torch.Tensor:
        """Attention of packed rows (`Packing`), one sequence a row; (B * T, H * D)."""
        q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)  # (N, H, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # cos, sin: (N, 1, D)
        q, k, v = _autocast(q, k, v)  # before the gather: half the bytes
        S, W = pack.gather.shape
        index = pack.gather.flatten()
        q, k, v = (t.index_select(0, index).view(S, W, *t.shape[1:]) for t in (q, k, v))
        if q.is_cpu and torch.is_grad_enabled():
            y, _ = flash_attention(q, k, v, mask, self.scale)  # (S, W, H, D)
            return y.view(S * W, -1).index_select(0, pack.scatter)
        y = self._sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, mask is None)
        return y.transpose(1, 2).reshape(S * W, -1).index_select(0, pack.scatter)


def _autocast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in autocast's dtype where it is on, as autocast gives PyTorch's attention
    (`flash_attention`, a custom operator, is outside its lists)."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    low = torch.get_autocast_dtype(device)
    return tuple(t.to(low) for t in tensors)


class GatedMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w_up = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w_down = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.act = F.silu if cfg.activation == "silu" else lambda t: F.gelu(t, approximate="tanh")
        self.w_gate_up = None
        # genforge's fused silu(gate) * up, set by fuse() when the kernels are built
        self.silu_mul = None

    def fuse(self) -> None:
        """One matmul for the gate and up projections (inference only)."""
        self.w_gate_up = concat_linears([self.w_gate, self.w_up])
        if self.w_gate_up is not None:
            del self.w_gate, self.w_up
            if self.act is F.silu and kernels.ops is not None:
                self.silu_mul = kernels.ops.silu_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.w_gate_up is not None
            and self.silu_mul is not None
            and x.dtype == torch.float32
            and x.is_cpu
        ):
            h = self.w_gate_up(x)
            return self.w_down(self.silu_mul(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], -1))
        if self.w_gate_up is not None:
            gate, up = self.w_gate_up(x).chunk(2, dim=-1)
            return self.w_down(self.act(gate) * up)
        gate, up = shared_input(x, (self.w_gate, self.w_up))
        return self.w_down(self.act(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.sliding = layer, cfg.layer_types[layer] == "sliding"
        norm = lambda: RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_unit_offset)  # noqa: E731
        self.attn_norm, self.attn = norm(), Attention(cfg)
        self.mlp_norm, self.mlp = norm(), GatedMLP(cfg)
        self.post_attn_norm = norm() if cfg.sandwich_norm else nn.Identity()
        self.post_mlp_norm = norm() if cfg.sandwich_norm else nn.Identity()

    def forward(self, x, rope, masks, cache, start_pos, pack=None):
        kind = "sliding" if self.sliding else "full"
        cos, sin = rope[kind]
        mask = masks[kind] if masks else None
        # the layer's index addresses its cache only; read without one, torch.compile would
        # specialise the block's code to each layer (a compile per layer, then eager past 8)
        layer = self.layer if cache is not None else 0
        h = self.attn(
            self.attn_norm(x), cos, sin, mask, cache, layer, start_pos, self.sliding, pack
        )
        x = x + self.post_attn_norm(h)
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    fused_decode = True  # decode steps through `DecodeStep` where it covers the model
    # Training: keep only each block's input for backward and recompute the rest (activation
    # checkpointing: ~1/3 more compute for a fraction of the activation memory)
    checkpoint_blocks = False
    adapter_rows = False  # some rows of this step go through LoRA adapters (genforge.model.lora)
    train_blocks: list | None = None  # compiled blocks for training steps (compile_blocks)
    memory_budget = 1.0

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_unit_offset)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if torch.get_default_device().type != "meta":  # on meta, whoever fills it calls init_rope
            self.init_rope()

    @property
    def head_weight(self) -> torch.Tensor:
        """The (vocab, dim) output projection of a float model (the embedding when tied)."""
        return self.tok_emb.weight if self.output is None else self.output.weight

    def init_rope(self) -> None:
        """(Re)compute the RoPE inverse frequencies, e.g. after building the model on `meta`."""
        cfg = self.cfg
        freqs = {"full": rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)}
        if "sliding" in cfg.layer_types:
            freqs["sliding"] = rope_frequencies(cfg.head_dim, cfg.rope_local_theta, None)
        for kind, inv_freq in freqs.items():
            self.register_buffer(f"inv_freq_{kind}", inv_freq, persistent=False)

    def fuse_projections(self) -> Transformer:
        """Fuse q/k/v and gate/up matmuls for inference (fewer, larger matmuls; fewer Python calls)."""
        for block in self.layers:
            block.attn.fuse()
            block.mlp.fuse()
        return self

    def compile_blocks(self, memory_budget: float = 1.0) -> None:
        """torch.compile every block for training steps (grad enabled, no cache): all blocks run
        the same code, so it is traced and compiled once (a few seconds) where compiling the whole
        model unrolls every layer. Inference (no grad, caches) keeps the eager blocks. A plain
        list: the compiled wrappers add no names to the state dict.

        memory_budget: the share of the block's activations backward may keep (the compiler's
        `activation_memory_budget`); below 1 it recomputes the cheapest ones (norms, activations,
        RoPE) in backward instead: at 0.5, a third less memory at about the same speed."""
        # dynamic: batches differ in rows and width, and one compile covers them all
        options = {"joint_custom_pre_pass": keep_attention()}
        self.train_blocks = [
            torch.compile(block, dynamic=True, options=options) for block in self.layers
        ]
        self.memory_budget = memory_budget

    def _decode_step(self):
        """genforge's one-call decode step over every layer (`kernels.ops.DecodeStep`), or None
        where this model has a part it does not cover (q/k norms, sandwich or (1 + w) norms, GELU,
        another RoPE for sliding-window layers, weights other than q8/q5/q4). Built on first use from the
        layers' own tensors, and again whenever a layer's module is replaced (e.g. an adapter)."""
        linears = [
            tuple(
                getattr(m, "base", m)
                for m in (b.attn.wqkv, b.attn.wo, b.mlp.w_gate_up, b.mlp.w_down)
            )
            for b in self.layers
        ]  # an adapter's layer (genforge.model.lora) counts as its base: steps without adapters
        key = tuple(id(m) for group in linears for m in group)
        if getattr(self, "_step_key", None) == key:
            return self._step
        self._step_key, self._step = key, self._build_decode_step(linears)
        return self._step

    def _build_decode_step(self, linears):
        cfg = self.cfg
        covered = (
            kernels.ops is not None
            and hasattr(kernels.ops, "DecodeStep")
            and not (cfg.qk_norm or cfg.sandwich_norm or cfg.norm_unit_offset)
            and cfg.activation == "silu"
            and torch.equal(
                getattr(self, "inv_freq_sliding", self.inv_freq_full), self.inv_freq_full
            )
            and all(
                isinstance(m, QuantLinear) and m.kind in BLOCK_KINDS
                for group in linears
                for m in group
            )
            and all(
                b.attn_norm.weight.dtype == b.mlp_norm.weight.dtype == torch.float32
                for b in self.layers
            )
        )
        if not covered:
            return None

        def parts(m: QuantLinear) -> list:
            bias = None if m.bias is None else m.bias.detach().float().contiguous()
            return [*m.block_parts(), bias]

        step = kernels.ops.DecodeStep(
            cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps, cfg.query_scale
        )
        for block, (qkv, o, gate_up, down) in zip(self.layers, linears, strict=True):
            window = cfg.sliding_window if block.sliding and cfg.sliding_window else 0
            step.add_layer(
                block.attn_norm.weight.detach(),
                parts(qkv),
                parts(o),
                block.mlp_norm.weight.detach(),
                parts(gate_up),
                parts(down),
                window,
            )
        return step

    def _rope(self, positions: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """cos and sin (T, 1, D) for positions (T,), or (B, T, 1, D) for (B, T)."""
        out = {}
        for kind in ("full", "sliding"):
            inv_freq = getattr(self, f"inv_freq_{kind}", None)
            if inv_freq is None:
                continue
            angles = positions[..., None].float() * inv_freq  # (..., T, D/2)
            angles = torch.cat((angles, angles), dim=-1)[..., None, :]  # (..., T, 1, D)
            out[kind] = (angles.cos(), angles.sin())
        out.setdefault("sliding", out["full"])
        return out

    def _masks(self, T: int, start_pos: int, device) -> dict[str, torch.Tensor | None]:
        """Boolean masks (T, start_pos + T), True = may attend; None lets SDPA use its fast paths."""
        q = torch.arange(start_pos, start_pos + T, device=device)[:, None]
        k = torch.arange(start_pos + T, device=device)[None, :]
        full = None if start_pos == 0 or T == 1 else k <= q
        window = self.cfg.sliding_window
        if window and start_pos + T > window:
            return {"full": full, "sliding": (k <= q) & (q - k < window)}
        return {"full": full, "sliding": full}

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | PagedBatch | None = None,
        start_pos: int = 0,
        last_only: bool = False,
        targets: torch.Tensor | None = None,
        hidden: bool = False,
        positions: torch.Tensor | None = None,
        loss_rows: int = 0,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens (B, T) at positions start_pos.. (or (B, 1, vocab)).

        With `targets` (B, T), the mean cross-entropy loss instead (targets of -100 are ignored),
        computed without materialising the logits (`linear_cross_entropy`, in blocks of
        `loss_rows` rows; 0 = its default). With `hidden`, the
        final normed hidden states (B, T, C) that the head (`head_weight`) turns into logits.

        With a `PagedBatch`, tokens are (1, N): several sequences' new tokens end to end, positions
        come from the batch, and `last_only` gives the rows `cache.last_rows` (each sequence's last
        new token, for those that sample this step).

        With `positions` (B, T) (no cache), each row holds several sequences end to end (packed
        training examples): a position of 0 starts a sequence, which attends to itself only; a
        negative position marks padding that belongs to none (`genforge.model.attention.packing`).
        """
        B, T = tokens.shape
        pack = None
        x = self.tok_emb(tokens)  # (B, T, C)
        if x.dtype != self.norm.weight.dtype:  # e.g. a quantized model's bf16 embedding
            x = x.to(self.norm.weight.dtype)
        if self.cfg.embed_scale:
            x = x * torch.tensor(self.cfg.dim**0.5, dtype=x.dtype)
        if isinstance(cache, PagedBatch):
            rope, masks = self._rope(cache.positions), None
        elif positions is not None:
            pack = packing(positions)
            rope, masks = (
                self._rope(positions.flatten()),
                self._masks(pack.gather.shape[1], 0, x.device),
            )
        else:
            positions = torch.arange(start_pos, start_pos + T, device=tokens.device)
            rope, masks = self._rope(positions), self._masks(T, start_pos, tokens.device)
        step = None
        if (
            isinstance(cache, PagedBatch)
            and cache.all_decode
            and self.fused_decode
            and x.dtype == torch.float32
            and x.is_cpu
            and not torch.is_grad_enabled()
            and not self.adapter_rows
        ):
            step = self._decode_step()
        if step is not None:  # every layer in one call of genforge's kernels
            cos, sin = rope["full"]
            pools = cache.cache
            x = step.run(
                x[0],
                cos.view(T, -1),
                sin.view(T, -1),
                cache.write_slots,
                cache.decode_index,
                cache.decode_lengths,
                pools.k,
                pools.v,
            )[None]
        else:
            training = torch.is_grad_enabled() and cache is None
            blocks, budget = self.layers, contextlib.nullcontext()
            if training and self.train_blocks:
                from torch._functorch import config as functorch_config  # training only

                blocks = self.train_blocks  # the budget is read when they compile (first step)
                budget = functorch_config.patch(activation_memory_budget=self.memory_budget)
            with budget:
                for block in blocks:
                    if training and self.checkpoint_blocks:
                        from torch.utils.checkpoint import checkpoint

                        x = checkpoint(
                            block, x, rope, masks, cache, start_pos, pack, use_reentrant=False
                        )
                    else:
                        x = block(x, rope, masks, cache, start_pos, pack)
        if last_only:
            x = x[:, cache.last_rows, :] if isinstance(cache, PagedBatch) else x[:, -1:, :]
        x = self.norm(x)
        if hidden:
            return x
        if targets is not None:
            # imported here: defining its autograd.Function imports torch._dynamo (~0.9 s), which
            # inference never needs
            from genforge.model.loss import linear_cross_entropy

            weight = self.tok_emb.weight if self.output is None else self.output.weight
            return linear_cross_entropy(x.flatten(0, 1), weight, targets.flatten(), loss_rows)
        logits = F.linear(x, self.tok_emb.weight) if self.output is None else self.output(x)
        return logits.float()
