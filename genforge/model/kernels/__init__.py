"""genforge's own CPU kernels (gemv.cpp): weight-only 4-, 5- and 8-bit matmuls in GGUF's blocks of 32.

PyTorch's weight-only kernels convert every weight to bf16 in software on CPUs without native bf16
and read the weights at about half of what memory gives (docs/engine.md). These keep the weights in
the file's own blocks (Q4_1: scale and min per 32; Q8_0: scale per 32; Q5_0: scale per 32 and a
fifth bit per weight), quantize the activations to
int8 per block as llama.cpp does, and use integer dot products: AVX512-VNNI or AVX2, chosen at run
time from the CPU's flags, with a portable loop for any other CPU. For training under bf16 on CPUs
with AVX512-BF16, attention.cpp holds causal attention forward and backward and loss.cpp the
softmax of a frozen head's logits (`training_kernels`; genforge/model/attention.py, loss.py).

The extension is compiled once with the machine's C++ compiler through `torch.utils.cpp_extension`
(about 30 s) into a cache folder the caller names, and afterwards imported from there directly.
Without a compiler `load` returns None and the model runs PyTorch's kernels instead.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = [
    HERE / "gemv.cpp",
    HERE / "attention.cpp",
    HERE / "loss.cpp",
]  # and the header they share
HEADERS = [HERE / "simd.h"]
BLOCK = 32  # inputs per quantization block


# OpenMP: at::parallel_for is a header template over `#pragma omp parallel`; at run time the
# process's libgomp (PyTorch's, soname libgomp.so.1) is the one used.
CFLAGS = ["-O3", "-std=c++17", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


def _name() -> str:
    """The extension's name: changes with its source, its flags and PyTorch's version."""
    key = (
        b"".join(p.read_bytes() for p in SOURCES + HEADERS)
        + " ".join([torch.__version__, *CFLAGS, *LDFLAGS]).encode()
    )
    return f"genforge_gemv_{hashlib.sha256(key).hexdigest()[:12]}"


_loaded: dict[Path, ModuleType | None] = {}
ops: ModuleType | None = None  # the kernels every q8/q4 layer of this process uses (see `load`)


def load(cache: Path, build: bool = True) -> ModuleType | None:
    """The compiled kernels from `cache`, building them there first if needed and `build`; None
    where they cannot be built (no compiler) or are not built and `build` is False."""
    cache = Path(cache)
    if cache in _loaded:
        return _loaded[cache]
    name = _name()
    folder = cache / name
    built = folder / f"{name}.so"
    module = None
    if built.is_file():
        module = _import(name, built)
    elif build:
        module = _build(name, folder)
    _loaded[cache] = module
    global ops
    ops = ops or module
    return module


def _import(name: str, path: Path) -> ModuleType | None:
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except ImportError as e:  # e.g. built against another libtorch
        log.warning("cannot import the CPU kernels from %s (%s); using PyTorch's", path, e)
        return None


def compiler() -> str | None:
    """The C++ compiler on PATH ($CXX, else c++): what builds these kernels and torch.compile's
    CPU code; None where there is none."""
    return shutil.which(os.environ.get("CXX", "c++"))


def _build(name: str, folder: Path) -> ModuleType | None:
    if compiler() is None:
        log.warning(
            "no C++ compiler (%s) to build genforge's CPU kernels; using PyTorch's",
            os.environ.get("CXX", "c++"),
        )
        return None
    try:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass  # a ninja on PATH will do
    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    print("genforge: building the CPU kernels (once, about 30 s)...", file=sys.stderr, flush=True)
    try:
        return cpp_extension.load(
            name,
            [str(p) for p in SOURCES],
            build_directory=str(folder),
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as e:
        log.warning("building genforge's CPU kernels failed (%s); using PyTorch's", e)
        return None


# -- formats -----------------------------------------------------------------------------------


ROWS_PER_CHUNK = 4096  # pack big matrices (embeddings, heads) in slices: small temporaries


@dataclass
class Blocks:
    """A matrix already in one of these formats (`kind` "q8", "q5" or "q4"), e.g. a GGUF file's
    Q8_0 / Q5_0 / Q4_1 blocks rearranged as they are (genforge.weights.gguf): what the weight
    loader hands a converter that takes blocks instead of dequantizing them to float32 first."""

    kind: str
    parts: dict[str, torch.Tensor]  # qweight, scales (, mins for q4, qh for q5)
    shape: tuple[int, int]  # (out_features, in_features)
    source: str = ""  # the file's type where it is a K-quant ("Q4_K"): held to fp16 scales

    def dequantize(self) -> torch.Tensor:
        unpack = {"q4": unpack_q4, "q5": unpack_q5, "q8": unpack_q8}[self.kind]
        return unpack(**self.parts)

    def as_q8(self) -> Blocks:
        """The same weights as q8 blocks (a q5's values unpacked to uint8), exactly."""
        if self.kind != "q5":
            return self
        return Blocks(
            "q8", {"qweight": q5_values(**self.parts), "scales": self.parts["scales"]}, self.shape
        )


def pack_q4(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, K) float -> q4: w ≈ scale * q + min, q in 0..15, per block of 32 inputs (GGUF Q4_1's
    grid: a Q4_1 block comes back exactly). K must be a multiple of 64. Packed in slices of rows
    into preallocated outputs, with in-place arithmetic: loading stays near the packed size."""
    N, K = w.shape
    out = {
        "qweight": torch.empty(N, K // 2, dtype=torch.uint8),
        "scales": torch.empty(N, K // BLOCK, dtype=torch.float16),
        "mins": torch.empty(N, K // BLOCK, dtype=torch.float16),
    }
    for a in range(0, N, ROWS_PER_CHUNK):
        g = w[a : a + ROWS_PER_CHUNK].float().reshape(-1, K // BLOCK, BLOCK)
        lo = g.amin(dim=-1).half()
        scale = ((g.amax(dim=-1) - lo.float()) / 15.0).half()
        t = g - lo.float()[..., None]
        t.div_(scale.float().clamp(min=1e-30)[..., None]).round_().clamp_(0, 15)
        q = t.to(torch.uint8).reshape(-1, K // (2 * BLOCK), 2, BLOCK)
        # byte j: block 2i's q[j] in the low nibble, block 2i+1's in the high one
        out["qweight"][a : a + ROWS_PER_CHUNK] = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(
            -1, K // 2
        )
        out["scales"][a : a + ROWS_PER_CHUNK], out["mins"][a : a + ROWS_PER_CHUNK] = scale, lo
    return out


def unpack_q4(qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """The float32 weight a q4 layer holds (the reference, and the prompt-sized matmul)."""
    N, half = qweight.shape
    pairs = qweight.reshape(N, half // BLOCK, 1, BLOCK)
    q = torch.cat((pairs & 15, pairs >> 4), dim=2).reshape(N, -1, BLOCK).float()
    return (q * scales.float()[..., None] + mins.float()[..., None]).reshape(N, half * 2)


# q5: GGUF Q5_0's blocks as the file keeps them (w = scale * (u - 16), u in 0..31): u's low four
# bits in q4's layout (two blocks per 32 bytes), its fifth bits one int32 per block (bit j: u[j]'s).
FIFTH = torch.tensor([1 << j for j in range(BLOCK)], dtype=torch.int64)


def pack_q5(values: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """uint8 Q5_0 values u (N, K) in 0..31 (a q8 weight of Q5_0's, see `Q5_OFFSET`) and their
    scales -> q5 parts. K must be a multiple of 64."""
    N, K = values.shape
    u = values.reshape(N, K // (2 * BLOCK), 2, BLOCK)
    low = u & 15
    qweight = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(N, K // 2)
    high = (values.reshape(N, K // BLOCK, BLOCK) >> 4).long()
    bits = (high * FIFTH).sum(dim=-1)  # 0 .. 2^32 - 1
    qh = torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32)
    return {"qweight": qweight, "qh": qh, "scales": scales}


def q5_values(qweight: torch.Tensor, qh: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """A q5 weight's uint8 values u (N, K) in 0..31: the q8 weight holding the same blocks."""
    N, half = qweight.shape
    pairs = qweight.reshape(N, half // BLOCK, 1, BLOCK)
    low = torch.cat((pairs & 15, pairs >> 4), dim=2).reshape(N, -1, BLOCK)
    high = ((qh.long()[..., None] >> torch.arange(BLOCK)) & 1).to(torch.uint8)
    return (low | (high << 4)).reshape(N, half * 2)


def unpack_q5(qweight: torch.Tensor, qh: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 weight a q5 layer holds."""
    return unpack_q8(q5_values(qweight, qh, scales), scales)


def signed_q8(qweight: torch.Tensor) -> torch.Tensor:
    """A q8 weight as int8 q (a uint8 Q5_0 one shifted back), e.g. to stack it with other q8s."""
    return qweight if qweight.dtype == torch.int8 else (qweight.to(torch.int8) - Q5_OFFSET)


def pack_q8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, K) float -> q8: w ≈ scale * q, q in -127..127, per block of 32 (GGUF Q8_0's grid)."""
    N, K = w.shape
    out = {
        "qweight": torch.empty(N, K, dtype=torch.int8),
        "scales": torch.empty(N, K // BLOCK, dtype=torch.float16),
    }
    for a in range(0, N, ROWS_PER_CHUNK):
        g = w[a : a + ROWS_PER_CHUNK].float().reshape(-1, K // BLOCK, BLOCK)
        scale = (g.abs().amax(dim=-1) / 127.0).half()
        t = g / scale.float().clamp(min=1e-30)[..., None]
        out["qweight"][a : a + ROWS_PER_CHUNK] = t.round_().clamp_(-127, 127).reshape(-1, K)
        out["scales"][a : a + ROWS_PER_CHUNK] = scale
    return out


Q5_OFFSET = 16  # a uint8 q8 weight holds GGUF Q5_0's own values u = q + 16: w = scale * (u - 16)


def unpack_q8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 weight a q8 layer holds: int8 q, or uint8 Q5_0 values (`Q5_OFFSET`)."""
    N, K = qweight.shape
    q = qweight.reshape(N, K // BLOCK, BLOCK).float()
    if qweight.dtype == torch.uint8:
        q -= Q5_OFFSET
    return (q * scales.float()[..., None]).reshape(N, K)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; none where it cannot be read), read once."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(
        flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()
    )


def training_kernels() -> bool:
    """Whether genforge's training kernels (attention.cpp, loss.cpp: AVX512-BF16) are loaded and
    this CPU runs them."""
    return ops is not None and _runs_bf16(ops)


@functools.cache
def _runs_bf16(module: ModuleType) -> bool:
    return hasattr(module, "flash_supported") and module.flash_supported()


def native_bf16() -> bool:
    """Whether the CPU multiplies bf16 matrices natively (AMX tiles): oneDNN's bf16 matmul is then
    ~6x the float32 one; elsewhere it converts in software and is slower."""
    return "amx_bf16" in cpu_flags()


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the kernels do to x (M, K): int8 per block of 32, scale = amax / 127 (for tests)."""
    M, K = x.shape
    g = x.float().reshape(M, K // BLOCK, BLOCK)
    d = g.abs().amax(dim=-1) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(g * inv[..., None]).clamp(-127, 127)
    return q.reshape(M, K), d
