"""GGUF files: a fast header parser, tensors memory-mapped and dequantized by the `gguf` package.

The header (metadata and tensor directory) is parsed here rather than with `gguf.GGUFReader`, which
builds a numpy view per array element and takes ~24 s on Gemma 3's 262k-token vocabulary; this
parser reads the same header in well under a second. Quantized blocks are decoded by
`gguf.quants.dequantize`, so the block formats stay owned by the package that defines them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genforge.errors import GenforgeError

if TYPE_CHECKING:
    import torch

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value types -> struct format (scalars only; 8 = string, 9 = array).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_NUMPY = {
    0: np.uint8,
    1: np.int8,
    2: np.uint16,
    3: np.int16,
    4: np.uint32,
    5: np.int32,
    6: np.float32,
    7: np.bool_,
    10: np.uint64,
    11: np.int64,
    12: np.float64,
}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first), i.e. GGUF's dims reversed
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]

    def tensor(self, name: str, dtype: np.dtype = np.float32) -> np.ndarray:
        """Dequantize one tensor to `dtype` (numpy order, e.g. (out_features, in_features))."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        info = self.tensors[name]
        raw = np.memmap(
            self.path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.nbytes,)
        )
        qtype = GGMLQuantizationType(info.ggml_type)
        if qtype == GGMLQuantizationType.F32:
            data = raw.view(np.float32)
        elif qtype == GGMLQuantizationType.F16:
            data = raw.view(np.float16)
        else:
            data = dequantize(raw, qtype)
        return np.asarray(data, dtype=dtype).reshape(info.shape)

    def blocks(self, name: str) -> tuple[str, dict[str, torch.Tensor]] | None:
        """A matrix's own blocks in genforge's q8 / q4 layouts (genforge.model.kernels), exactly,
        without float arithmetic: Q8_0 and Q4_0 (w = d * (q - 8): the integers q - 8 under the
        same scale) as ("q8", {qweight int8 (N, K), scales fp16 (N, K/32)}); Q5_0 (w = d * (q -
        16)) as ("q5", {qweight uint8 (N, K/2): q's low nibbles, two blocks per 32 bytes; qh int32
        (N, K/32): the file's own fifth bits; scales}), or where K is not a multiple of 64 as "q8"
        with a uint8 qweight holding q in 0..31 (the kernels take the -16 apart: no sign trick
        per dot product); Q4_1 as ("q4", {qweight uint8 (N, K/2), scales, mins}). The kernels'
        integer dot products on them are llama.cpp's own. Q4_K as "q4" too: its 4-bit values as
        they are (the layout is q4's), each sub-block of 32's scale d * sc and min -dmin * m
        rounded to fp16 (within 2^-12 of the file's; `q4_k`). None for any other type or shape.
        (PyTorch's operators on PyTorch's threads: 3x numpy here.)"""
        import torch

        info = self.tensors[name]
        kinds = (GGML_Q8_0, GGML_Q5_0, GGML_Q4_0, GGML_Q4_1, GGML_Q4_K)
        if len(info.shape) != 2 or info.ggml_type not in kinds:
            return None
        n, k = info.shape
        if k % {GGML_Q4_1: 64, GGML_Q4_K: 256}.get(info.ggml_type, 32):
            return None
        raw = torch.from_numpy(
            np.fromfile(self.path, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        )
        if info.ggml_type == GGML_Q4_K:
            return "q4", q4_k(raw.view(n, k // 256, 144))
        if info.ggml_type == GGML_Q8_0:  # per block: fp16 scale, 32 int8
            b = raw.view(n, k // 32, 34)
            return "q8", {"qweight": b[..., 2:].reshape(n, k).view(torch.int8), "scales": _d(b, 0)}
        if info.ggml_type == GGML_Q4_0:  # fp16 scale, 16 bytes: q[j] low nibble, q[j + 16] high
            b = raw.view(n, k // 32, 18)
            q = _nibbles(b[..., 2:]).view(torch.int8) - 8
            return "q8", {"qweight": q.reshape(n, k), "scales": _d(b, 0)}
        if info.ggml_type == GGML_Q5_0:  # fp16 scale, 32 fifth bits, 16 bytes of nibbles
            b = raw.view(n, k // 32, 22)
            if k % 64 == 0:
                low = _nibbles(b[..., 6:]).reshape(n, k // 64, 2, 32)
                return "q5", {
                    "qweight": (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, k // 2),
                    "qh": b[..., 2:6].contiguous().view(torch.int32)[..., 0],
                    "scales": _d(b, 0),
                }
            bits = torch.arange(8, dtype=torch.uint8)
            high = ((b[..., 2:6, None] >> bits) & 1).reshape(n, k // 32, 32)  # bit j: q[j]'s
            q = _nibbles(b[..., 6:]) | (high << 4)
            return "q8", {"qweight": q.reshape(n, k), "scales": _d(b, 0)}
        # Q4_1, per block: fp16 scale, fp16 min, 16 bytes of nibbles
        b = raw.view(n, k // 32, 20)
        q = _nibbles(b[..., 4:]).reshape(n, k // 64, 2, 32)
        return "q4", {
            "qweight": (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, k // 2),  # blocks 2i, 2i+1
            "scales": _d(b, 0),
            "mins": _d(b, 2),
        }


def q4_k(blocks) -> dict:
    """Q4_K super-blocks (N, K/256, 144 bytes: fp16 d and dmin, 12 bytes of 6-bit scales and
    mins, 128 bytes of 4-bit q) -> q4 parts: w = d * sc * q - dmin * m per sub-block of 32, the
    qs bytes as they are (64 values a 32-byte run: sub-block 2i's q in the low nibbles, 2i+1's in
    the high: q4's layout), scale d * sc and min -dmin * m per sub-block in fp16 (the float32
    products are exact; rounding them to fp16 moves a value by at most 2^-12 of its block's
    scale or min)."""
    import torch

    n, s = blocks.shape[:2]
    d, dmin = _d(blocks, 0).float(), _d(blocks, 2).float()
    b = blocks[..., 4:16].to(torch.int32)  # llama.cpp's get_scale_min_k4
    sc = torch.cat((b[..., 0:4] & 63, (b[..., 8:12] & 15) | ((b[..., 0:4] >> 6) << 4)), -1)
    m = torch.cat((b[..., 4:8] & 63, (b[..., 8:12] >> 4) | ((b[..., 4:8] >> 6) << 4)), -1)
    return {
        "qweight": blocks[..., 16:].reshape(n, s * 128).contiguous(),
        "scales": (d[..., None] * sc).half().reshape(n, s * 8),
        "mins": (-(dmin[..., None] * m)).half().reshape(n, s * 8),
    }


def _d(blocks, at: int):
    """The fp16 at byte `at` of each block (N, K/32, bytes) -> (N, K/32)."""
    import torch

    return blocks[..., at : at + 2].contiguous().view(torch.float16)[..., 0]


def _nibbles(qs):
    """16 bytes per block holding q[j] in the low nibble and q[j + 16] in the high -> 32 values."""
    import torch

    return torch.cat((qs & 15, qs >> 4), dim=-1)


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise _Truncated
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.unpack("Q")
        if self.pos + n > len(self.buf):
            raise _Truncated
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, count = self.unpack("I"), self.unpack("Q")
            if etype == 8:
                return [self.string() for _ in range(count)]
            if etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype])
                end = self.pos + count * dt.itemsize
                if end > len(self.buf):
                    raise _Truncated
                arr = np.frombuffer(self.buf[self.pos : end], dtype=dt).tolist()
                self.pos = end
                return arr
            return [self.value(etype) for _ in range(count)]
        if vtype not in _SCALARS:
            raise _Corrupt(f"unknown metadata value type {vtype}")
        return self.unpack(_SCALARS[vtype])


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


# GGUF's type numbers of the block formats genforge runs as they are
GGML_Q4_0, GGML_Q4_1, GGML_Q5_0, GGML_Q8_0, GGML_Q4_K = 2, 3, 6, 8, 12
_last: tuple[tuple, GGUFFile] | None = None  # the last header parsed, by file identity


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header; raise a one-sentence `GenforgeError` if it is not a valid GGUF.
    The last file's header is kept: loading reads it twice (to choose the format, then to load)."""
    global _last
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and _last is not None and _last[0] == key:
        return _last[1]
    parsed = _read_gguf(path)
    if key is not None:
        _last = (key, parsed)
    return parsed


def forget_header(path: str | Path) -> None:
    """Drop the kept header of `path` (read_gguf's), once a load no longer needs it."""
    global _last
    if _last is not None and _last[0][0] == str(Path(path).resolve()):
        _last = None


BIG_ARRAY = 1024  # metadata arrays longer than this are a vocabulary's (tokens, merges, scores)


def slim_metadata(metadata: dict) -> dict:
    """`metadata` without its long arrays (the tokenizer's vocabulary, held by the tokenizer once
    it is built): what a loaded model keeps of its file's header."""
    return {k: v for k, v in metadata.items() if not (isinstance(v, list) and len(v) > BIG_ARRAY)}


def _read_gguf(path: Path) -> GGUFFile:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            if head != GGUF_MAGIC:
                raise GenforgeError(
                    f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                    "check the path, or pull or download the model again."
                )
            f.seek(0)
            # Headers are small next to the weights; 64 MiB covers even 262k-token vocabularies.
            buf = memoryview(f.read(min(size, 64 << 20)))
    except OSError as e:
        raise GenforgeError(f"cannot read {path}: {e.strerror}; check the path.") from None
    try:
        return _parse(buf, path, size)
    except (_Truncated, _Corrupt, UnicodeDecodeError, ValueError, OverflowError) as e:
        what = "truncated" if isinstance(e, _Truncated) else f"corrupt ({e})"
        raise GenforgeError(
            f"{path} is a {what} GGUF file; delete it and pull or download the model again."
        ) from None


def _parse(buf: memoryview, path: Path, size: int) -> GGUFFile:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    cur = _Cursor(buf)
    cur.pos = 4
    version = cur.unpack("I")
    if version not in (2, 3):
        raise _Corrupt(f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise _Corrupt("implausible tensor or key count")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("I"))
    raw_infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("I")
        if n_dims > 8:
            raise _Corrupt(f"tensor {name} has {n_dims} dimensions")
        dims = [cur.unpack("Q") for _ in range(n_dims)]
        ggml_type, offset = cur.unpack("I"), cur.unpack("Q")
        raw_infos.append((name, dims, ggml_type, offset))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, dims, ggml_type, offset in raw_infos:
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise _Corrupt(f"tensor {name} has unknown type {ggml_type}") from None
        n = int(np.prod(dims)) if dims else 1
        nbytes = n // block * type_size
        start = data_start + offset
        if start + nbytes > size:
            raise _Truncated
        tensors[name] = TensorInfo(name, tuple(reversed(dims)), ggml_type, start, nbytes)
    return GGUFFile(path, metadata, tensors)
