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
