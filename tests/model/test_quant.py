"""Weight-only int8 / int4 layers against the float layers they replace."""

import pytest
import torch
from torch import nn

from genforge.generate.loading import KERNEL_FORMATS
from genforge.model import kernels
from genforge.model.quant import (
    INT4_GROUP,
    QuantLinear,
    head_kind,
    int4_row_block,
    layer_kind,
)


def q4_1_like_weight(n=64, k=128, seed=0):
    """A weight on GGUF Q4_1's grid: each group of 32 spans its own min..max in 15 steps."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // INT4_GROUP, INT4_GROUP), generator=g)
    q[..., 0], q[..., 1] = 0, 15  # Q4_1 blocks always reach both ends of their range
    d = torch.rand(n, k // INT4_GROUP, 1, generator=g) * 0.02 + 0.001
    m = torch.randn(n, k // INT4_GROUP, 1, generator=g) * 0.05
    return (q * d + m).reshape(n, k)


def test_int4_holds_q4_1_weights_exactly():
    lin = nn.Linear(128, 64, bias=True)
    with torch.no_grad():
        lin.weight.copy_(q4_1_like_weight())
    x = torch.randn(5, 128)
    q = QuantLinear.from_linear(lin, "int4", act_dtype=torch.float32)
    torch.testing.assert_close(q(x), lin(x), atol=1e-4, rtol=1e-4)


def test_int8_is_close_and_handles_3d_input():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40, bias=False)
    x = torch.randn(2, 3, 96)
    q = QuantLinear.from_linear(lin, "int8", act_dtype=torch.float32)
    out, ref = q(x), lin(x)
    assert out.shape == (2, 3, 40)
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()


def test_bf16_activations():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, bias=True)
    x = torch.randn(4, 64)
    for kind in ("int8", "int4"):
        q = QuantLinear.from_linear(lin, kind, act_dtype=torch.bfloat16)
        out = q(x.bfloat16()).float()
        assert (out - lin(x)).abs().max() < 0.1 * lin(x).abs().max()


def test_quantized_loading_converts_each_tensor_and_stays_close(tiny_model_dir):
    import genforge

    ref = genforge.load(str(tiny_model_dir), dtype="fp32")
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        expected = ref.model(ids)
    for dtype in ("int8", "int4"):
        m = genforge.load(str(tiny_model_dir), dtype=dtype)
        # genforge's kernels hold GGUF's blocks (q8, q4) where they are built; else PyTorch's formats
        kind = KERNEL_FORMATS[dtype] if kernels.ops is not None else dtype
        gate_up = m.model.layers[0].mlp.w_gate_up
        assert gate_up.kind == layer_kind(kind, gate_up.in_features)  # q4 needs 64s, else q8
        assert m.model.output.kind == layer_kind(head_kind(kind), gate_up.in_features)
        # the tiny model's 16-wide k/v rows cannot join int4's 32- or 64-row blocks: left unfused
        assert (m.model.layers[0].attn.wqkv is None) == (kind == "int4")
        assert not any(p.is_meta for p in m.model.parameters())
        with torch.no_grad():
            got = m.model(ids)
        assert (got - expected).abs().max() < 0.1 * expected.abs().max()


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_concatenated_quantized_layers_equal_the_separate_ones(kind):
    """Fusing q/k/v (or gate/up) stacks the packed rows. Each output column is then computed by the
    same kernel from the same bytes in the same order as before, so outputs are bit-identical on
    every CPU; int4 may stack only whole blocks of packed rows, whose size the CPU decides."""
    block = int4_row_block() if kind == "int4" else 32
    assert block is not None  # 32 rows with AVX2 kernels, 64 with AVX-512 ones
    torch.manual_seed(0)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    for sizes in [(2 * block, block, block), (2 * block, block, 48), (48, 16, 16)]:
        parts = [QuantLinear.from_linear(torch.randn(n, 64) * 0.05, kind) for n in sizes]
        fused = QuantLinear.concat(parts)
        if fused is None:  # a part that ends inside an int4 block cannot be stacked
            assert kind == "int4" and sizes == (48, 16, 16)
            continue
        assert torch.equal(fused(x), torch.cat([p(x) for p in parts], dim=-1))


def test_int8_prompt_chunks_use_the_dequantized_weights_and_agree_with_the_kernel():
    """Chunks of DEQUANT_ROWS rows or more take a float32 matmul on the dequantized weight: it must
    equal that reference closely, and agree with the int8 kernel's rows to bf16 precision."""
    from genforge.model.quant import DEQUANT_ROWS

    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.randn(48, 64) * 0.05, "int8", act_dtype=torch.bfloat16)
    q.bias = nn.Parameter(torch.randn(48).bfloat16(), requires_grad=False)
    x = torch.randn(DEQUANT_ROWS, 64).bfloat16()
    w = q.qweight.float() * q.scales.float()[:, None]
    reference = x.float() @ w.T + q.bias.float()
    chunk = q(x).float()  # the float32 path
    rows = torch.cat([q(x[i : i + 1]) for i in range(0, DEQUANT_ROWS, 16)]).float()  # the kernel
    torch.testing.assert_close(chunk, reference, atol=2e-2, rtol=1e-2)  # bf16 output rounding
    torch.testing.assert_close(rows, chunk[::16], atol=3e-2, rtol=2e-2)


def test_int4_row_block_is_where_packing_can_be_split():
    """Packing a weight in two parts at the measured block equals packing it whole; half a block
    does not (that misplaced rows on AVX-512, where blocks are 64 rows, when 32 was assumed)."""
    block = int4_row_block()
    w = torch.randn(4 * block, 64) * 0.05
    whole = QuantLinear.from_linear(w, "int4")
    split = QuantLinear.concat(
        [QuantLinear.from_linear(w[:block], "int4"), QuantLinear.from_linear(w[block:], "int4")]
    )
    assert torch.equal(split.qweight, whole.qweight) and torch.equal(split.scales, whole.scales)
    if block > 16:  # the packing takes rows in multiples of 16
        half = [
            QuantLinear.from_linear(w[: block // 2], "int4"),
            QuantLinear.from_linear(w[block // 2 :], "int4"),
        ]
        assert QuantLinear.concat(half) is None
        packed = torch.cat([h.qweight for h in half])
        assert not torch.equal(packed, whole.qweight)
