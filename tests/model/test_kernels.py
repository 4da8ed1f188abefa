"""genforge's CPU kernels (genforge/model/kernels/gemv.cpp) against references written in PyTorch.

Every code path this CPU can run is tested (AVX512-VNNI, AVX2, the portable loop), each against
the same arithmetic done by PyTorch: the activations quantized to int8 per block of 32 exactly as
the kernel does (`quantize_activations`), the integer block dot products, then the float scales.
The integer parts are exact in both; what differs is the order of the float32 sums over K/32
blocks (and the kernel's FMAs), so results agree to a few float32 rounding steps of the output's
magnitude: rtol 1e-5 of the largest output is about 80 steps of 2^-24, ample for K/32 <= 48 terms.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genforge.generate.loading import cpu_kernels
from genforge.model import kernels, quant
from genforge.model.quant import KERNEL_ROWS, QuantLinear

PATHS = ("avx512-vnni", "avx2", "portable")


@pytest.fixture(scope="module")
def ops():
    module = cpu_kernels()
    if module is None:
        pytest.skip("genforge's CPU kernels are not built here (no C++ compiler)")
    return module


def runnable(ops) -> list[str]:
    """The paths this CPU can run: the one chosen at start and every simpler one."""
    return list(PATHS[PATHS.index(ops.isa()) :])


@pytest.fixture
def each_path(ops):
    chosen = ops.isa()

    def paths():
        for name in runnable(ops):
            ops.set_isa(name)
            yield name

    yield paths
    ops.set_isa(chosen)


def reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T with x quantized as the kernel quantizes it, in float64."""
    qx, d = kernels.quantize_activations(x)
    xq = qx.double() * d.double().repeat_interleave(kernels.BLOCK, -1)
    return (xq @ w.double().T).float()


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-5 * scale, (got - want).abs().max()


@pytest.mark.parametrize("M", [1, 3, 4, 7, 9, 17])
@pytest.mark.parametrize("N,K", [(40, 64), (96, 576), (17, 1536)])
def test_q4_and_q8_matmuls_equal_the_reference_on_every_path(ops, each_path, M, N, K):
    torch.manual_seed(M * N + K)
    w, x = torch.randn(N, K) * 0.05, torch.randn(M, K)
    x[0, :32] = 0.0  # a block of zeros: its scale is 0, and must not divide by it
    q4, q8 = kernels.pack_q4(w), kernels.pack_q8(w)
    w4 = kernels.unpack_q4(q4["qweight"], q4["scales"], q4["mins"])
    w8 = kernels.unpack_q8(q8["qweight"], q8["scales"])
    ran = []
    for path in each_path():
        ran.append(path)
        close(ops.q4_matmul(x, q4["qweight"], q4["scales"], q4["mins"]), reference(x, w4))
        close(ops.q8_matmul(x, q8["qweight"], q8["scales"]), reference(x, w8))
    assert ran[-1] == "portable"  # every path ran, down to the last


def q5_weight(N: int, K: int, seed: int) -> dict[str, torch.Tensor]:
    """A q8 weight in Q5_0's form: uint8 u in 0..31 (both ends reached), w = scale * (u - 16)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 32, (N, K), generator=g, dtype=torch.uint8)
    u[:, 0], u[:, 1] = 0, 31
    return {"qweight": u, "scales": (torch.rand(N, K // 32, generator=g) * 0.01).half()}


@pytest.mark.parametrize("M", [1, 3, 4, 9, 17])
@pytest.mark.parametrize("N,K", [(40, 64), (17, 96), (96, 896)])
def test_q5_0s_own_values_equal_the_reference_on_every_path(ops, each_path, M, N, K):
    """Q5_0's u goes into the unsigned side of the dot products as it is and its -16 into a term
    on x's block sums; the result is the matmul of scale * (u - 16), an odd block count included
    (96 inputs: 3 blocks)."""
    torch.manual_seed(M + N + K)
    q5, x = q5_weight(N, K, M), torch.randn(M, K)
    x[0, :32] = 0.0
    want = reference(x, kernels.unpack_q8(**q5))
    assert torch.equal(
        kernels.unpack_q8(**q5), kernels.unpack_q8(kernels.signed_q8(q5["qweight"]), q5["scales"])
    )
    for _ in each_path():
        close(ops.q8_matmul(x, q5["qweight"], q5["scales"]), want)


@pytest.mark.parametrize("M", [1, 3, 4, 5, 9, 17, 33])
@pytest.mark.parametrize("N,K", [(40, 64), (96, 896), (13, 1536)])
def test_q5_packed_equals_its_uint8_values_bit_for_bit_on_every_path(ops, each_path, M, N, K):
    """q5 (Q5_0's nibbles and fifth bits, as the file keeps them) unpacks in registers to the
    uint8 u that q8 takes, and goes through the same integer dot products in the same order: the
    same bits as the uint8 weight, alone (decode), in one tile of rows and in several (the weight
    then unpacked once for all of them), and within the reference's tolerance of scale * (u - 16)."""
    torch.manual_seed(M + N + K)
    u8, x = q5_weight(N, K, M), torch.randn(M, K)
    x[0, :32] = 0.0
    q5 = kernels.pack_q5(u8["qweight"], u8["scales"])
    assert torch.equal(kernels.q5_values(**q5), u8["qweight"])
    want = reference(x, kernels.unpack_q5(**q5))
    for _ in each_path():
        got = ops.q5_matmul(x, q5["qweight"], q5["scales"], q5["qh"])
        assert torch.equal(got, ops.q8_matmul(x, u8["qweight"], u8["scales"]))
        close(got, want)


def test_dequantize_gives_the_reference_bits_on_every_path(ops, each_path):
    """Every format back to float32 exactly as PyTorch computes it (scale * q (+ min)), and to
    bf16 rounded to nearest even as PyTorch rounds it."""
    torch.manual_seed(0)
    w = torch.randn(40, 192) * 0.05
    q4, q8, u8 = kernels.pack_q4(w), kernels.pack_q8(w), q5_weight(40, 192, 1)
    q5 = kernels.pack_q5(u8["qweight"], u8["scales"])
    cases = [
        (q4, kernels.unpack_q4(q4["qweight"], q4["scales"], q4["mins"])),
        (q8, kernels.unpack_q8(**q8)),
        (u8, kernels.unpack_q8(**u8)),
        (q5, kernels.unpack_q8(**u8)),
    ]
    for _ in each_path():
        for parts, want in cases:
            args = (parts["qweight"], parts["scales"], parts.get("mins", parts.get("qh")))
            assert torch.equal(ops.dequantize(*args, False), want)
            assert torch.equal(ops.dequantize(*args, True), want.to(torch.bfloat16))


def test_q8_takes_an_odd_number_of_blocks(ops, each_path):
    torch.manual_seed(0)
    w, x = torch.randn(24, 96) * 0.05, torch.randn(2, 96)  # 3 blocks: one pair and a last one
    q8 = kernels.pack_q8(w)
    for _ in each_path():
        close(ops.q8_matmul(x, q8["qweight"], q8["scales"]), reference(x, kernels.unpack_q8(**q8)))


def test_the_formats_hold_gguf_blocks_exactly():
    """A weight on Q4_1's grid (fp16 scale and min, both ends reached, as its quantizer makes them)
    and one on Q8_0's (fp16 scale, amax at +-127) come back bit for bit."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (8, 4, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    d = (torch.rand(8, 4, 1, generator=g) * 0.02 + 1e-3).half().float()
    m = (torch.randn(8, 4, 1, generator=g) * 0.05).half().float()
    w = (q * d + m).reshape(8, 128)
    assert torch.equal(kernels.unpack_q4(**kernels.pack_q4(w)), w)
    q = torch.randint(-127, 128, (8, 4, 32), generator=g)
    q[..., 0] = 127
    w = (q * (torch.rand(8, 4, 1, generator=g) * 0.01).half().float()).reshape(8, 128)
    assert torch.equal(kernels.unpack_q8(**kernels.pack_q8(w)), w)


def test_bad_shapes_are_refused_by_the_kernel(ops):
    q4 = kernels.pack_q4(torch.randn(8, 64))
    with pytest.raises(RuntimeError, match="inputs"):
        ops.q4_matmul(torch.randn(1, 32), q4["qweight"], q4["scales"], q4["mins"])
    with pytest.raises(RuntimeError, match="float32"):
        ops.q4_matmul(torch.randn(1, 64).bfloat16(), q4["qweight"], q4["scales"], q4["mins"])


def attention_reference(q, kpool, vpool, index, lengths, scale, window):
    out = torch.empty_like(q)
    group = q.shape[1] // kpool.shape[1]
    for b in range(q.shape[0]):
        n = int(lengths[b])
        first = max(0, n - window) if window else 0
        slots = index[b, first:n]
        k = kpool[slots].transpose(0, 1).repeat_interleave(group, 0)  # (H, n, D)
        v = vpool[slots].transpose(0, 1).repeat_interleave(group, 0)
        p = torch.softmax(q[b, :, None, :].double() @ k.double().transpose(1, 2) * scale, -1)
        out[b] = (p @ v.double())[:, 0].float()
    return out


@pytest.mark.parametrize("D,H,Hkv", [(64, 9, 3), (64, 14, 2), (128, 4, 4), (256, 4, 1)])
@pytest.mark.parametrize("window", [0, 100])
def test_decode_attention_equals_softmax_attention_over_the_gathered_keys(
    ops, each_path, D, H, Hkv, window
):
    """Softmax in float32 with the kernel's own exp (relative error ~2e-7) and float32 sums over
    up to 700 keys: within 1e-5 of the output's scale."""
    torch.manual_seed(D + H)
    slots = 2048
    kpool, vpool = torch.randn(slots, Hkv, D), torch.randn(slots, Hkv, D)
    lengths = torch.tensor([700, 1, 333])
    index = torch.stack([torch.randperm(slots)[:700] for _ in lengths])
    q = torch.randn(len(lengths), H, D)
    want = attention_reference(q, kpool, vpool, index, lengths, D**-0.5, window)
    for _ in each_path():
        got = ops.decode_attention(q, kpool, vpool, index, lengths, D**-0.5, window)
        close(got, want)


def q5_layer(N: int, K: int, seed: int = 0) -> QuantLinear:
    """A q5 layer (Q5_0's blocks as a GGUF file gives them) of K inputs and N outputs."""
    layer = QuantLinear(K, N, False, "q5")
    u8 = q5_weight(N, K, seed)
    for name, t in kernels.pack_q5(u8["qweight"], u8["scales"]).items():
        setattr(layer, name, t)
    return layer


def kernel_layers() -> list[QuantLinear]:
    """A q8, a q4, a q8 layer holding Q5_0's own values as uint8 and a q5 one, 128 -> 48."""
    u8 = QuantLinear(128, 48, False, "q8")
    u8.qweight, u8.scales = q5_weight(48, 128, 0).values()
    made = [
        QuantLinear.from_linear(torch.randn(48, 128) * 0.05, k, torch.float32) for k in ("q8", "q4")
    ]
    return [*made, u8, q5_layer(48, 128)]


def test_q5_layers_stack_with_q5_ones_and_beside_q8_ones_as_q8(ops):
    """A file's Q5_0 matrices fused with each other stay q5, with the same bits as apart; beside
    a Q8_0 one (Qwen's q and k beside some layers' v) all become signed q8, holding the same
    weights exactly (the dot products then take q8's sign trick: float32 rounding apart)."""
    torch.manual_seed(0)
    x = torch.randn(3, 128)
    q5s = [q5_layer(n, 128, seed) for seed, n in enumerate((64, 32))]
    q8 = QuantLinear.from_linear(torch.randn(32, 128) * 0.05, "q8", torch.float32)
    for parts, kind in ((q5s, "q5"), ([*q5s, q8], "q8")):
        fused = QuantLinear.concat(parts)
        assert fused.kind == kind
        assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))
        apart = torch.cat([p(x) for p in parts], dim=-1)
        if kind == "q5":
            assert torch.equal(fused(x), apart)
        close(fused(x), apart)


def test_a_kernel_layer_gives_each_row_the_same_bits_alone_or_in_a_batch(ops):
    """Below KERNEL_ROWS rows every row goes through the kernel, which quantizes and sums each row
    on its own: a batch of decodes, a short prompt chunk and a single row get bit-identical results
    (what lets batching and the prefix cache leave greedy outputs unchanged). The result is the
    matmul of the weight the layer holds on int8-rounded activations (~1 % from float)."""
    torch.manual_seed(0)
    for layer in kernel_layers():
        x = torch.randn(KERNEL_ROWS - 1, 128)
        chunk = layer(x)
        assert torch.equal(torch.cat([layer(x[i : i + 1]) for i in range(len(x))]), chunk)
        assert torch.equal(layer(x[:7]), chunk[:7])
        torch.testing.assert_close(chunk, reference(x, layer.dequantize()), rtol=0, atol=1e-5)
        assert (chunk - F.linear(x, layer.dequantize())).abs().max() <= 0.01 * chunk.abs().max()


def float_path_for_long_chunks(monkeypatch) -> None:
    """Every layer kind takes the dequantized weight from KERNEL_ROWS rows on, as off AVX2."""
    monkeypatch.setattr(QuantLinear, "_kernel_takes_every_row", lambda self, ops: False)


def test_a_long_prompt_chunk_takes_the_dequantized_weight_on_the_same_activation_grid(
    ops, monkeypatch
):
    """From KERNEL_ROWS rows on, the layer rounds the activations to the kernel's int8 grid and
    multiplies by its dequantized weight: float32, so within float32 summation error of the
    kernel's rows, or bf16 where the CPU has AMX (weights and activations rounded to 8 significant
    bits: within 2^-7 of the output's scale)."""
    float_path_for_long_chunks(monkeypatch)
    torch.manual_seed(0)
    for layer in kernel_layers():
        x = torch.randn(KERNEL_ROWS, 128)
        chunk = layer(x)
        rows = torch.cat([layer(x[i : i + 8]) for i in range(0, len(x), 8)])
        tolerance = 2**-7 if kernels.native_bf16() else 1e-5
        assert (chunk - rows).abs().max() <= tolerance * rows.abs().max()
    w = torch.randn(40, 96)
    for pack, unpack, mins in (
        (kernels.pack_q8, kernels.unpack_q8, False),
        (kernels.pack_q4, kernels.unpack_q4, True),
    ):
        if mins and w.shape[1] % 64:
            w = torch.randn(40, 128)
        parts = pack(w)
        full = unpack(**parts)
        args = (parts["qweight"], parts["scales"], parts.get("mins"))
        assert torch.equal(ops.dequantize(*args, False), full)
        assert torch.equal(ops.dequantize(*args, True), full.bfloat16())


def test_a_long_chunk_multiplies_the_weight_panel_by_panel_as_a_whole(ops, each_path, monkeypatch):
    """A long chunk's float matmul takes the dequantized weight in panels of rows, each into its
    columns of y: every output is the same dot product as with the whole weight (float32: equal
    within its summation error, bf16 within 2^-7), the last panel a partial one. The activations
    go onto the int8 grid by `fake_quantize`, bit for bit what `quantize_activations` gives, on
    every path."""
    float_path_for_long_chunks(monkeypatch)
    torch.manual_seed(0)
    x = torch.randn(KERNEL_ROWS + 5, 128)
    x[3, :32] = 0  # a block of zeros: scale 0
    qx, d = kernels.quantize_activations(x)
    grid = (qx.view(len(x), -1, 32) * d[..., None]).view_as(x)
    for name in each_path():
        assert torch.equal(ops.fake_quantize(x), grid), name
    tolerance = 2**-7 if kernels.native_bf16() else 1e-5
    for kind in ("q8", "q4", "q5"):
        if kind == "q5":
            layer = q5_layer(200, 128)
        else:
            layer = QuantLinear.from_linear(torch.randn(200, 128) * 0.05, kind, torch.float32)
        whole = layer(x)
        monkeypatch.setattr(quant, "PANEL_BYTES", 64 * 128 * 4)  # 64 rows: 4 panels, one partial
        assert quant.panel_rows(128) == 64
        panels = layer(x)
        monkeypatch.undo()
        float_path_for_long_chunks(monkeypatch)
        assert (panels - whole).abs().max() <= tolerance * whole.abs().max()


def test_avx2_keeps_a_long_chunk_of_q4_and_q5_in_the_kernel(ops, each_path):
    """On AVX2 the kernel takes q5 and Q5_0's uint8 values 8 weight rows at a time, faster than
    the float matmul at any row count, so a long prompt chunk stays in it: each row with the
    same bits as alone. q4 goes 8 weight rows at a time from KERNEL_ROWS rows on (a row at a time
    below): a long chunk's rows within float32 rounding of a decode row's, as the float matmul's
    were. Signed q8 (a row at a time) still takes the dequantized weight there."""
    if "avx2" not in runnable(ops):
        pytest.skip("a CPU without AVX2")
    torch.manual_seed(0)
    x = torch.randn(KERNEL_ROWS + 5, 128)
    for _ in filter(lambda name: name == "avx2", each_path()):
        for layer in kernel_layers():
            lanes = layer.kind == "q5" or (
                layer.kind == "q8" and layer.qweight.dtype == torch.uint8
            )
            assert layer._kernel_takes_every_row(ops) == (lanes or layer.kind == "q4")
            rows = torch.cat([layer(x[i : i + 1]) for i in range(0, len(x), 37)])
            if lanes:
                assert torch.equal(layer(x)[::37], rows)
            close(layer(x)[::37], rows)
    assert ops.Q4_LANE_ROWS == KERNEL_ROWS


def test_rope_store_rotates_q_and_k_in_place_and_fills_the_cache(ops):
    """One call for RoPE on q and k and the two cache writes: the same float32 products and sums
    as apply_rope (a*cos - b*sin), so equal to it within one rounding step."""
    from genforge.model.transformer import apply_rope, rope_frequencies

    torch.manual_seed(0)
    n, H, Hkv, D = 5, 6, 2, 64
    qkv = torch.randn(n, (H + 2 * Hkv) * D)
    angles = torch.arange(3, 3 + n)[:, None].float() * rope_frequencies(D, 10000.0, None)[None]
    angles = torch.cat((angles, angles), -1)[:, None, :]
    cos, sin = angles.cos(), angles.sin()
    q, k, v = qkv.split((H * D, Hkv * D, Hkv * D), -1)
    want_q = apply_rope(q.reshape(n, H, D), cos, sin)
    want_k = apply_rope(k.reshape(n, Hkv, D), cos, sin)
    want_v = v.reshape(n, Hkv, D).clone()
    kpool, vpool = torch.zeros(32, Hkv, D), torch.zeros(32, Hkv, D)
    slots = torch.tensor([7, 0, 31, 12, 3])
    ops.rope_store(qkv, H, Hkv, cos.view(n, D), sin.view(n, D), kpool, vpool, slots)
    torch.testing.assert_close(qkv[:, : H * D].view(n, H, D), want_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(kpool[slots], want_k, rtol=0, atol=1e-6)
    assert torch.equal(vpool[slots], want_v)
    untouched = torch.ones(32, dtype=torch.bool)
    untouched[slots] = False
    assert not kpool[untouched].any() and not vpool[untouched].any()


def test_silu_mul_equals_silu_of_the_gate_times_up(ops, each_path):
    """The kernel's exp is a polynomial with relative error ~2e-7 (a float32 step is 6e-8), over
    gates from -100 to 100 (exp(-x) clamped where float32 would overflow)."""
    torch.manual_seed(0)
    gate_up = torch.randn(3, 2 * 1000) * 4
    gate_up[0, :5] = torch.tensor([-100.0, -88.0, 0.0, 88.0, 100.0])
    gate, up = gate_up.chunk(2, -1)
    for _ in each_path():
        torch.testing.assert_close(ops.silu_mul(gate_up), F.silu(gate) * up, rtol=2e-6, atol=1e-6)


def test_int4_holds_a_q4_1_file_in_its_own_blocks_bit_for_bit(smollm2_path):
    """SmolLM2's file is Q4_1 (its embedding Q8_0): every block comes back exactly, q4 for the
    Q4_1 matrices, q8 for the Q8_0 embedding (the output head)."""
    from genforge.weights.gguf import read_gguf

    g = read_gguf(smollm2_path)
    for name in ("blk.0.ffn_down.weight", "blk.7.attn_q.weight", "token_embd.weight"):
        w = torch.from_numpy(g.tensor(name))
        if name == "token_embd.weight":
            back = kernels.unpack_q8(**kernels.pack_q8(w))
        else:
            back = kernels.unpack_q4(**kernels.pack_q4(w))
        assert torch.equal(back, w), name


def test_the_embedding_looks_up_the_files_q8_rows_shared_with_the_head(smollm2_path, ops):
    """A quantized model keeps its token embedding in q8 blocks (half of bf16's memory): SmolLM2's
    Q8_0 embedding rows come back exactly, from the very tensors its tied head multiplies by."""
    import genforge
    from genforge.model.quant import QuantEmbedding
    from genforge.weights.gguf import read_gguf

    model = genforge.load(str(smollm2_path), dtype="int4").model
    emb = model.tok_emb
    assert isinstance(emb, QuantEmbedding)
    assert emb.qweight.data_ptr() == model.output.qweight.data_ptr()
    assert emb.scales.data_ptr() == model.output.scales.data_ptr()
    file_rows = torch.from_numpy(read_gguf(smollm2_path).tensor("token_embd.weight"))
    ids = torch.tensor([[0, 1, 504, 49151], [7, 7, 60, 15319]])
    assert torch.equal(emb(ids), file_rows[ids])


def test_without_the_kernels_models_run_on_pytorchs_own(tiny_model_dir, monkeypatch):
    """A machine without a C++ compiler (here: GENFORGE_KERNELS=0 and no kernels loaded) gets
    PyTorch's int8 / int4 layers with bf16 activations and its operators, still close to fp32."""
    import genforge
    from genforge.generate import loading

    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with_kernels = genforge.load(str(tiny_model_dir), dtype="fp32")
    monkeypatch.setenv("GENFORGE_KERNELS", "0")
    monkeypatch.setattr(kernels, "ops", None)
    assert loading.cpu_kernels() is None
    reference = genforge.load(str(tiny_model_dir), dtype="fp32")
    with torch.inference_mode():
        expected = reference.model(ids)
        torch.testing.assert_close(with_kernels.model(ids), expected)  # the same model either way
        for dtype in ("int8", "int4"):
            m = genforge.load(str(tiny_model_dir), dtype=dtype)
            assert m.model.layers[0].mlp.w_gate_up.kind == dtype
            assert m.model.layers[0].mlp.silu_mul is None
            got = m.model(ids)
            assert (got - expected).abs().max() < 0.1 * expected.abs().max()
    text = m.generate("hello", max_tokens=4, temperature=0)
    assert isinstance(text, str)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_attention_reads_bf16_and_fp16_pools(ops, each_path, dtype):
    """A cache kept in bf16 or fp16 is read back as the floats it holds (each converts to float32
    exactly): the same result as float32 pools holding those values, within 1e-5."""
    torch.manual_seed(1)
    kpool, vpool = torch.randn(512, 2, 64).to(dtype), torch.randn(512, 2, 64).to(dtype)
    lengths = torch.tensor([300, 17])
    index = torch.stack([torch.randperm(512)[:300] for _ in lengths])
    q = torch.randn(2, 6, 64)
    want = attention_reference(q, kpool.float(), vpool.float(), index, lengths, 0.125, 0)
    for _ in each_path():
        close(ops.decode_attention(q, kpool, vpool, index, lengths, 0.125, 0), want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_store_rounds_keys_and_values_into_a_smaller_cache(ops, dtype):
    torch.manual_seed(0)
    n, H, Hkv, D = 3, 4, 2, 64
    qkv = torch.randn(n, (H + 2 * Hkv) * D)
    cos, sin = torch.rand(n, D), torch.rand(n, D)
    float_pools = torch.zeros(8, Hkv, D), torch.zeros(8, Hkv, D)
    small_pools = torch.zeros(8, Hkv, D, dtype=dtype), torch.zeros(8, Hkv, D, dtype=dtype)
    slots = torch.tensor([1, 6, 2])
    ops.rope_store(qkv.clone(), H, Hkv, cos, sin, *float_pools, slots)
    ops.rope_store(qkv.clone(), H, Hkv, cos, sin, *small_pools, slots)
    for big, small in zip(float_pools, small_pools, strict=True):
        assert torch.equal(small, big.to(dtype))  # rounded to nearest even, as torch rounds


def test_rms_norm_equals_pytorchs(ops):
    """The same formula; the sum of squares in another order: within a few float32 steps."""
    torch.manual_seed(0)
    x, w = torch.randn(5, 576) * 3, torch.randn(576)
    torch.testing.assert_close(
        ops.rms_norm(x, w, 1e-5), F.rms_norm(x, (576,), w, 1e-5), rtol=1e-5, atol=1e-6
    )


def quantized_model(cfg):
    """A random model of `cfg` with its linear layers in genforge's formats: q/k/v and down in q8,
    the output projections in q5, the others in q4 where it fits."""
    from torch import nn

    from genforge.model.quant import layer_kind
    from genforge.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(cfg)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                kind = "q8" if name in ("wq", "wk", "wv", "w_down") else "q4"
                kind = layer_kind(kind, child.in_features)
                if name == "wo":  # random Q5_0 blocks, as a file would give them
                    q = q5_layer(child.out_features, child.in_features)
                else:
                    q = QuantLinear.from_linear(child, kind, torch.float32)
                setattr(module, name, q)
    return model.fuse_projections().eval()


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_the_one_call_decode_step_gives_the_layer_by_layer_bits(ops, kv_dtype):
    """DecodeStep runs the same kernels in the same order as the layers do one by one, so a decode
    step's logits are identical either way (greedy answers never depend on which path a step takes:
    a step with a prompt chunk in it goes layer by layer). Covers q/k/v biases (qwen2), a
    sliding-window layer, q4, q5 and q8 layers, three sequences of different lengths."""
    from genforge.model.config import ModelConfig
    from genforge.model.kv_cache import PagedBatch, PagedKVCache

    cfg = ModelConfig(
        vocab_size=96,
        dim=128,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=192,
        qkv_bias=True,
        sliding_window=6,
        layer_types=("full", "sliding", "full"),
    )
    model = quantized_model(cfg)
    prompts = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38, 46, 26, 43, 38], [27]]
    logits = {}
    for fused in (True, False):
        model.fused_decode = fused
        cache = PagedKVCache.for_model(cfg, n_blocks=10, block_size=4, dtype=kv_dtype)
        tables = [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
        seqs = [(t, 0, len(p), True) for t, p in zip(tables, prompts, strict=True)]
        tokens = torch.tensor([[i for p in prompts for i in p]])
        out = []
        with torch.inference_mode():
            step = model(tokens, PagedBatch(cache, seqs, cfg.sliding_window), last_only=True)
            lengths = [len(p) for p in prompts]
            for _ in range(4):  # greedy decode steps, every row a decode
                nxt = step[0].argmax(-1)
                seqs = [(t, n, 1, True) for t, n in zip(tables, lengths, strict=True)]
                batch = PagedBatch(cache, seqs, cfg.sliding_window)
                step = model(nxt[None], batch, last_only=True)
                lengths = [n + 1 for n in lengths]
                out.append(step)
        logits[fused] = out
    assert model._step is not None and model._step.n_layers == cfg.n_layers
    for a, b in zip(logits[True], logits[False], strict=True):
        assert torch.equal(a, b)
