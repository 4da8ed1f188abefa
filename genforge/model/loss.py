"""Cross-entropy of the output projection without materialising the logits of a whole batch.

With a 50k vocabulary the logits of one batch are larger than the rest of the activations together
(8 x 256 tokens x 50,304 x 4 bytes = 412 MB), and log-softmax forward and backward over them cost
several full passes through memory. Here the rows go through in chunks: each chunk's logits are
made, turned into their gradient (softmax minus one-hot) in place, and multiplied straight into the
gradients of the hidden states and of the weight, which backward then only scales. Same matmuls,
a fraction of the memory traffic.
"""

from __future__ import annotations

import torch

from genforge.model import kernels

IGNORE = -100  # target id that contributes no loss (e.g. prompt tokens in fine-tuning)
CHUNK_BYTES = 1 << 29  # float32 logits per block


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, chunk: int):  # x (N, C), weight (V, C), targets (N,)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        weight_grad = ctx.needs_input_grad[1]  # a frozen head (LoRA) needs none: a matmul saved
        ctx.weight_dtype = weight.dtype
        valid = targets != IGNORE
        count = valid.sum().clamp(min=1)
        grad_x = torch.empty_like(x) if need_grad else None
        grad_w = None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        # The weight in the matmuls' dtype once (autocast's, bf16), not once a block each way: a
        # frozen head (LoRA's) is outside autocast's cache of casts.
        device = x.device.type
        mm_dtype = (
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        )
        w = weight.to(mm_dtype)
        # A frozen head's bf16 blocks on genforge's kernel (loss.cpp): one float32 copy and five
        # passes over each block of logits fewer
        fused = (
            need_grad
            and not weight_grad
            and mm_dtype == torch.bfloat16
            and x.is_cpu
            and kernels.training_kernels()
        )
        scale = 1.0 / float(count) if fused else None
        for start in range(0, x.shape[0], chunk):
            xs, t = x[start : start + chunk], targets[start : start + chunk]
            ok = valid[start : start + chunk]
            if fused:  # genforge's kernel: the bf16 logits become their gradient in place
                logits = xs.to(mm_dtype) @ w.t()  # (c, V)
                total += kernels.ops.softmax_xent_(logits, torch.where(ok, t, -1), scale).sum()
                grad_x[start : start + chunk] = logits @ w
                continue
            t = torch.where(ok, t, 0)
            rows = torch.arange(len(t), device=t.device)
            logits = (xs.to(mm_dtype) @ w.t()).float()  # (c, V)
            picked = logits[rows, t]
            # Softmax by hand, in place: amax, subtract, exp, sum, divide. PyTorch's fused CPU
            # softmax (and max with indices, or logsumexp) ran 3-5x slower than these passes.
            top = logits.amax(dim=-1)
            probs = logits.sub_(top[:, None]).exp_()
            norm = probs.sum(dim=-1)
            total += ((top + norm.log() - picked) * ok).sum()
            # d mean-loss / d logits = (softmax - one-hot) / count, the 1/count folded in here
            probs.div_((norm * count)[:, None])
            if need_grad:
                probs[rows, t] -= 1.0 / count
                if not bool(ok.all()):
                    probs.mul_(ok[:, None])  # ignored targets add no gradient
                g = probs.to(mm_dtype)
                grad_x[start : start + chunk] = g @ w
                if weight_grad:
                    if grad_w is None:
                        grad_w = torch.zeros_like(weight, dtype=torch.float32)
                    grad_w.addmm_(probs.t(), xs.float())  # float32 both
        # The gradients made here, not activations: kept on ctx, out of reach of saved-tensor
        # hooks (fine-tuning's bf16 packing of activations must not round them).
        ctx.grads = (grad_x, grad_w) if need_grad else (None, None)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w = ctx.grads  # already divided by the target count
        ctx.grads = None
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_out).to(ctx.weight_dtype)  # in place: backward runs once
        return grad_x * grad_out.to(grad_x.dtype), grad_w, None, None


# Kept out of torch.compile: inductor's code for this block ran the whole step 25 % slower than
# these eager MKL matmuls and in-place passes (390 vs 533 tokens/s, benchmarks/train_speed.py).
@torch.compiler.disable
def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 0
) -> torch.Tensor:
    """Mean cross-entropy of `x @ weight.T` (x (N, C), weight (V, C)) against `targets` (N,).

    chunk: rows per block of logits; 0 = blocks of up to 512 MB (larger blocks run the matmuls
    faster; on CPU 512-row blocks were 25-40 % slower per FLOP than 2048-row ones).
    """
    chunk = chunk or max(256, CHUNK_BYTES // (4 * weight.shape[0]))
    keep = targets != IGNORE
    if not bool(keep.all()):  # e.g. prompt tokens and padding in fine-tuning: no logits for them
        x, targets = x[keep], targets[keep]
    return _LinearCrossEntropy.apply(x, weight, targets, chunk)


def target_logprobs(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) of each row of `x @ weight.T` (x (N, C), targets (N,)), differentiable; for
    preference losses, which sum them per answer. Rows go through in blocks of logits."""
    chunk = max(64, CHUNK_BYTES // 4 // (4 * weight.shape[0]))  # autograd keeps a few copies
    out = []
    for start in range(0, x.shape[0], chunk):
        logits = (x[start : start + chunk] @ weight.t()).float()
        t = targets[start : start + chunk]
        out.append(logits.gather(1, t[:, None])[:, 0] - logits.logsumexp(dim=-1))
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.float32)
