"""Attention for training on packed rows: several sequences end to end in a row (no padding
for the matmuls), attended one sequence a row.

Design choices:
- `Packing` maps the batch's tokens to an (S, W) layout, one sequence a row, and back: gathers
  and scatters of a few MB a layer, where padding every sequence for the whole block would make
  the matmuls, most of a step, run on the padding too.
- On the CPU, attention in training is one operator each way (`flash_attention`): genforge's own
  kernels (kernels/attention.cpp) for causal bf16 attention where the CPU has AVX512-BF16 and no
  AMX (3.9x PyTorch's forward and 3.3x its backward at SmolLM2's shapes,
  benchmarks/training_kernels.py), PyTorch's flash attention kernels elsewhere (float32, a mask,
  AMX, whose tiles oneDNN's kernels use). `keep_attention` marks the forward's outputs as saved in the
  compiler's joint graph, so that a block compiled under an activation memory budget does not run
  the kernel a second time in backward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from genforge.model import kernels

# Rows of packed sequences are attended one sequence a row, that row padded to a multiple of this.
PACK_WIDTH_MULTIPLE = 16


class Packing(NamedTuple):
    """Several sequences end to end in the rows of a batch (training), attended one sequence a row:
    `gather` (S, W) holds the flat token indices (into the batch's B * T tokens) of each of the S
    sequences, its last token repeated past its end (causal attention never lets a real token see
    those); `scatter` (B * T,) each token's place in the (S * W) layout. The matmuls run on the
    tokens as they are; attention costs what a batch padded to the longest sequence would."""

    gather: torch.Tensor
    scatter: torch.Tensor


def packing(positions: torch.Tensor) -> Packing:
    """The `Packing` of rows (B, T) whose sequences each count positions 0, 1, 2, ... (a position
    of 0 starts one). A negative position marks padding that belongs to no sequence: it attends to
    nothing, its output is another token's (no loss may be taken there; none reaches the rest)."""
    flat = positions.flatten()
    real = flat >= 0
    starts = (flat == 0).nonzero().flatten()
    sequence = (flat == 0).cumsum(0) - 1
    lengths = torch.bincount(sequence[real], minlength=len(starts))
    width = -(-int(lengths.max()) // PACK_WIDTH_MULTIPLE) * PACK_WIDTH_MULTIPLE
    slots = torch.arange(width, device=flat.device)
    gather = starts[:, None] + torch.minimum(slots[None, :], lengths[:, None] - 1)
    return Packing(gather, torch.where(real, sequence * width + flat, 0))


# Training's attention on the CPU: PyTorch's flash attention kernels as one operator each way, so
# that torch.compile's partitioner keeps the output for backward (an opaque operator cannot be
# recomputed) where it otherwise ran the forward kernel again in backward, 6-9 % of a fine-tuning
# step (SmolLM2 LoRA, benchmarks/finetune_speed.py). Tensors (S, W, H, D): S rows of W tokens.
@torch.library.custom_op("genforge::flash_attention", mutates_args=())
def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal (or `mask`ed) attention of q (S, W, H, D) on k, v (S, W, Hkv, D): the output
    (S, W, H, D) and the log-sum-exp of each query's scores (S, H, W), held in float64 (a few KB)
    so that rounding the saved float32 activations to bf16 (fine-tuning's `bf16_saved`) passes it
    by: backward's probabilities are exp(score - lse), and bf16's 2^-9 of an lse near 10 would
    move them by 2 %."""
    if _own_kernels(q, mask):
        return tuple(
            kernels.ops.flash_forward(q.contiguous(), k.contiguous(), v.contiguous(), scale)
        )
    mask = _additive(mask, q.dtype)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        0.0,
        mask is None,
        attn_mask=mask,
        scale=scale,
    )
    return out.transpose(1, 2).contiguous(), lse.contiguous().double()


@flash_attention.register_fake
def _(q, k, v, mask, scale):
    S, W, H, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (S, H, W), dtype=torch.float64
    )


@torch.library.custom_op("genforge::flash_attention_backward", mutates_args=())
def flash_attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _own_kernels(q, mask):
        args = (t.contiguous() for t in (grad, q, k, v, out, lse))
        return tuple(kernels.ops.flash_backward(*args, scale))
    mask = _additive(mask, q.dtype)
    grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad.transpose(1, 2),
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        out.transpose(1, 2),
        lse.float(),
        0.0,
        mask is None,
        attn_mask=mask,
        scale=scale,
    )
    dq, dk, dv = (g.transpose(1, 2).contiguous() for g in grads)
    return dq, dk, dv


@flash_attention_backward.register_fake
def _(grad, q, k, v, out, lse, mask, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _own_kernels(q: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether genforge's attention kernels take this call: causal, bf16, a head size they tile."""
    return (
        mask is None
        and q.dtype == torch.bfloat16
        and q.shape[-1] % 16 == 0
        and q.shape[-1] <= 512
        and _own_kernels_here()
    )


def _own_kernels_here() -> bool:
    """genforge's attention kernels are loaded and this CPU runs them faster than PyTorch's: it has
    AVX512-BF16 (their instructions) and no AMX (where PyTorch's bf16 kernels run on the tiles)."""
    return kernels.training_kernels() and "amx_bf16" not in kernels.cpu_flags()


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = may attend) as the kernels take it: 0 or -inf, added to scores."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, float("-inf")
    )


def _flash_setup(ctx, inputs, output):
    q, k, v, mask, scale = inputs
    ctx.save_for_backward(q, k, v, *output, mask)
    ctx.scale = scale


def _flash_backward(ctx, grad, _lse_grad):
    q, k, v, out, lse, mask = ctx.saved_tensors
    dq, dk, dv = flash_attention_backward(grad, q, k, v, out, lse, mask, ctx.scale)
    return dq, dk, dv, None, None


flash_attention.register_autograd(_flash_backward, setup_context=_flash_setup)


def keep_attention():
    """A pass over the compiler's joint graph that marks `flash_attention`'s outputs as saved for
    backward: under an activation memory budget the partitioner would run the operator again in
    backward (6-9 % of a fine-tuning step) to save a few MB (its output is one activation wide)."""
    import operator

    from torch._inductor.custom_graph_pass import CustomGraphPass
    from torch.utils.checkpoint import CheckpointPolicy

    class KeepAttention(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            for node in graph.nodes:
                if node.target is torch.ops.genforge.flash_attention.default:
                    node.meta["recompute"] = CheckpointPolicy.MUST_SAVE
                    for user in node.users:
                        if user.target is operator.getitem:
                            user.meta["recompute"] = CheckpointPolicy.MUST_SAVE

        def uuid(self) -> str:
            return "genforge.keep_attention.1"

    return KeepAttention()
