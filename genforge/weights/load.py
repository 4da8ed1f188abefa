"""Load a checkpoint (GGUF file or Hugging Face directory) into a genforge `Transformer`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genforge.errors import GenforgeError
from genforge.model import kernels
from genforge.model.config import ModelConfig
from genforge.model.quant import adopt_formats
from genforge.model.transformer import Transformer
from genforge.weights.configs import config_from_gguf, config_from_hf, unsupported_architecture
from genforge.weights.gguf import GGML_Q4_K, read_gguf
from genforge.weights.names import GGUF_NAMES, GGUF_TRANSFORMS, HF_NAMES, expand, pattern_of


@dataclass
class Checkpoint:
    config: ModelConfig
    state: dict[str, torch.Tensor]  # genforge parameter names
    path: Path
    format: str  # "gguf" or "hf"
    quantization: str  # e.g. "Q4_1", "F32", "BF16"
    metadata: dict[str, Any] = field(default_factory=dict)  # GGUF key/values ({} for HF)


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation, back to the rotate-half layout (rows = heads * dim)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _transforms(cfg: ModelConfig) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {
        "unpermute_q": lambda w: _unpermute(w, cfg.n_heads),
        "unpermute_k": lambda w: _unpermute(w, cfg.n_kv_heads),
        "minus_one": lambda w: w - 1.0,
    }


def _gguf_quantization(meta: dict) -> str:
    """The file's quantization label (e.g. Q4_K_M), from `general.file_type`."""
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(meta["general.file_type"])).name.removeprefix("MOSTLY_")
    except (KeyError, ValueError):
        return "unknown"


# Turns one float32 tensor (or `Blocks`, where it accepts them) of a genforge name into
# state-dict entries, e.g. quantized parts.
Converter = Callable[[str, torch.Tensor], dict[str, torch.Tensor]]
ConverterFactory = Callable[[ModelConfig], Converter]


def _plain(dtype: torch.dtype) -> ConverterFactory:
    return lambda cfg: lambda name, w: {name: w.to(dtype)}


# Inference fuses these projections into one matmul each (Transformer.fuse_projections).
FUSED = {"wqkv": ("wq", "wk", "wv"), "w_gate_up": ("w_gate", "w_up")}


def fusing(
    put: Converter, cfg: ModelConfig, fusable: Callable[[tuple[int, ...]], bool]
) -> Converter:
    """Wrap a converter so that q/k/v and gate/up come out as one stacked tensor per layer.

    A layer's parts are held only until the last one arrives, so loading never keeps a second copy
    of the weights (fusing after loading did, and the allocator kept the holes). `fusable(rows)`
    says whether the converted format can stack parts with those output sizes.
    """
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    sizes = {"wqkv": (q_dim, kv_dim, kv_dim), "w_gate_up": (cfg.hidden_dim, cfg.hidden_dim)}
    part_of = {leaf: f for f, leaves in FUSED.items() if fusable(sizes[f]) for leaf in leaves}
    n_sources = {"wqkv": 3 * (2 if cfg.qkv_bias else 1), "w_gate_up": 2}  # weights (+ biases)
    pending: dict[str, tuple[list[int], dict[str, dict[str, torch.Tensor]]]] = {}

    def convert(name: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
        module = name.rpartition(".")[0]
        parent, _, leaf = module.rpartition(".")
        fused = part_of.get(leaf)
        if fused is None or not parent.startswith("layers."):
            return put(name, w)
        key = f"{parent}.{fused}"
        count, parts = pending.setdefault(key, ([0], {}))
        for out_name, t in put(name, w).items():  # e.g. ...wq.weight or ...wq.qweight/.scales
            parts.setdefault(out_name.removeprefix(f"{module}."), {})[leaf] = t
        count[0] += 1
        if count[0] < n_sources[fused]:
            return {}
        del pending[key]
        if 0 < len(parts.get("mins", {})) < len(FUSED[fused]):
            # a K-quant's q4 beside q8 or q5 (e.g. Q4_K q beside a Q6_K v): q8, as unfused
            for leaf, mins in parts.pop("mins").items():
                q8 = kernels.pack_q8(
                    kernels.unpack_q4(parts["qweight"][leaf], parts["scales"][leaf], mins)
                )
                parts["qweight"][leaf], parts["scales"][leaf] = q8["qweight"], q8["scales"]
        if 0 < len(parts.get("qh", {})) < len(FUSED[fused]):
            # q5 beside q8 (e.g. Qwen's Q5_0 q and k beside its Q8_0 v): all as q8
            for leaf, qh in parts.pop("qh").items():
                parts["qweight"][leaf] = kernels.q5_values(parts["qweight"][leaf], qh, None)
        out = {}
        for suffix, by_leaf in parts.items():
            tensors = [by_leaf[leaf] for leaf in FUSED[fused]]
            if suffix == "qweight" and len({t.dtype for t in tensors}) > 1:
                # q8 beside a Q5_0 matrix's uint8 values (e.g. Qwen's v beside its q and k)
                tensors = [kernels.signed_q8(t) for t in tensors]
            dim = (
                1 if suffix == "scales" and tensors[0].dim() == 3 else 0
            )  # int4 scales (K/g, N, 2)
            out[f"{key}.{suffix}"] = torch.cat(tensors, dim=dim)
        return out

    convert.accepts_blocks = getattr(put, "accepts_blocks", False)
    return convert


def _converter(cfg: ModelConfig, dtype, convert, fuse) -> Converter:
    put = (convert or _plain(dtype))(cfg)
    return fusing(put, cfg, fuse) if fuse else put


def load_gguf(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    convert: ConverterFactory | None = None,
    fuse: Callable[[tuple[int, ...]], bool] | None = None,
) -> Checkpoint:
    """Read a GGUF file; each tensor goes through `convert(config)` as soon as it is dequantized.

    With `fuse` (a `fusable` predicate, see `fusing`), projections come out stacked for inference.
    """
    g = read_gguf(path)
    cfg = config_from_gguf(g.metadata, set(g.tensors))
    put = _converter(cfg, dtype, convert, fuse)
    names = expand(GGUF_NAMES[cfg.arch], cfg.n_layers)
    transforms = GGUF_TRANSFORMS.get(cfg.arch, {})
    fns = _transforms(cfg)
    state = {}
    for src in g.tensors:
        if src not in names:
            raise GenforgeError(
                f"{g.path} has a tensor {src!r} that a {cfg.arch} model does not use; "
                "the file may be a variant genforge does not support."
            )
        dst = names[src]
        t = transforms.get(pattern_of(dst))
        # the file's own blocks, without float32, where the converter runs them as they are
        own = g.blocks(src) if getattr(put, "accepts_blocks", False) else None
        if own is not None:
            kind, parts = own
            parts = {k: (fns[t](v) if t else v).contiguous() for k, v in parts.items()}
            k_quant = "Q4_K" if g.tensors[src].ggml_type == GGML_Q4_K else ""
            state |= put(dst, kernels.Blocks(kind, parts, g.tensors[src].shape, k_quant))
            continue
        w = g.tensor(src)
        if t is not None:
            w = fns[t](w)
        state |= put(dst, torch.from_numpy(np.array(w, copy=True)))
    return Checkpoint(cfg, state, g.path, "gguf", _gguf_quantization(g.metadata), g.metadata)


def load_hf_dir(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    convert: ConverterFactory | None = None,
    fuse: Callable[[tuple[int, ...]], bool] | None = None,
) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        hf_cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenforgeError(
            f"cannot read {path / 'config.json'} ({e}); is this a model folder?"
        ) from None
    cfg = config_from_hf(hf_cfg)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise GenforgeError(f"{path} has no *.safetensors files; only safetensors weights load.")
    names = expand(HF_NAMES[cfg.arch], cfg.n_layers)
    put = _converter(cfg, dtype, convert, fuse)
    state, dtypes = {}, []
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for src in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    key = src.removeprefix("language_model.")
                    if key not in names:
                        continue  # e.g. vision tower of a multimodal checkpoint
                    t = f.get_tensor(src)
                    dtypes.append(str(t.dtype).removeprefix("torch.").upper())
                    state |= put(names[key], t.float())
        except SafetensorError as e:
            raise GenforgeError(f"{file} is not a valid safetensors file ({e}).") from None
    first = dtypes[0] if dtypes else "?"
    quant = {"FLOAT32": "F32", "BFLOAT16": "BF16", "FLOAT16": "F16"}.get(first, first)
    return Checkpoint(cfg, state, path, "hf", quant)


def load_checkpoint(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    convert: ConverterFactory | None = None,
    fuse: Callable[[tuple[int, ...]], bool] | None = None,
) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        return load_hf_dir(path, dtype, convert, fuse)
    if path.is_file():
        return load_gguf(path, dtype, convert, fuse)
    raise GenforgeError(
        f"{path} does not exist; give a model name, a .gguf file or a model folder."
    )


@contextlib.contextmanager
def _no_init():
    """Skip torch.nn.init while building on `meta`, where there is nothing to initialise: on meta
    tensors the init functions go through torch._refs, whose first use imports torch._dynamo
    (~0.8 s of every model load's cold start). Not thread-safe, as transformers' `no_init_weights`."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "zeros_", "ones_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, _leave)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def _leave(tensor, *args, **kwargs):
    return tensor


def build_model(
    ckpt: Checkpoint, prepare: Callable[[Transformer], object] | None = None
) -> Transformer:
    """Instantiate the transformer without allocating, then adopt the checkpoint's tensors.

    `prepare` may reshape the empty model first (e.g. swap in quantized layers) to fit the state.
    """
    with torch.device("meta"), _no_init():
        model = Transformer(ckpt.config)
        if prepare is not None:
            prepare(model)
        adopt_formats(model, ckpt.state)  # a file's Q5_0 blocks kept as q5 where q8 was asked
    expected = set(model.state_dict())
    missing = sorted(
        expected - set(ckpt.state) - ({"output.weight"} if model.output is None else set())
    )
    if missing:
        raise GenforgeError(
            f"{ckpt.path} lacks {len(missing)} tensors a {ckpt.config.arch} model needs "
            f"(first: {missing[0]}); the file is incomplete or of another variant."
        )
    state = {k: v for k, v in ckpt.state.items() if k in expected}
    model.load_state_dict(state, assign=True, strict=True)
    model.init_rope()  # non-persistent buffers were made on the meta device
    return model.eval()


__all__ = ["Checkpoint", "build_model", "load_checkpoint", "unsupported_architecture"]
