"""genforge's attention kernels for training (genforge/model/kernels/attention.cpp): causal bf16
attention and its gradients against attention computed in float64 from the same bf16 inputs, and a
model's training step through them against the same step on PyTorch's kernels. They run where the
CPU has AVX512-BF16; elsewhere these tests skip and training runs PyTorch's kernels."""

from __future__ import annotations

import pytest
import torch
from tiny import random_transformer

from genforge.generate.loading import cpu_kernels
from genforge.model import attention
from genforge.model.config import ModelConfig

# (S, W, H, Hkv, D): rows not a multiple of the tiles (4 queries, 16 and 32 keys), grouped and
# plain heads, head sizes of one to eight 16-lane chunks, a row of one token
SHAPES = [
    (2, 37, 4, 2, 64),
    (3, 64, 9, 3, 64),
    (1, 100, 2, 1, 32),
    (2, 50, 2, 2, 128),
    (1, 130, 3, 1, 48),
    (4, 1, 2, 2, 16),
]


@pytest.fixture(scope="module")
def ops():
    module = cpu_kernels()
    if module is None:
        pytest.skip("genforge's CPU kernels are not built here (no C++ compiler)")
    if not module.flash_supported():
        pytest.skip("this CPU has no AVX512-BF16: training attention runs PyTorch's kernels")
    return module


def reference(q, k, v, scale):
    """Causal attention in float64 (q (S, W, H, D), k and v (S, W, Hkv, D)): output and lse."""
    S, W, H, D = q.shape
    group = H // k.shape[2]
    qh = q.double().transpose(1, 2)
    kh, vh = (t.double().transpose(1, 2).repeat_interleave(group, 1) for t in (k, v))
    scores = (qh @ kh.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~torch.ones(W, W, dtype=torch.bool).tril(), float("-inf"))
    return (scores.softmax(-1) @ vh).transpose(1, 2), scores.logsumexp(-1)


def inputs(shape, seed=0):
    S, W, H, Hkv, D = shape
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(S, W, h, D, generator=g).bfloat16() for h in (H, Hkv, Hkv, H)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_is_attention_to_bf16_rounding(ops, shape):
    q, k, v, _ = inputs(shape)
    scale = shape[-1] ** -0.5
    out, lse = ops.flash_forward(q, k, v, scale)
    want, want_lse = reference(q, k, v, scale)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert lse.dtype == torch.float64 and lse.shape == (shape[0], shape[2], shape[1])
    # The probabilities are rounded to bf16 before they weight v (each off by 2^-9 of itself at
    # most, and they sum to 1: 2^-9 of the largest |v|), and so is the output (2^-9 of it).
    assert (out.double() - want).abs().max() <= 2**-8 * v.abs().max()
    assert (lse - want_lse).abs().max() < 1e-5  # float32 sums and exp


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backward_is_attentions_gradients_to_bf16_rounding(ops, shape):
    q, k, v, grad = inputs(shape, seed=1)
    scale = shape[-1] ** -0.5
    out, lse = ops.flash_forward(q, k, v, scale)
    got = ops.flash_backward(grad, q, k, v, out, lse, scale)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    reference(*leaves, scale)[0].backward(grad.double())
    for name, a, b in zip("qkv", got, leaves, strict=True):
        assert a.dtype == torch.bfloat16 and a.shape == b.shape
        # P and dS are rounded to bf16 (8 significant bits) before their products and the
        # gradients are bf16: within 2^-6 of the largest, where PyTorch's own bf16 kernel lands
        # within 2^-7 on these inputs
        assert (a.double() - b.grad).abs().max() <= 2**-6 * b.grad.abs().max(), name


CFG = ModelConfig(vocab_size=89, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=160)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "rows"])
def test_a_bf16_training_step_through_them_is_as_close_to_float32_as_pytorchs(
    ops, monkeypatch, packed
):
    """A model's loss and gradients under bf16 autocast, packed rows or plain ones, with attention
    on genforge's kernels: as close to the float32 step as the same step on PyTorch's kernels."""
    model = random_transformer(CFG, 0)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(1, CFG.vocab_size, (2, 40), generator=g)
    targets = torch.roll(tokens, -1, dims=1)
    positions = torch.cat([torch.arange(25), torch.arange(15)]).repeat(2, 1) if packed else None
    taken = []
    own = attention._own_kernels
    monkeypatch.setattr(
        attention, "_own_kernels", lambda q, m: taken.append(own(q, m)) or own(q, m)
    )
    runs = {}
    for run in ("genforge", "pytorch", "float32"):
        monkeypatch.setattr(attention, "_own_kernels_here", lambda run=run: run == "genforge")
        model.zero_grad(set_to_none=True)
        bf16 = run != "float32"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(tokens, targets=targets, positions=positions)
        loss.backward()
        runs[run] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    assert taken[: CFG.n_layers] == [True] * CFG.n_layers  # genforge's run took them
    assert not any(taken[2 * CFG.n_layers :])

    want_loss, want = runs["float32"]

    def error(run: str) -> float:  # the largest gradient error, relative to the gradient's norm
        grads = runs[run][1]
        return max(float((grads[n] - g).norm() / g.norm()) for n, g in want.items())

    torch.testing.assert_close(runs["genforge"][0], want_loss, rtol=2**-7, atol=0)
    # bf16 autocast alone moves this random model's gradients by ~8 % (either kernel); whose
    # rounding lands closer varies with the inputs
    assert error("genforge") <= 1.5 * error("pytorch")
