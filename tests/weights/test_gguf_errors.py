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
