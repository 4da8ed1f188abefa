"""From a model name or path to a network ready to run: resolve, choose the weight format, build.

Design choices:
- "auto" runs a file's own blocks where genforge has them: int4 for a GGUF file whose layers are
  all Q4_1 (int4 holds them bit for bit, and its 8-bit head and embedding hold the Q8_0 ones that
  such files keep), else int8, which holds Q8_0, Q5_0 and Q4_0 blocks exactly and anything else
  (K-quants, floats) within 1/254 of each block's largest. docs/engine.md has the measurements.
- int8 and int4 are weight-only, in GGUF's blocks of 32 (Q8_0, Q4_1) run by genforge's own kernels
  with float32 activations; where the kernels cannot be built (no compiler), PyTorch's weight-only
  kernels with bf16 activations (they are slow with float32 ones).
- The network is built on `meta` with the fused projection layout the loader produced, then given
  the loaded tensors, so no weight is ever held twice.
- A folder's tokenizer is read before its weights: a missing one fails in a moment, not after a
  load. A GGUF file's tokenizer comes from its own metadata.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge import hub
from genforge.compute import release_free_memory
from genforge.errors import GenforgeError
from genforge.model import kernels, lora
from genforge.model.quant import can_stack, quantize_structure, state_converter
from genforge.model.transformer import Transformer
from genforge.runs import model_folder
from genforge.tokenizer import Tokenizer
from genforge.weights import peft
from genforge.weights.gguf import forget_header, read_gguf, slim_metadata
from genforge.weights.load import Checkpoint, build_model, load_checkpoint

log = logging.getLogger(__name__)

DTYPES = ("auto", "fp32", "bf16", "int8", "int4")
AUTO_DTYPE = "int8"  # what "auto" is where int4 would not hold the file exactly
GGML_Q4_1 = 3  # GGUF's type number of Q4_1 blocks
CUDA_DTYPE = "bf16"  # what "auto" is on a GPU: its tensor cores' format
QUANT_ACTIVATIONS = torch.bfloat16  # the activation dtype of PyTorch's int8 / int4 matmuls
KERNEL_FORMATS = {"int8": "q8", "int4": "q4"}  # what genforge's kernels hold for each dtype


def cpu_kernels(build: bool = True):
    """genforge's CPU kernels, built into the cache once (genforge.model.kernels); None without a
    compiler (or with GENFORGE_KERNELS=0), and the model then runs PyTorch's kernels."""
    if os.environ.get("GENFORGE_KERNELS", "1") == "0":
        return None
    return kernels.load(hub.home() / "kernels", build=build)


@dataclass
class LoadedModel:
    name: str  # the model's name, or its file or folder name
    checkpoint: Checkpoint  # format, metadata and config (its tensors now belong to `model`)
    model: Transformer
    tokenizer: Tokenizer
    dtype: str  # the weight format chosen (never "auto")
    sampling: dict | None  # the model authors' recommended sampling, for a named model


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder `path` stands for: a LoRA fine-tuning run's newest checkpoint, or the
    folder itself (genforge's or peft's)."""
    path = Path(path)
    if not path.exists():
        raise GenforgeError(
            f"adapter {path} does not exist; give the folder `genforge finetune` wrote."
        )
    folder = model_folder(path) or path
    if not peft.is_adapter(folder):
        raise GenforgeError(
            f"{folder} is not a LoRA adapter (no {peft.CONFIG}); give a `genforge finetune` run "
            "or a peft adapter folder (a full fine-tuning run is a model: use it with -m)."
        )
    return folder


def _add_adapter(net: Transformer, tokenizer: Tokenizer, name: str, path: str | Path) -> None:
    folder = adapter_folder(path)
    state, alpha = peft.read_adapter(folder, net.cfg)
    lora.load_lora(net, state, alpha, name)
    template = (
        folder / "chat_template.jinja"
    )  # the template it was trained with, if not the model's
    if tokenizer.chat_template is None and template.is_file():
        tokenizer.chat_template = template.read_text()


def check_dtype(dtype: str) -> str:
    """`dtype`, refused with a one-line error unless it is one of DTYPES."""
    if dtype not in DTYPES:
        raise GenforgeError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    return dtype


def auto_dtype(path: Path) -> str:
    """What "auto" means for the weights at `path`: int4 where every layer of a GGUF file is Q4_1
    (held bit for bit), else AUTO_DTYPE."""
    if Path(path).suffix != ".gguf":
        return AUTO_DTYPE
    layers = [
        t
        for name, t in read_gguf(path).tensors.items()
        if name.startswith("blk.") and len(t.shape) == 2
    ]
    if layers and all(t.ggml_type == GGML_Q4_1 for t in layers):
        return "int4"
    return AUTO_DTYPE


def check_device(device: str, dtype: str) -> torch.device:
    """The torch device `device` names, refused with a one-line error where it cannot run `dtype`:
    "cpu", or "cuda" / "cuda:N" with a CUDA build of PyTorch and an NVIDIA GPU, in fp32 or bf16
    (genforge's int8 / int4 kernels are CPU code)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise GenforgeError(f'device must be "cpu" or "cuda" (or "cuda:N"), got {device!r}.')
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GenforgeError(
                "device cuda needs an NVIDIA GPU and a CUDA build of PyTorch; this PyTorch "
                f"({torch.__version__}) sees none, so run on the CPU (the default)."
            )
        if dtype in ("int8", "int4"):
            raise GenforgeError(
                f"dtype {dtype} runs on the CPU only (genforge's kernels); on cuda use bf16 or fp32."
            )
    return dev


def load_model(
    model: str | None = None,
    dtype: str = "auto",
    progress: bool = True,
    device: str = "cpu",
    adapters: dict[str, str | Path] | None = None,
) -> LoadedModel:
    """Load a named model (pulling it if needed), a .gguf file, a Hugging Face model folder or a
    training run (its newest checkpoint) in the weight format `dtype`, onto `device` ("cpu", or
    "cuda": bf16 weights by default there), with LoRA `adapters` (name -> adapter folder or
    fine-tuning run) beside its weights (`genforge.model.lora`: none is switched on)."""
    model = model or hub.DEFAULT_MODEL
    check_dtype(dtype)
    dev = check_device(device, dtype)
    path = hub.resolve(model, progress=progress)
    if dtype == "auto":
        dtype = auto_dtype(path) if dev.type == "cpu" else CUDA_DTYPE
    t0 = time.perf_counter()
    tokenizer = Tokenizer.from_dir(path) if Path(path).is_dir() else None
    # Built (or found) for every dtype: float32 models use the fused attention, RoPE and MLP
    # kernels too, whatever else this process loaded before.
    have_kernels = cpu_kernels() is not None
    if dtype in ("int8", "int4"):
        kind, act = dtype, QUANT_ACTIVATIONS
        if have_kernels:
            kind, act = KERNEL_FORMATS[dtype], torch.float32
        ckpt = load_checkpoint(
            path,
            convert=lambda cfg: state_converter(kind, act, cfg.tie_embeddings),
            fuse=lambda rows: can_stack(kind, rows),
        )
        prepare = lambda m: quantize_structure(m, kind, act).fuse_projections()  # noqa: E731
    else:
        ckpt = load_checkpoint(
            path, torch.bfloat16 if dtype == "bf16" else torch.float32, fuse=lambda rows: True
        )
        prepare = lambda m: m.fuse_projections()  # noqa: E731
    net = build_model(ckpt, prepare=prepare)
    ckpt.state = {}  # the model owns the tensors now
    if ckpt.format == "gguf":
        tokenizer = Tokenizer.from_gguf_metadata(ckpt.metadata)
        # The vocabulary's lists (Qwen2.5's: ~30 MB of Python strings) live on in the tokenizer.
        ckpt.metadata = slim_metadata(ckpt.metadata)
        forget_header(path)
    # Loading freed many blocks of megabytes (fused parts, each file's converted tensors) that
    # glibc keeps: Qwen2.5-Coder's resident memory 881 -> 815 MB when they are handed back.
    release_free_memory()
    for name, adapter in (adapters or {}).items():
        _add_adapter(net, tokenizer, name, adapter)
    if dev.type != "cpu":
        net = net.to(dev)
    log.info("loaded %s in %.1fs", model, time.perf_counter() - t0)
    known = hub.KNOWN.get(model)
    name = model if known else Path(path).name
    return LoadedModel(name, ckpt, net, tokenizer, dtype, dict(known.sampling) if known else None)
