"""Packed training rows: several sequences end to end in one row, each attending to itself only,
give every token the logits (and the loss the gradients) it gets in a padded batch."""

from __future__ import annotations

import pytest
import torch
from tiny import random_transformer

from genforge.model.config import ModelConfig

LLAMA = ModelConfig(vocab_size=89, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96)
# q/k norms, sandwich norms, sliding-window layers with their own RoPE: the gemma3 flags
GEMMA = ModelConfig(
    vocab_size=89,
    dim=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=1,
    hidden_dim=96,
    qk_norm=True,
    sandwich_norm=True,
    norm_unit_offset=True,
    activation="gelu_tanh",
    sliding_window=4,
    layer_types=("sliding", "full"),
    rope_theta=1_000_000.0,
)
LENGTHS = (5, 9, 3)


def layouts():
    """The same three sequences padded (3, 9) and packed into one row of 17 (+ 3 of padding)."""
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, 89, (n,), generator=g) for n in LENGTHS]
    padded = torch.zeros(len(seqs), max(LENGTHS), dtype=torch.long)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    width = sum(LENGTHS) + 3
    packed = torch.zeros(1, width, dtype=torch.long)
    packed[0, : sum(LENGTHS)] = torch.cat(seqs)
    positions = torch.cat(
        [torch.arange(n) for n in LENGTHS] + [torch.arange(LENGTHS[-1], LENGTHS[-1] + 3)]
    )
    return seqs, padded, packed, positions[None]


@pytest.mark.parametrize("cfg", [LLAMA, GEMMA], ids=["llama", "gemma3"])
def test_each_packed_sequence_gets_its_padded_logits(cfg):
    model = random_transformer(cfg).eval()
    seqs, padded, packed, positions = layouts()
    with torch.no_grad():
        want = model(padded)
        got = model(packed, positions=positions)[0]
    at = 0
    for i, s in enumerate(seqs):
        # float32 throughout, logits up to ~40: the same sums over the same keys in matmuls of
        # another shape round differently, by ~1e-5 there (a leak across sequences: > 1e-2)
        torch.testing.assert_close(got[at : at + len(s)], want[i, : len(s)], rtol=1e-4, atol=1e-4)
        at += len(s)
    # without the mask the later sequences would see the earlier ones: the test can tell
    with torch.no_grad():
        leaky = model(packed)[0]
    assert (
        leaky[LENGTHS[0] : sum(LENGTHS[:2])] - got[LENGTHS[0] : sum(LENGTHS[:2])]
    ).abs().max() > 1e-2


def test_packed_loss_and_gradients_are_the_padded_ones():
    seqs, padded, packed, positions = layouts()
    ignore = -100
    pad_targets = torch.full_like(padded, ignore)
    pack_targets = torch.full_like(packed, ignore)
    at = 0
    for i, s in enumerate(seqs):
        pad_targets[i, : len(s) - 1] = s[1:]
        pack_targets[0, at : at + len(s) - 1] = s[1:]
        at += len(s)
    runs = []
    for tokens, targets, pos in ((padded, pad_targets, None), (packed, pack_targets, positions)):
        model = random_transformer(LLAMA)
        loss = model(tokens, targets=targets, positions=pos)
        loss.backward()
        runs.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = runs
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_padding_of_no_sequence_changes_nothing():
    """Tokens at position -1 (a packed row's tail) belong to no sequence: the others' logits are
    the same with or without them."""
    model = random_transformer(LLAMA).eval()
    seqs, _, packed, positions = layouts()
    n = sum(LENGTHS)
    tail = positions.clone()
    tail[0, n:] = -1
    with torch.no_grad():
        want = model(packed[:, :n], positions=positions[:, :n])[0]
        got = model(packed, positions=tail)[0]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[:n], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "sliding"])
def test_training_attention_operator_is_sdpa_with_its_gradients(monkeypatch, dtype, masked):
    """`flash_attention` (one operator each way, so the compiler keeps its output for backward)
    gives PyTorch's attention and gradients, grouped-query and masked alike, on PyTorch's kernels
    (genforge's own: tests/model/test_attention.py)."""
    import torch.nn.functional as F

    from genforge.model import attention
    from genforge.model.attention import flash_attention

    monkeypatch.setattr(attention, "_own_kernels_here", lambda: False)

    g = torch.Generator().manual_seed(0)
    S, W, H, Hkv, D = 3, 20, 6, 2, 16
    q, k, v = (torch.randn(S, W, h, D, generator=g, dtype=dtype) for h in (H, Hkv, Hkv))
    grad = torch.randn(S, W, H, D, generator=g, dtype=dtype)
    i, j = torch.arange(W)[:, None], torch.arange(W)[None, :]
    mask = ((j <= i) & (i - j < 5)) if masked else None
    got_in = [t.clone().requires_grad_() for t in (q, k, v)]
    want_in = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attention(*got_in, mask, 0.25)
    out.backward(grad)
    want = F.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in want_in),
        attn_mask=mask,
        is_causal=mask is None,
        scale=0.25,
        enable_gqa=True,
    ).transpose(1, 2)
    want.backward(grad)
    # the same kernels: equal but for the order of float32 sums (bf16: one rounding of 2^-8)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(out, want, **tol)
    for a, b in zip(got_in, want_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad, **tol)
    assert out.is_contiguous() and lse.shape == (S, H, W) and lse.dtype == torch.float64
    torch.library.opcheck(flash_attention, (q, k, v, mask, 0.25))
