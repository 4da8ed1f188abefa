"""The chunked linear cross-entropy equals logits + F.cross_entropy, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genforge.model.config import ModelConfig
from genforge.model.loss import IGNORE, linear_cross_entropy
from genforge.model.transformer import Transformer


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_matches_materialised_logits(chunk):
    torch.manual_seed(0)
    x = torch.randn(100, 32, requires_grad=True)
    w = torch.randn(500, 32, requires_grad=True)
    t = torch.randint(0, 500, (100,))
    t[[3, 50]] = IGNORE
    ours = linear_cross_entropy(x, w, t, chunk=chunk)
    (ours * 3).backward()  # a non-unit upstream gradient is scaled through
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    ref = F.cross_entropy(x @ w.t(), t, ignore_index=IGNORE)
    (ref * 3).backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)


def test_transformer_targets_give_the_loss_of_its_logits():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128)
    model = Transformer(cfg)
    tokens = torch.randint(0, 300, (2, 17))
    loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    logits = model(tokens[:, :-1])
    ref = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_under_bf16_autocast_it_matches_the_logits_autocast_makes(weight_dtype):
    """Under autocast the matmuls run in bf16 whatever the head's dtype (a frozen LoRA head may be
    held in bf16): the same as autocast's own logits + cross-entropy, to bf16's rounding."""
    torch.manual_seed(0)
    x = torch.randn(100, 32, requires_grad=True)  # float32, as the final norm gives them
    w = torch.randn(500, 32).to(weight_dtype).requires_grad_(weight_dtype == torch.float32)
    t = torch.randint(0, 500, (100,))
    t[[3, 50]] = IGNORE
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(x, w, t, chunk=16)
    ours.backward()
    gx, gw = x.grad, w.grad
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = x @ w.t()
    ref = F.cross_entropy(logits.float(), t, ignore_index=IGNORE)
    ref.backward()
    assert x.grad.dtype == gx.dtype == torch.float32
    # the same bf16 products; bf16's 2^-8 of logits of ~6, through the softmax
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gx, x.grad, rtol=0.02, atol=2e-4)
    if weight_dtype == torch.float32:
        assert gw is not None and gw.dtype == torch.float32


@pytest.fixture
def bf16_kernels():
    from genforge.generate.loading import cpu_kernels
    from genforge.model import kernels

    if cpu_kernels() is None or not kernels.training_kernels():
        pytest.skip("genforge's AVX512-BF16 training kernels do not run here")
    return kernels.ops


def test_the_softmax_kernel_turns_bf16_logits_into_their_gradient(bf16_kernels):
    """loss.cpp's `softmax_xent_`: each row's loss term and (softmax - one-hot) * scale in place,
    a vocabulary that is not a multiple of its 16 lanes, an ignored row zeroed."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(9, 1001, generator=g) * 4).bfloat16()
    targets = torch.randint(0, 1001, (9,), generator=g)
    targets[4] = -1
    want = logits.double()
    lse = want.logsumexp(-1)
    want_loss = lse - want.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    want_grad = (want - lse[:, None]).exp()
    want_grad[torch.arange(9), targets.clamp(min=0)] -= 1
    want_grad *= 0.25
    want_loss[4], want_grad[4] = 0, 0
    grad = logits.clone()
    loss = bf16_kernels.softmax_xent_(grad, targets, 0.25)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), want_loss, rtol=0, atol=1e-5)  # float32 sums
    # one rounding to bf16 (2^-9 of each value) after float32 work
    assert ((grad.double() - want_grad).abs() <= 2**-8 * want_grad.abs() + 1e-9).all()


def test_a_frozen_bf16_head_on_the_kernel_gives_the_passes_loss_and_gradient(
    bf16_kernels, monkeypatch
):
    from genforge.model import kernels

    torch.manual_seed(0)
    x = torch.randn(100, 32, requires_grad=True)
    w = torch.randn(501, 32).bfloat16()  # frozen, as LoRA holds it
    t = torch.randint(0, 501, (100,))
    t[[3, 50]] = IGNORE
    runs = []
    for fused in (True, False):
        monkeypatch.setattr(kernels, "training_kernels", lambda fused=fused: fused)
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(x, w, t, chunk=16)
        loss.backward()
        runs.append((loss.detach(), x.grad))
    (loss, gx), (want_loss, want_gx) = runs
    # the same bf16 logits and one rounding of the same gradient; float32 sums in another order
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, want_gx, rtol=1e-2, atol=1e-5)
