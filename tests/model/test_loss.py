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
