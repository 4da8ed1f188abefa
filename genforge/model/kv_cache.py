"""A preallocated key/value cache: one (B, n_kv_heads, max_len, head_dim) buffer pair per layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genforge.model import kernels


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (batch, n_kv_heads, max_len, head_dim)
        # empty, not zeros: only written positions are ever read, and untouched pages cost no memory.
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len

    @classmethod
    def for_model(cls, cfg, batch: int, max_len: int, dtype: torch.dtype) -> KVCache:
        return cls(cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim, dtype)

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor):
        """Write k/v (B, Hkv, T, D) at start_pos; return all keys/values up to start_pos + T."""
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked to write up to {end}")
        self.k[layer][:, :, start_pos:end] = k
        self.v[layer][:, :, start_pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class PagedKVCache:
    """A pool of KV blocks shared by many sequences: per layer a (n_blocks * block_size, Hkv, D) pair.

    Which sequence owns which block is decided outside (`genforge.generate.blocks`); this class only
    holds the tensors. They are `torch.empty`: pages the pool never touches cost no memory.
    """

    def __init__(
        self,
        n_layers: int,
        n_blocks: int,
        block_size: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (n_blocks * block_size, n_kv_heads, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.n_blocks, self.block_size = n_blocks, block_size
        self.device = self.k[0].device

    @classmethod
    def for_model(
        cls, cfg, n_blocks: int, block_size: int, dtype: torch.dtype, device="cpu"
    ) -> PagedKVCache:
        return cls(cfg.n_layers, n_blocks, block_size, cfg.n_kv_heads, cfg.head_dim, dtype, device)

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the keys and values at slots `src` to slots `dst`, in every layer."""
        src, dst = src.to(self.device), dst.to(self.device)
        for k, v in zip(self.k, self.v, strict=True):
            k.index_copy_(0, dst, k.index_select(0, src))
            v.index_copy_(0, dst, v.index_select(0, src))


class PagedBatch:
    """One forward pass over several sequences, their new tokens laid end to end: (1, N) tokens.

    Built once per step from each sequence's (block table, first new position, token count, how many
    of its last new tokens need logits: a bool means 0 or 1); every layer then writes its keys/values
    into the pool and attends through the index tensors made here. `last_rows` are the rows whose
    logits the model returns.
    Single-token rows (decodes) share one batched attention call with a padding mask; each prompt
    chunk gets its own causal call.
    """

    def __init__(
        self,
        cache: PagedKVCache,
        seqs: list[tuple[list[int], int, int, bool]],
        sliding_window: int | None = None,
    ):
        self.cache, bs = cache, cache.block_size
        positions, slots, offsets = [], [], []
        self.decode_rows: list[int] = []
        decode_keys: list[torch.Tensor] = []
        self.chunks: list[tuple[int, int, torch.Tensor, bool]] = []  # rows a..b, key slots, fresh
        off = 0
        for blocks, start, n, logits in seqs:
            table = torch.tensor(blocks, dtype=torch.long)
            pos = torch.arange(start + n)
            seq_slots = table[pos // bs] * bs + pos % bs  # every position so far, then the new ones
            positions.append(pos[start:])
            slots.append(seq_slots[start:])
            if n == 1:
                self.decode_rows.append(off)
                decode_keys.append(seq_slots)
            else:
                self.chunks.append((off, off + n, seq_slots, start == 0))
            offsets.extend(range(off + n - int(logits), off + n))
            off += n
        self.positions = torch.cat(positions)
        self.write_slots = torch.cat(slots)
        self.last_rows = torch.tensor(offsets, dtype=torch.long)  # last new token(s) of each
        self.window = sliding_window
        self.chunk_masks = [self._chunk_mask(a, b, keys) for a, b, keys, _ in self.chunks]
        self.all_decode = len(self.decode_rows) == off
        if decode_keys:
            lengths = torch.tensor([len(k) for k in decode_keys])
            width = int(lengths.max())
            self.decode_index = torch.zeros(len(decode_keys), width, dtype=torch.long)
            for i, keys in enumerate(decode_keys):
                self.decode_index[i, : len(keys)] = keys
            self.decode_flat = self.decode_index.flatten()
            self.decode_lengths = lengths
            # One query per row; no mask at all when every row sees the full width.
            masks = self._masks((lengths - 1)[:, None], width, bool((lengths == width).all()))
            self.decode_mask = {
                kind: m if m is None else m[:, None, None, :] for kind, m in masks.items()
            }
        if cache.device.type != "cpu":  # built on the CPU, used where the cache is
            self._move(cache.device)

    def _move(self, device: torch.device) -> None:
        for name in ("positions", "write_slots", "last_rows", "decode_index", "decode_flat"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).to(device))
        if hasattr(self, "decode_lengths"):
            self.decode_lengths = self.decode_lengths.to(device)
            self.decode_mask = {k: _to(m, device) for k, m in self.decode_mask.items()}
        self.chunks = [(a, b, keys.to(device), fresh) for a, b, keys, fresh in self.chunks]
        self.chunk_masks = [
            {kind: _to(mask, device) for kind, mask in masks.items()} for masks in self.chunk_masks
        ]

    def _chunk_mask(self, a: int, b: int, keys: torch.Tensor) -> dict:
        n, length = b - a, len(keys)
        # A whole prompt at once (n == length) uses SDPA's own causal path: no mask.
        return self._masks(torch.arange(length - n, length)[:, None], length, n == length)

    def _masks(self, q: torch.Tensor, width: int, plain_is_none: bool) -> dict:
        """Boolean masks (queries, width), True = may attend, for queries at positions q over keys
        0..width-1: causal for full-attention layers (None if `plain_is_none`), plus the window for
        sliding layers when it cuts anything off."""
        k = torch.arange(width)[None, :]
        causal = k <= q
        full = None if plain_is_none else causal
        if self.window and width > self.window:
            return {"full": full, "sliding": causal & (q - k < self.window)}
        return {"full": full, "sliding": full}

    def attention(self, layer: int, q, k, v, scale: float, sliding: bool) -> torch.Tensor:
        """q (N, H, D), k/v (N, Hkv, D) for the new tokens -> attention output (N, H, D).

        q, k and v in the activations' float dtype; the cache may keep keys and values in a
        smaller one (bf16, fp16), and attention reads them back as floats."""
        pool_k, pool_v = self.cache.k[layer], self.cache.v[layer]
        pool_k.index_copy_(0, self.write_slots, k.to(pool_k.dtype))
        pool_v.index_copy_(0, self.write_slots, v.to(pool_v.dtype))
        return self._attend(layer, q, k, v, scale, sliding)

    def attention_fused(
        self, layer: int, qkv, n_heads: int, n_kv_heads: int, cos, sin, scale: float, sliding: bool
    ) -> torch.Tensor:
        """The same from a fused q/k/v projection (N, (H + 2 Hkv) D) before RoPE, in float32:
        genforge's kernel rotates q and k in place and writes k and v into the pool in one call."""
        pool_k, pool_v = self.cache.k[layer], self.cache.v[layer]
        n, d = qkv.shape[0], pool_k.shape[-1]
        kernels.ops.rope_store(
            qkv,
            n_heads,
            n_kv_heads,
            cos.view(n, d),
            sin.view(n, d),
            pool_k,
            pool_v,
            self.write_slots,
        )
        q = qkv[:, : n_heads * d].view(n, n_heads, d)
        k = qkv[:, n_heads * d : (n_heads + n_kv_heads) * d].view(n, n_kv_heads, d)
        v = qkv[:, (n_heads + n_kv_heads) * d :].view(n, n_kv_heads, d)
        return self._attend(layer, q, k, v, scale, sliding)

    def _attend(self, layer: int, q, k, v, scale: float, sliding: bool) -> torch.Tensor:
        pool_k, pool_v = self.cache.k[layer], self.cache.v[layer]
        kind = "sliding" if sliding else "full"
        gqa = q.shape[1] != k.shape[1]
        out = q.new_empty(q.shape) if not self.all_decode else None
        if self.decode_rows and kernels.ops is not None and q.dtype == torch.float32 and q.is_cpu:
            # genforge's kernel reads the keys and values where the pool keeps them
            rows = self.decode_rows
            window = self.window if sliding and self.window else 0
            y = kernels.ops.decode_attention(
                q if self.all_decode else q[rows],
                pool_k,
                pool_v,
                self.decode_index,
                self.decode_lengths,
                scale,
                window,
            )
            if self.all_decode:
                return y
            out[rows] = y
        elif self.decode_rows:
            rows = self.decode_rows
            qd = (q if self.all_decode else q[rows]).unsqueeze(2)  # (B, H, 1, D)
            shape = (*self.decode_index.shape, *pool_k.shape[1:])  # (B, L, Hkv, D)
            # index_select: several times faster than advanced indexing on CPU
            kd = pool_k.index_select(0, self.decode_flat).view(shape).transpose(1, 2).to(q.dtype)
            vd = pool_v.index_select(0, self.decode_flat).view(shape).transpose(1, 2).to(q.dtype)
            y = F.scaled_dot_product_attention(
                qd, kd, vd, attn_mask=self.decode_mask[kind], scale=scale, enable_gqa=gqa
            ).squeeze(2)
            if self.all_decode:
                return y
            out[rows] = y
        for (a, b, keys, fresh), masks in zip(self.chunks, self.chunk_masks, strict=True):
            qc = q[a:b].transpose(0, 1).unsqueeze(0)  # (1, H, n, D)
            if fresh:  # as the cache holds them, so that a prompt reads the same cold or cached
                kc, vc = k[a:b].to(pool_k.dtype).to(q.dtype), v[a:b].to(pool_v.dtype).to(q.dtype)
            else:
                kc = pool_k.index_select(0, keys).to(q.dtype)
                vc = pool_v.index_select(0, keys).to(q.dtype)
            mask = masks[kind]
            y = F.scaled_dot_product_attention(
                qc,
                kc.transpose(0, 1).unsqueeze(0),
                vc.transpose(0, 1).unsqueeze(0),
                attn_mask=mask,
                is_causal=mask is None,
                scale=scale,
                enable_gqa=gqa,
            )
            out[a:b] = y[0].transpose(0, 1)
        return out


def _to(mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if mask is None else mask.to(device)
