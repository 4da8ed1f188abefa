"""Broken and unsupported files give one clear sentence, never a deep traceback."""

import numpy as np
import pytest

from genforge.errors import GenforgeError
from genforge.weights.gguf import read_gguf
from genforge.weights.load import load_checkpoint


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(GenforgeError, match="not a GGUF file"):
        read_gguf(bad)


@pytest.mark.parametrize("keep", [100, 1 << 20, 60 << 20])
def test_truncated_gguf(smollm2_path, tmp_path, keep):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as f:
        cut.write_bytes(f.read(keep))
    with pytest.raises(GenforgeError, match="truncated"):
        load_checkpoint(cut)


def test_corrupt_header(smollm2_path, tmp_path):
    data = bytearray(smollm2_path.read_bytes()[: 4 << 20])
    data[8:16] = (10**12).to_bytes(8, "little")  # absurd tensor count
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GenforgeError, match="corrupt"):
        read_gguf(bad)


def _write_gguf(path, arch: str):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_context_length(64)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b"])
    w.add_tensor("token_embd.weight", np.zeros((2, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_architecture_names_supported_ones(tmp_path):
    path = tmp_path / "mamba.gguf"
    _write_gguf(path, "mamba")
    with pytest.raises(
        GenforgeError, match="'mamba' is not supported.*llama, qwen2, qwen3, gemma3"
    ):
        load_checkpoint(path)


def test_incomplete_model_is_reported(tmp_path):
    from genforge.weights.load import build_model

    path = tmp_path / "tiny.gguf"
    _write_gguf(path, "llama")
    with pytest.raises(GenforgeError, match="lacks"):
        build_model(load_checkpoint(path))


@pytest.mark.parametrize(
    "qtype, cols", [("Q4_0", 128), ("Q4_1", 128), ("Q5_0", 128), ("Q5_0", 96), ("Q8_0", 128)]
)
def test_block_formats_come_out_as_genforges_own_exactly(tmp_path, qtype, cols):
    """Q4_0 / Q8_0 blocks become q8 (the integers q - 8 / q under the file's own scale), Q5_0
    blocks q5 (the file's nibbles and fifth bits), or where a row is not a whole number of block
    pairs q8 holding the 5-bit q as uint8, and Q4_1 blocks q4, byte for byte: they dequantize to
    exactly gguf's own reading."""
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    from genforge.model import kernels
    from genforge.weights.gguf import GGUFFile, TensorInfo

    t = getattr(GGMLQuantizationType, qtype)
    x = np.random.default_rng(0).standard_normal((6, cols)).astype(np.float32) * 0.1
    raw = quantize(x, t)
    path = tmp_path / "w.bin"
    path.write_bytes(raw.tobytes())
    g = GGUFFile(path, {}, {"w": TensorInfo("w", (6, cols), int(t), 0, raw.nbytes)})
    kind, parts = g.blocks("w")
    want_kind = {"Q4_1": "q4", "Q5_0": "q5" if cols % 64 == 0 else "q8"}.get(qtype, "q8")
    assert kind == want_kind
    assert parts["qweight"].dtype == (torch.uint8 if qtype in ("Q4_1", "Q5_0") else torch.int8)
    got = kernels.Blocks(kind, parts, (6, cols)).dequantize()
    want = torch.from_numpy(dequantize(raw, t).astype(np.float32))
    assert torch.equal(got, want)
    assert torch.equal(kernels.Blocks(kind, parts, (6, cols)).as_q8().dequantize(), want)
    if kind == "q5":  # pack_q5 (what tests make q5 weights with) lays values out as the file does
        again = kernels.pack_q5(kernels.q5_values(**parts), parts["scales"])
        assert all(torch.equal(again[k], parts[k]) for k in parts)


def _q4_k_bytes(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Q4_K super-blocks of random bytes (any 6-bit scales and mins, any nibbles) under small
    positive fp16 d and dmin: (rows, cols / 256 * 144) uint8."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, cols // 256, 144), dtype=np.uint8)
    raw[..., 0:2] = (
        rng.uniform(1e-4, 1e-3, (rows, cols // 256, 1)).astype(np.float16).view(np.uint8)
    )
    raw[..., 2:4] = (
        rng.uniform(1e-4, 1e-3, (rows, cols // 256, 1)).astype(np.float16).view(np.uint8)
    )
    return raw.reshape(rows, -1)


def test_q4_k_blocks_keep_their_own_4_bit_values_under_fp16_sub_block_scales(tmp_path):
    """A Q4_K matrix comes out as q4: its nibbles byte for byte (the layout is q4's), each sub-block
    of 32's scale d * sc and min -dmin * m rounded to fp16, so every weight is within 2^-11 of its
    block's 15 * |scale| + |min| of gguf's own reading (fp16 rounds to 11 significant bits), and
    much closer than the q8 requantization it replaces under the int8 dtype."""
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from genforge.model import kernels
    from genforge.model.quant import runs_as
    from genforge.weights.gguf import GGUFFile, TensorInfo

    t = GGMLQuantizationType.Q4_K
    raw = _q4_k_bytes(6, 512)
    path = tmp_path / "w.bin"
    path.write_bytes(raw.tobytes())
    g = GGUFFile(path, {}, {"w": TensorInfo("w", (6, 512), int(t), 0, raw.nbytes)})
    kind, parts = g.blocks("w")
    assert kind == "q4" and parts["qweight"].dtype == torch.uint8
    assert torch.equal(
        parts["qweight"], torch.from_numpy(raw.reshape(6, 2, 144)[..., 16:]).reshape(6, 256)
    )
    want = torch.from_numpy(dequantize(raw, t).astype(np.float32))
    got = kernels.unpack_q4(**parts)
    bound = (15 * parts["scales"].float().abs() + parts["mins"].float().abs()) * 2**-11
    assert ((got - want).abs() <= bound.repeat_interleave(32, -1)).all()
    q8 = kernels.unpack_q8(**kernels.pack_q8(want))
    assert (got - want).norm() < (q8 - want).norm() / 4
    k_quant = kernels.Blocks(kind, parts, (6, 512), "Q4_K")
    assert runs_as(k_quant, "q8") and runs_as(k_quant, "q4")
    assert not runs_as(kernels.Blocks(kind, parts, (6, 512)), "q8")  # Q4_1: int8 requantizes


def _fused_qkv(parts, head_dim: int) -> dict:
    """q/k/v `parts` (Blocks) through the int8 model's converter and the loader's fusing."""
    import torch

    from genforge.model.config import ModelConfig
    from genforge.model.quant import can_stack, state_converter
    from genforge.weights.load import fusing

    cfg = ModelConfig(dim=256, n_heads=256 // head_dim, n_kv_heads=1, head_dim=head_dim, n_layers=1)
    put = fusing(
        state_converter("q8", torch.float32, False), cfg, lambda rows: can_stack("q8", rows)
    )
    out = {}
    for leaf, w in zip(("wq", "wk", "wv"), parts, strict=True):
        out |= put(f"layers.0.attn.{leaf}.weight", w)
    return {k.removeprefix("layers.0.attn.wqkv."): v for k, v in out.items()}


def test_a_k_quants_q4_beside_q8_parts_fuses_as_q8():
    """q/k/v stack into one layer of one format: a Q4_K q beside Q8_0 k and v goes to q8 (as the
    int8 dtype held it before), the 8-bit parts exactly; three Q4_K parts stay q4, exactly."""
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from genforge.model import kernels
    from genforge.weights.gguf import q4_k

    raw = _q4_k_bytes(256, 256)
    q = torch.from_numpy(dequantize(raw, GGMLQuantizationType.Q4_K).astype(np.float32))
    q4 = kernels.Blocks("q4", q4_k(torch.from_numpy(raw).view(256, 1, 144)), (256, 256), "Q4_K")
    kv = [kernels.pack_q8(torch.randn(128, 256) * 0.05) for _ in range(2)]
    mixed = _fused_qkv([q4, *(kernels.Blocks("q8", p, (128, 256)) for p in kv)], head_dim=128)
    assert set(mixed) == {"qweight", "scales"} and mixed["qweight"].dtype == torch.int8
    got = kernels.unpack_q8(**mixed)
    assert torch.equal(got[256:], torch.cat([kernels.unpack_q8(**p) for p in kv]))
    assert (got[:256] - q).abs().max() <= q.abs().max() / 100
    same = _fused_qkv([q4, q4, q4], head_dim=256)
    assert set(same) == {"qweight", "scales", "mins"}
    assert torch.equal(kernels.unpack_q4(**same), torch.cat([kernels.unpack_q4(**q4.parts)] * 3))
