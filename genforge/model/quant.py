"""Weight-only quantization for CPU inference, in two families of formats.

Decode reads every weight once per token, so it is bound by memory bandwidth: smaller weights are
faster. Quantized layers replace `nn.Linear` modules in place (a module swap, no parallel model class).

- `q8` / `q4`: GGUF's own blocks of 32 inputs (Q8_0: w = scale * q; Q4_1: w = scale * q + min, which
  holds a Q4_1 file's blocks exactly), run by genforge's kernels (genforge.model.kernels) with
  float32 activations. Used whenever the kernels are built. A file's Q5_0 matrices, where a
  model asks for q8, stay in their own 5.5 bits as `q5` (a layer takes that format from the
  tensors it loads: `adopt_formats`).
- `int8` / `int4`: PyTorch's own CPU kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`)
  with bf16 activations: int8 per output channel; int4 asymmetric in groups of 32,
  w = (q - 8) * scale + zero (Q4_1's grid too). The fallback where no compiler is.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from genforge.model import kernels
from genforge.model.kernels import Blocks

QUANT_KINDS = ("int8", "int4", "q8", "q4")
BLOCK_KINDS = ("q8", "q5", "q4")  # run by genforge's kernels (q5 only as a file's own blocks)
INT4_GROUP = 32
DEQUANT_ROWS = 128  # int8 layers with at least this many input rows use a float32 matmul
KERNEL_ROWS = 128  # q8/q4 layers take fewer input rows through genforge's kernels
PANEL_BYTES = 4 << 20  # from there on, the float weight goes through in panels of this size


ROWS_PER_CHUNK = 4096  # quantize big matrices (embeddings, heads) in slices: small temporaries


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) floats -> int8 (N, K) and float32 scales (N, 1), symmetric per row: x ≈ q * s (a
    weight's rows, or a training step's activations and gradients, `lora._FrozenInt8`)."""
    x = x.float()
    s = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30) / 127.0
    return torch.round(x / s).clamp(-127, 127).to(torch.int8), s


def quantize_int8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric per-output-channel int8: w ≈ q * scale."""
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(w.shape[0])
    for a in range(0, w.shape[0], ROWS_PER_CHUNK):
        q[a : a + ROWS_PER_CHUNK], s = quantize_rows(w[a : a + ROWS_PER_CHUNK])
        scale[a : a + ROWS_PER_CHUNK] = s[:, 0]
    return {"qweight": q, "scales": scale}


def quantize_int4(w: torch.Tensor, group: int = INT4_GROUP) -> dict[str, torch.Tensor]:
    """Asymmetric int4 in groups of `group` inputs: w ≈ (q - 8) * scale + zero, packed for the CPU."""
    N, K = w.shape
    g = w.float().reshape(N, K // group, group)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)  # (N, K/group)
    scale = ((hi - lo) / 15.0).clamp(min=1e-10)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    zero = lo + 8.0 * scale
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(N, K), 1)
    scales_zeros = torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous()  # (K/g, N, 2)
    return {"qweight": packed, "scales": scales_zeros}


@functools.cache
def int4_row_block() -> int | None:
    """How many rows the CPU int4 packing interleaves: measured, because it follows the vector
    width ATen picked at run time (32 rows with AVX2 kernels, 64 with AVX-512). None: no block
    size up to 256 lets separately packed parts be stacked."""
    q = torch.randint(
        0, 16, (512, 32), dtype=torch.int32, generator=torch.Generator().manual_seed(0)
    )
    pack = torch.ops.aten._convert_weight_to_int4pack_for_cpu
    whole = pack(q, 1)
    for rows in (16, 32, 64, 128, 256):  # the packing needs rows in multiples of 16
        if torch.equal(torch.cat([pack(q[:rows], 1), pack(q[rows:], 1)]), whole):
            return rows
    return None


def layer_kind(kind: str, in_features: int) -> str:
    """The format a layer of `in_features` inputs gets when the model asks for `kind`: the kernels'
    q4 needs inputs in multiples of 64 (two blocks per 32 bytes), q8 in multiples of 32."""
    if kind == "q4" and in_features % (2 * kernels.BLOCK):
        kind = "q8"
    if kind == "q8" and in_features % kernels.BLOCK:
        kind = "int8"
    return kind


def can_stack(kind: str, rows: list[int] | tuple[int, ...]) -> bool:
    """Whether layers with these output sizes can be stacked into one (see QuantLinear.concat)."""
    if kind != "int4":  # the other formats keep a row per output
        return True
    block = int4_row_block()
    return block is not None and all(r % block == 0 for r in rows[:-1])


class QuantLinear(nn.Module):
    """A bias-optional linear layer whose weight is stored as int8 or packed int4."""

    def __init__(self, in_features: int, out_features: int, bias: bool, kind: str):
        super().__init__()
        self.in_features, self.out_features, self.kind = in_features, out_features, kind
        if kind == "int8":
            self.register_buffer(
                "qweight", torch.empty(out_features, in_features, dtype=torch.int8)
            )
            self.register_buffer("scales", torch.empty(out_features))
        elif kind == "int4":
            if in_features % INT4_GROUP:
                raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP}")
            self.register_buffer(
                "qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8)
            )
            self.register_buffer("scales", torch.empty(in_features // INT4_GROUP, out_features, 2))
        elif kind in BLOCK_KINDS:
            nibbles = kind in ("q4", "q5")  # two blocks per 32 bytes: inputs in multiples of 64
            if in_features % (kernels.BLOCK * (2 if nibbles else 1)):
                raise ValueError(f"{kind} cannot hold a layer of {in_features} inputs")
            cols = in_features // 2 if nibbles else in_features
            dtype = torch.uint8 if nibbles else torch.int8
            self.register_buffer("qweight", torch.empty(out_features, cols, dtype=dtype))
            blocks = (out_features, in_features // kernels.BLOCK)
            self.register_buffer("scales", torch.empty(blocks, dtype=torch.float16))
            if kind == "q4":
                self.register_buffer("mins", torch.empty(blocks, dtype=torch.float16))
            if kind == "q5":
                self.register_buffer("qh", torch.empty(blocks, dtype=torch.int32))
        else:
            raise ValueError(f"unknown quantization {kind!r}")
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear | torch.Tensor, kind: str, act_dtype: torch.dtype = torch.bfloat16
    ) -> QuantLinear:
        """Quantize a linear layer (or a bare (out, in) weight); activations will be `act_dtype`."""
        weight = linear if isinstance(linear, torch.Tensor) else linear.weight
        bias = None if isinstance(linear, torch.Tensor) else linear.bias
        N, K = weight.shape
        mod = cls(K, N, bias is not None, kind)
        for name, value in _quantized_parts(weight, kind, act_dtype).items():
            setattr(mod, name, value)
        if bias is not None:
            mod.bias = nn.Parameter(bias.detach().to(act_dtype), requires_grad=False)
        return mod

    @classmethod
    def concat(cls, mods: list[QuantLinear]) -> QuantLinear | None:
        """One layer computing the outputs of `mods` side by side, or None where the packing
        does not allow it. Rows are stacked: int8 keeps a row per output channel; packed int4 keeps
        blocks of `int4_row_block()` rows, so every part but the last must fill whole blocks."""
        kinds = {m.kind for m in mods}
        if kinds == {"q5", "q8"}:  # a file's Q5_0 blocks beside q8 ones: all as q8
            mods, kinds = [m.as_q8() for m in mods], {"q8"}
        if len(kinds) != 1:
            return None
        if not can_stack(next(iter(kinds)), [m.out_features for m in mods]):
            return None
        has_bias = mods[0].bias is not None
        out = cls(mods[0].in_features, sum(m.out_features for m in mods), has_bias, kinds.pop())
        qweights = [m.qweight for m in mods]
        if len({q.dtype for q in qweights}) > 1:  # q8 int8 beside Q5_0's uint8: all as int8
            qweights = [kernels.signed_q8(q) for q in qweights]
        out.qweight = cat(qweights)
        out.scales = cat([m.scales for m in mods], dim=1 if out.kind == "int4" else 0)
        if out.kind == "q4":
            out.mins = cat([m.mins for m in mods])
        if out.kind == "q5":
            out.qh = cat([m.qh for m in mods])
        if has_bias:
            out.bias = nn.Parameter(cat([m.bias for m in mods]), requires_grad=False)
        return out

    def as_q8(self) -> QuantLinear:
        """This layer in q8 blocks (a q5's values unpacked to uint8, exactly); itself if it is
        not q5."""
        if self.kind != "q5":
            return self
        out = QuantLinear(self.in_features, self.out_features, self.bias is not None, "q8")
        out.qweight = kernels.q5_values(self.qweight, self.qh, self.scales)
        out.scales, out.bias = self.scales, self.bias
        return out

    def block_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """qweight, scales and the kernels' `extra` (q4's mins, q5's fifth bits, q8's None)."""
        extra = {"q4": "mins", "q5": "qh"}.get(self.kind)
        return self.qweight, self.scales, None if extra is None else getattr(self, extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (tokens, in)
        if self.kind in BLOCK_KINDS:
            y = self._blocks_mm(x2)
        elif self.kind == "int8" and x2.shape[0] >= DEQUANT_ROWS:
            # Many rows (a prompt chunk): dequantizing to float32 and using the float matmul is
            # faster than the int8 kernel on CPUs without native bf16 (see RESULTS.md).
            y = F.linear(x2.float(), self.dequantize()).to(x.dtype)
        elif self.kind == "int8":  # scales in the activations' dtype (a training base's are
            # float32, and its activations bf16 under autocast)
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales.to(x2.dtype))
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, self.qweight, INT4_GROUP, self.scales
            )
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def _blocks_mm(self, x: torch.Tensor) -> torch.Tensor:
        ops = kernels.ops
        if ops is None:  # a layer made by hand in a process without the kernels
            return F.linear(x.float(), self.dequantize()).to(x.dtype)
        x32 = x.float().contiguous()
        if x.shape[0] < KERNEL_ROWS or self._kernel_takes_every_row(ops):
            # Each row through the kernel gets the same bits alone, in a batch of decodes or in
            # a short prompt chunk: batching and the prefix cache leave greedy answers unchanged.
            if self.kind == "q4":
                y = ops.q4_matmul(x32, self.qweight, self.scales, self.mins)
            elif self.kind == "q5":
                y = ops.q5_matmul(x32, self.qweight, self.scales, self.qh)
            else:
                y = ops.q8_matmul(x32, self.qweight, self.scales)
            return y.to(x.dtype)
        # A long prompt chunk: the kernel's integer dot products are compute-bound there, and a
        # float matmul on the dequantized weight is several times faster (bf16 on CPUs with AMX).
        # The activations are rounded to the same int8 grid first, so the two paths agree to a
        # float32 rounding step (float32 matmul) or to bf16's 2^-9 (bf16).
        # The weight is dequantized in panels of rows that stay in the cache, each multiplied
        # straight into its columns of y: a whole one (Qwen2.5-0.5B's gate/up: 35 MB of float32)
        # was a fresh allocation every time, and faulting its pages in took as long as a fifth of
        # the matmul (docs/engine.md). Each column of y is the same dot product either way.
        bf16 = kernels.native_bf16()
        xq = ops.fake_quantize(x32)
        xq = xq.to(torch.bfloat16) if bf16 else xq
        qweight, scales, extra = self.block_parts()
        rows = panel_rows(self.in_features, bf16)
        y = xq.new_empty((x.shape[0], self.out_features))
        for n0 in range(0, self.out_features, rows):
            part = slice(n0, n0 + rows)
            w = ops.dequantize(
                qweight[part], scales[part], None if extra is None else extra[part], bf16
            )
            torch.mm(xq, w.t(), out=y[:, part])
        return y.to(x.dtype)

    def _kernel_takes_every_row(self, ops) -> bool:
        # AVX2's kernel takes q5, Q5_0's uint8 values and (from KERNEL_ROWS rows) q4 8 weight rows
        # at a time and outruns the float32 matmul on the dequantized weight at any row count
        # (1.5-2x at 128 and 512 rows, docs/engine.md); its signed q8 and AVX-512's kernels do not.
        return ops.isa() == "avx2" and (self.kind != "q8" or self.qweight.dtype == torch.uint8)

    def dequantized(self, bf16: bool = False) -> torch.Tensor:
        """The (out, in) weight this layer holds as float32 (or bf16), by genforge's dequantize
        kernel where it is built (q8, q5 and q4)."""
        return dequantize_blocks(*self.block_parts(), bf16)

    def dequantize(self) -> torch.Tensor:
        """The float32 (out, in) weight this layer holds (int8, q8, q5 and q4)."""
        if self.kind == "int8":
            return self.qweight.float() * self.scales.float()[:, None]
        if self.kind == "q4":
            return kernels.unpack_q4(self.qweight, self.scales, self.mins)
        if self.kind == "q5":
            return kernels.unpack_q5(self.qweight, self.qh, self.scales)
        return kernels.unpack_q8(self.qweight, self.scales)


def panel_rows(cols: int, bf16: bool = False) -> int:
    """Weight rows per panel of `_blocks_mm`: ~PANEL_BYTES of floats, a multiple of 64 rows."""
    return max(64, PANEL_BYTES // (cols * (2 if bf16 else 4)) // 64 * 64)


def dequantize_blocks(
    qweight: torch.Tensor, scales: torch.Tensor, extra: torch.Tensor | None, bf16: bool = False
) -> torch.Tensor:
    """A q8 (`extra` None), q4 (`extra`: its mins) or q5 (its fifth bits) weight's (out, in)
    floats (bf16 if asked), by genforge's dequantize kernel where it is built."""
    if kernels.ops is not None:
        return kernels.ops.dequantize(qweight, scales, extra, bf16)
    if extra is None:
        w = kernels.unpack_q8(qweight, scales)
    elif extra.dtype == torch.int32:
        w = kernels.unpack_q5(qweight, extra, scales)
    else:
        w = kernels.unpack_q4(qweight, scales, extra)
    return w.to(torch.bfloat16) if bf16 else w


def _quantized_parts(w: torch.Tensor, kind: str, act_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    if kind == "q4":
        return kernels.pack_q4(w)
    if kind == "q8":
        return kernels.pack_q8(w)
    parts = quantize_int8(w) if kind == "int8" else quantize_int4(w)
    return {"qweight": parts["qweight"], "scales": parts["scales"].to(act_dtype)}


# The output head stays at 8 bits, as llama.cpp's 4-bit mixes keep it at 6-8: its errors land
# directly on the logits (with an int4 head SmolLM2's greedy answers flip; with int8 they do not).
def head_kind(kind: str) -> str:
    return "q8" if kind in ("q8", "q4") else "int8"


# The token embedding of a quantized model: q8 blocks where the head is q8 (`QuantEmbedding`;
# tied to the head, the same tensors), else bf16 (looked up, not multiplied: a few rows a step),
# whatever the activations: float32 would double its memory (Qwen's: 272 -> 545 MB).
EMBED_DTYPE = torch.bfloat16


def embed_kind(kind: str, dim: int) -> str | None:
    """ "q8" where the embedding of a model quantized as `kind` is kept in q8 blocks, else None."""
    return "q8" if layer_kind(head_kind(kind), dim) == "q8" else None


class QuantEmbedding(nn.Module):
    """A token embedding in q8 blocks of 32 (GGUF's Q8_0 grid), or a file's own Q5_0 blocks as q5:
    rows are dequantized to float32 as they are looked up. Half of bf16's memory or less; a Q8_0
    or Q5_0 embedding (SmolLM2's, Qwen2.5's) is held exactly, and a tied head shares these very
    tensors."""

    def __init__(self, vocab_size: int, dim: int, kind: str = "q8"):
        super().__init__()
        self.kind = kind
        cols, dtype = (dim // 2, torch.uint8) if kind == "q5" else (dim, torch.int8)
        blocks = (vocab_size, dim // kernels.BLOCK)
        self.register_buffer("qweight", torch.empty(vocab_size, cols, dtype=dtype))
        self.register_buffer("scales", torch.empty(blocks, dtype=torch.float16))
        if kind == "q5":
            self.register_buffer("qh", torch.empty(blocks, dtype=torch.int32))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = tokens.reshape(-1)
        q, scales = self.qweight.index_select(0, ids), self.scales.index_select(0, ids)
        if self.kind == "q5":
            rows = kernels.unpack_q5(q, self.qh.index_select(0, ids), scales)
        else:
            rows = kernels.unpack_q8(q, scales)
        return rows.view(*tokens.shape, -1)


def adopt_formats(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Make each q8 layer (and q8 embedding) of an empty model q5 where the `state` it will load
    holds a file's Q5_0 blocks for it (their fifth bits, `<name>.qh`), and each q8 layer q4 where
    it holds a K-quant's 4-bit blocks (`<name>.mins`), in place, on the device the model is built
    on."""
    for name, child in list(model.named_modules()):
        if getattr(child, "kind", None) != "q8":
            continue
        kind = "q5" if f"{name}.qh" in state else "q4" if f"{name}.mins" in state else None
        if kind and isinstance(child, QuantLinear):
            new = QuantLinear(child.in_features, child.out_features, child.bias is not None, kind)
        elif kind == "q5" and isinstance(child, QuantEmbedding):
            new = QuantEmbedding(child.qweight.shape[0], child.qweight.shape[1], "q5")
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, new)
    return model


def quantize_structure(
    model: nn.Module, kind: str, act_dtype: torch.dtype = torch.bfloat16
) -> nn.Module:
    """Swap every nn.Linear for an (empty) QuantLinear and add a quantized head, in place.

    Meant for a model built on the `meta` device, to be filled from `state_converter`'s output.
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                k = head_kind(kind) if child is getattr(model, "output", None) else kind
                k = layer_kind(k, child.in_features)
                quant = QuantLinear(
                    child.in_features, child.out_features, child.bias is not None, k
                )
                setattr(module, child_name, quant)
    v, d = model.tok_emb.weight.shape
    if getattr(model, "output", False) is None:  # a tied head: quantized, and the embedding's too
        model.output = QuantLinear(d, v, False, layer_kind(head_kind(kind), d))
    if embed_kind(kind, d):
        model.tok_emb = QuantEmbedding(v, d)
    return model


def state_converter(kind: str, act_dtype: torch.dtype, tied_head: bool):
    """A per-tensor converter for the weight loader: float32 checkpoint tensor -> quantized state.

    Converting each tensor as it is read keeps peak memory near the quantized model's size, and
    quantizing from float32 keeps GGUF's grid (rounding to bf16 first would move values off it).
    """

    def quantized(prefix: str, w, k: str) -> dict[str, torch.Tensor]:
        k = layer_kind(k, w.shape[1])
        # the file's own blocks as they are, else quantized from floats
        parts = w.parts if runs_as(w, k) else _quantized_parts(_floats(w), k, act_dtype)
        return {f"{prefix}.{name}": v for name, v in parts.items()}

    def convert(name: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
        if name == "output.weight":
            return quantized("output", w, head_kind(kind))
        if name.endswith(".weight") and len(w.shape) == 2 and name != "tok_emb.weight":
            return quantized(name.removesuffix(".weight"), w, kind)
        if name == "tok_emb.weight":
            if embed_kind(kind, w.shape[1]):  # q8 blocks, shared with a tied head
                own = isinstance(w, Blocks) and w.kind in ("q8", "q5")  # QuantEmbedding's kinds
                parts = w.parts if own else kernels.pack_q8(_floats(w))
                out = {f"tok_emb.{k}": v for k, v in parts.items()}
                return out | ({f"output.{k}": v for k, v in parts.items()} if tied_head else {})
            out = {name: _floats(w).to(EMBED_DTYPE)}
            return out | (quantized("output", w, head_kind(kind)) if tied_head else {})
        return {name: _floats(w).to(act_dtype)}

    # GGUF Q8_0 / Q5_0 / Q4_1 matrices come as their own blocks (genforge.weights.load.Blocks)
    convert.accepts_blocks = kind in ("q8", "q4")
    return convert


def quantize_layers(model: nn.Module, kind: str) -> nn.Module:
    """Swap the blocks' linear layers for (empty) `QuantLinear`s of `kind` with float32 activations,
    in place, keeping embedding and head as they are: the frozen base of QLoRA-style training.
    A layer whose width the kind cannot hold stays float. Fill it from `layer_converter`."""
    for block in model.layers:
        for module in list(block.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and layer_kind(kind, child.in_features) == kind:
                    quant = QuantLinear(
                        child.in_features, child.out_features, child.bias is not None, kind
                    )
                    setattr(module, child_name, quant)
    return model


def layer_converter(kind: str):
    """The weight loader's converter for `quantize_layers`: the blocks' matrices as `kind`
    (the file's own where they are of that kind), everything else float32."""

    def convert(name: str, w) -> dict[str, torch.Tensor]:
        is_layer = name.startswith("layers.") and name.endswith(".weight") and len(w.shape) == 2
        if is_layer and layer_kind(kind, w.shape[1]) == kind:
            prefix = name.removesuffix(".weight")
            own = runs_as(w, kind)
            parts = w.parts if own else _quantized_parts(_floats(w), kind, torch.float32)
            return {f"{prefix}.{k}": v for k, v in parts.items()}
        return {name: _floats(w).float()}

    convert.accepts_blocks = True
    return convert


def runs_as(w, kind: str) -> bool:
    """Whether `w` is a file's own blocks that a layer asked to be `kind` runs as they are: blocks
    of that kind, Q5_0's q5 where q8 is asked (the same weights exactly, in 5.5 bits), or a
    K-quant's q4 where q8 is asked: no format holds Q4_K bit for bit, and its own 4-bit values
    under fp16 sub-block scales (within 2^-12 of them) are closer to the file than a requantization
    to q8 (within 1/254 of each block's largest), in half the bytes."""
    if not isinstance(w, Blocks):
        return False
    return w.kind == kind or (w.kind, kind) == ("q5", "q8") or (w.source, kind) == ("Q4_K", "q8")


def _floats(w) -> torch.Tensor:
    return w.dequantize() if isinstance(w, Blocks) else w


__all__ = [
    "QUANT_KINDS",
    "QuantEmbedding",
    "QuantLinear",
    "adopt_formats",
    "can_stack",
    "layer_kind",
    "quantize_structure",
    "state_converter",
]


def cat(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """torch.cat, but on `meta` only the shape: concatenating meta tensors runs a Python reference
    whose first use imports torch._dynamo (~0.8 s of a cold start)."""
    if not tensors[0].is_meta:
        return torch.cat(tensors, dim)
    shape = list(tensors[0].shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return torch.empty(shape, dtype=tensors[0].dtype, device="meta")
