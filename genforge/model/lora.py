"""LoRA: low-rank adapters swapped in for a model's linear layers.

Design choices:
- `LoRALinear` wraps the layer it adapts (`base`, frozen: float `nn.Linear` or weight-only quantized
  `QuantLinear`, QLoRA-style) and adds `scaling * B(A(dropout(x)))`, as in Hu et al. (2021) and
  peft: A (rank x in) starts Kaiming-uniform, B (out x rank) at zero, so training starts at the
  base model; scaling = alpha / rank.
- A quantized base has no weight to differentiate; `_FrozenQuant` runs its forward as usual and
  its backward through the dequantized weight, so gradients reach the layers below.
- A base held as int8 per output channel is multiplied in int8 (`_FrozenInt8`): each row of the
  activations (forward) and of the output gradient (backward) is rounded to int8 with a scale of
  its own, as SwitchBack (Wortsman et al., 2023) and int8 mixed-precision training do; with no
  weight gradient to keep in 16 bits, every matmul of the base is an integer one. CPUs with
  integer dot products (VNNI, AMX) run them at twice bf16's rate.
- Layers that read one input (q/k/v, gate/up) multiply it by their A matrices stacked
  (`shared_input`): rank-16 matmuls run far below a CPU's matmul rate, a 48-wide one much less so.
- Several named adapters live in one module (`adapters`); a step picks one per row
  (`LoRALinear.route`), the way multi-LoRA servers batch requests for different adapters.
- Names are genforge's (`layers.3.attn.wq`); the weights layer maps them to peft's files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from genforge.model.quant import BLOCK_KINDS, QuantLinear, dequantize_blocks, quantize_rows

# The projections LoRA can adapt, by genforge name (peft's names are genforge.weights.peft's job).
TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
DEFAULT_TARGETS = TARGETS  # all linear layers: what QLoRA found matters more than the rank
DEFAULT_ADAPTER = "default"


@torch.library.custom_op("genforge::dequantize", mutates_args=())
def _dequantize(
    qweight: torch.Tensor, scales: torch.Tensor, extra: torch.Tensor | None, cols: int, bf16: bool
) -> torch.Tensor:
    """`quant.dequantize_blocks` as an operator of its own (of a weight with `cols` inputs), so
    that torch.compile keeps it whole instead of breaking the graph at a C++ call."""
    return dequantize_blocks(qweight, scales, extra, bf16)


@_dequantize.register_fake
def _(qweight, scales, extra, cols, bf16):
    return qweight.new_empty(
        (qweight.shape[0], cols), dtype=torch.bfloat16 if bf16 else torch.float32
    )


class _FrozenQuant(torch.autograd.Function):
    """y = x W^T and dx = dy W through a quantized layer's weight, dequantized for each (by
    genforge's kernel: a few ms a layer) and never kept: the memory stays the quantized size.
    In bf16 where the CPU multiplies it natively (or under bf16 autocast), as training runs.
    Its inputs are the layer's tensors, not the layer, so that torch.compile traces it once for
    every layer."""

    @staticmethod
    def forward(ctx, x, qweight, scales, extra, bias, cols: int, bf16: bool) -> torch.Tensor:
        ctx.save_for_backward(qweight, scales, extra)
        ctx.cols, ctx.bf16, ctx.x_dtype = cols, bf16, x.dtype
        w = _dequantize(qweight, scales, extra, cols, bf16)
        y = F.linear(x.to(w.dtype), w)
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        qweight, scales, extra = ctx.saved_tensors
        w = _dequantize(qweight, scales, extra, ctx.cols, ctx.bf16)  # (out, in)
        return (dy.to(w.dtype) @ w).to(ctx.x_dtype), None, None, None, None, None, None


class _FrozenInt8(torch.autograd.Function):
    """y = x W^T and dx = dy W with W = qweight * scales (int8 per output channel) and x, dy rounded
    to int8 per row: two integer matmuls with int32 sums (`torch._int_mm`), scaled back in float32.
    W's scales multiply dy's columns before dy is rounded, so one int8 copy serves both."""

    @staticmethod
    def forward(ctx, x, qweight, scales, bias) -> torch.Tensor:
        ctx.save_for_backward(qweight, scales)
        ctx.x_dtype = x.dtype
        xq, xs = quantize_rows(x.reshape(-1, x.shape[-1]))
        y = torch._int_mm(xq, qweight.t()) * (xs * scales.float())
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype).view(*x.shape[:-1], qweight.shape[0])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        qweight, scales = ctx.saved_tensors
        gq, gs = quantize_rows(dy.reshape(-1, dy.shape[-1]).float() * scales.float())
        dx = (torch._int_mm(gq, qweight) * gs).to(ctx.x_dtype)
        return dx.view(*dy.shape[:-1], qweight.shape[1]), None, None, None


def shared_input(x: torch.Tensor, layers: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    """`layer(x)` for each of `layers`, which read the same x (q/k/v, gate/up). Where they are LoRA
    layers with the same single adapter (`LoRALinear.trains_alone`), their A matrices are stacked
    into one matmul, x (N, C) by (C, the ranks summed), then split: one product three (or two)
    ranks wide instead of several 16-wide ones, which run far below the matmul kernels' rate on a
    CPU, and so too the two products of its backward."""
    names = {layer.trains_alone() if isinstance(layer, LoRALinear) else None for layer in layers}
    name = names.pop()
    if names or name is None:
        return [layer(x) for layer in layers]
    a = torch.cat([layer.lora_a[name] for layer in layers])
    parts = F.linear(x.to(a.dtype), a).split([layer.lora_a[name].shape[0] for layer in layers], -1)
    return [
        layer.plus_delta(name, frozen_forward(layer.base, x), x, xa)
        for layer, xa in zip(layers, parts, strict=True)
    ]


def frozen_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` with gradients to `x` only (a quantized layer has no autograd of its own); while
    training, every quantized layer takes this path, the first one too (whose input needs no
    gradient), so that torch.compile sees one kind of layer."""
    if not (isinstance(layer, QuantLinear) and torch.is_grad_enabled()):
        return layer(x)
    bias = None if layer.bias is None else layer.bias.detach()
    if layer.kind == "int8":
        return _FrozenInt8.apply(x, layer.qweight, layer.scales, bias)
    if layer.kind in BLOCK_KINDS:
        bf16 = x.dtype == torch.bfloat16 or torch.is_autocast_enabled(x.device.type)
        return _FrozenQuant.apply(x, *layer.block_parts(), bias, layer.in_features, bf16)
    return layer(x)


class LoRALinear(nn.Module):
    """A frozen linear layer plus one or more low-rank adapters."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.ParameterDict()  # name -> (rank, in)
        self.lora_b = nn.ParameterDict()  # name -> (out, rank)
        self.scaling: dict[str, float] = {}
        self.dropout = nn.Dropout(0.0)
        self.active: str | None = None  # the adapter every row uses; None = the base alone
        self.rows: list[tuple[str, slice]] | None = None  # per-row adapters (route)

    def add(self, name: str, rank: int, alpha: float, dropout: float = 0.0) -> None:
        a = torch.empty(rank, self.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # peft's init of A
        self.lora_a[name] = nn.Parameter(a)
        self.lora_b[name] = nn.Parameter(torch.zeros(self.out_features, rank))
        self.scaling[name] = alpha / rank
        self.dropout.p = dropout
        self.active = name

    def plus_delta(
        self, name: str, y: torch.Tensor, x: torch.Tensor, xa: torch.Tensor | None = None
    ) -> torch.Tensor:
        """y + scaling * (x A^T) B^T, the last two as one addmm (no separate scale and add over
        the output): the same arithmetic for every row, routed or not. `xa`: x A^T, made already
        (`shared_input`)."""
        a, b = self.lora_a[name], self.lora_b[name]
        if xa is None:
            if self.dropout.p and self.training:
                x = self.dropout(x)
            xa = F.linear(x.to(a.dtype), a)
        xa = xa.reshape(-1, a.shape[0])
        out = torch.addmm(
            y.reshape(-1, y.shape[-1]).to(xa.dtype), xa, b.t(), alpha=self.scaling[name]
        )
        return out.view(y.shape).to(y.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = frozen_forward(self.base, x)
        if self.rows is not None:  # rows of (1, N, C) routed to different adapters
            if not self.rows:
                return y
            y = y.clone()
            for name, rows in self.rows:
                y[:, rows] = self.plus_delta(name, y[:, rows], x[:, rows])
            return y
        if self.active is None:
            return y
        return self.plus_delta(self.active, y, x)

    def trains_alone(self) -> str | None:
        """The one adapter every row uses with no dropout in training (None: routed rows, the base
        alone, or dropout): the case `shared_input` may take."""
        name = self.active
        if self.rows is not None or name is None or (self.dropout.p and self.training):
            return None
        return name

    def merged_weight(self, name: str | None) -> torch.Tensor:
        """The float32 weight of base + adapter `name` (None: the base alone), for export."""
        base = self.base
        w = base.dequantize() if isinstance(base, QuantLinear) else base.weight.detach().float()
        if name is None or name not in self.lora_a:
            return w
        a, b = self.lora_a[name].detach().float(), self.lora_b[name].detach().float()
        return w + (b @ a) * self.scaling[name]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def add_lora(
    model: nn.Module,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    name: str = DEFAULT_ADAPTER,
) -> list[str]:
    """Give every `targets` projection of `model` an adapter `name`, freezing everything else;
    returns the adapted module names. Layers fused for inference (wqkv) cannot take adapters."""
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = []
    for module_name, module in list(model.named_modules()):
        leaf = module_name.rpartition(".")[2]
        if leaf not in targets:
            continue
        if not isinstance(module, LoRALinear):
            parent, leaf = _parent(model, module_name)
            module = LoRALinear(module)
            setattr(parent, leaf, module)
        module.add(name, rank, alpha, dropout)
        adapted.append(module_name)
    return adapted


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_state(model: nn.Module, name: str = DEFAULT_ADAPTER) -> dict[str, torch.Tensor]:
    """Adapter `name`'s tensors: {"layers.0.attn.wq.lora_a": (rank, in), "...lora_b": (out, rank)}."""
    out = {}
    for module_name, m in lora_modules(model):
        if name in m.lora_a:
            out[f"{module_name}.lora_a"] = m.lora_a[name].detach()
            out[f"{module_name}.lora_b"] = m.lora_b[name].detach()
    return out


# Projections that inference fuses into one matmul (Transformer.fuse_projections), and their parts.
FUSED_PARTS = {"wqkv": ("wq", "wk", "wv"), "w_gate_up": ("w_gate", "w_up")}


def load_lora(
    model: nn.Module, state: dict[str, torch.Tensor], alpha: float, name: str = DEFAULT_ADAPTER
) -> None:
    """Add adapter `name` (frozen) to `model` from `lora_state`-style tensors; the rank comes from
    their shapes. On a model fused for inference, the adapters of q/k/v (gate/up) become one
    adapter of the fused layer: A stacked, B block-diagonal, the same sums."""
    pairs = {}
    for key, a in state.items():
        if key.endswith(".lora_a"):
            module_name = key.removesuffix(".lora_a")
            pairs[module_name] = (a, state[f"{module_name}.lora_b"])
    for module_name, module in list(model.named_modules()):
        parent_name, _, leaf = module_name.rpartition(".")
        base = module.base if isinstance(module, LoRALinear) else module
        if module_name in pairs:
            a, b = pairs.pop(module_name)
            _put(model, module_name, name, a, b, alpha / a.shape[0])
        elif leaf in FUSED_PARTS:
            parts = [f"{parent_name}.{p}" for p in FUSED_PARTS[leaf]]
            if not any(p in pairs for p in parts):
                continue
            sizes = _part_sizes(model.get_submodule(parent_name), leaf, base.out_features)
            found = [(i, pairs.pop(p)) for i, p in enumerate(parts) if p in pairs]
            rank = sum(a.shape[0] for _, (a, _) in found)
            a_all = torch.cat([a for _, (a, _) in found])
            b_all = torch.zeros(base.out_features, rank, dtype=a_all.dtype)
            col = 0
            for i, (a, b) in found:
                row = sum(sizes[:i])
                b_all[row : row + sizes[i], col : col + a.shape[0]] = b
                col += a.shape[0]
            _put(model, module_name, name, a_all, b_all, alpha / found[0][1][0].shape[0])
    if pairs:
        raise ValueError(f"the model has no layer {next(iter(pairs))} for the adapter")


def _part_sizes(parent: nn.Module, fused: str, out_features: int) -> tuple[int, ...]:
    if fused == "wqkv":
        return tuple(parent.qkv_sizes)
    return (out_features // 2, out_features // 2)


def _put(model, module_name, name, a, b, scaling) -> None:
    module = model.get_submodule(module_name)
    if not isinstance(module, LoRALinear):
        parent, leaf = _parent(model, module_name)
        module = LoRALinear(module)
        setattr(parent, leaf, module)
    if tuple(a.shape[1:]) != (module.in_features,) or tuple(b.shape) != (
        module.out_features,
        a.shape[0],
    ):
        raise ValueError(f"the adapter's tensors for {module_name} do not fit that layer")
    module.lora_a[name] = nn.Parameter(a.detach().float().clone(), requires_grad=False)
    module.lora_b[name] = nn.Parameter(b.detach().float().clone(), requires_grad=False)
    module.scaling[name] = scaling


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make `name` the adapter every row uses (None: the base model alone)."""
    for _, m in lora_modules(model):
        m.active = name if name is None or name in m.lora_a else None
        m.rows = None
    model.adapter_rows = name is not None


def route(model: nn.Module, rows: list[tuple[str | None, slice]] | None) -> None:
    """Per-row adapters for the next forward passes: each (adapter name or None, rows of the
    flattened (1, N) token batch). None clears the routing."""
    routed = bool(rows) and any(name is not None for name, _ in rows)
    model.adapter_rows = routed or any(m.active is not None for _, m in lora_modules(model))
    for _, m in lora_modules(model):
        m.rows = (
            None if rows is None else [(n, r) for n, r in rows if n is not None and n in m.lora_a]
        )


def merge_lora(model: nn.Module, name: str = DEFAULT_ADAPTER) -> None:
    """Fold adapter `name` into float weights and drop the adapters (for export)."""
    for module_name, m in list(lora_modules(model)):
        parent, leaf = _parent(model, module_name)
        linear = nn.Linear(m.in_features, m.out_features, bias=m.base.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(m.merged_weight(name))
            if m.base.bias is not None:
                linear.bias.copy_(m.base.bias.float())
        setattr(parent, leaf, linear)


def adapter_names(model: nn.Module) -> set[str]:
    """The adapters `model` holds."""
    return {name for _, m in lora_modules(model) for name in m.lora_a}


def active_adapter(model: nn.Module) -> str | None:
    """The adapter `set_adapter` switched on for every row, if any."""
    return next((m.active for _, m in lora_modules(model) if m.active is not None), None)
