"""`genforge export`: a training run's newest checkpoint (or any model folder) as a Hugging Face
folder that transformers loads or a GGUF file that llama.cpp loads.

The training state (`train_state.pt`) stays behind; only the weights, config and tokenizer go out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from genforge.errors import GenforgeError
from genforge.model import lora
from genforge.runs import STATE, model_folder
from genforge.weights import peft
from genforge.weights.export import GGUF_DTYPES, write_gguf, write_hf
from genforge.weights.gguf import GGUF_MAGIC
from genforge.weights.load import build_model, load_checkpoint, load_hf_dir

FORMATS = ("hf", "gguf")
HF_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def export(
    source: str | Path,
    format: str,
    out: str | Path,
    dtype: str = "f32",
    adapter: str | Path | None = None,
) -> Path:
    """Write `source` (a run folder or a Hugging Face model folder; with `adapter`, also a named
    model or a .gguf file) to `out` in `format`, with the LoRA `adapter` merged into its weights."""
    if format not in FORMATS:
        raise GenforgeError(f'--format must be "hf" or "gguf", got {format!r}.')
    if dtype not in GGUF_DTYPES:
        raise GenforgeError(f"--dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}.")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="genforge-export-") as scratch:
        if adapter is None:
            folder = source_folder(source)
            _check_out(out, format, folder)
            ckpt = load_hf_dir(folder)
            state = ckpt.state
        else:
            folder, ckpt = _base(source, Path(scratch))
            _check_out(out, format, folder)
            state = merged_state(ckpt, adapter)
        if format == "hf":
            return write_hf(state, ckpt.config, folder, out, HF_DTYPES[dtype])
        return write_gguf(state, ckpt.config, folder, out, dtype)


def _base(source: str | Path, scratch: Path):
    """(tokenizer folder, float32 checkpoint) of any model genforge loads; a GGUF file's
    tokenizer is written into `scratch`."""
    from genforge import hub
    from genforge.tokenizer import Tokenizer

    path = Path(source)
    if path.is_dir():
        folder = source_folder(path)
        return folder, load_hf_dir(folder)
    path = hub.resolve(str(source))
    ckpt = load_checkpoint(path, torch.float32)
    if ckpt.format == "gguf":
        Tokenizer.from_gguf_metadata(ckpt.metadata).save(scratch)
        return scratch, ckpt
    return Path(path), ckpt


def merged_state(ckpt, adapter: str | Path) -> dict[str, torch.Tensor]:
    """The float32 weights of `ckpt` with the LoRA `adapter` folded in (W + alpha/r B A)."""
    from genforge.generate.loading import adapter_folder

    model = build_model(ckpt)
    state, alpha = peft.read_adapter(adapter_folder(adapter), ckpt.config)
    lora.load_lora(model, state, alpha, "merged")
    lora.merge_lora(model, "merged")
    return {k: v for k, v in model.state_dict().items() if not k.startswith("inv_freq")}


def source_folder(source: str | Path) -> Path:
    """The model folder `source` stands for: a run's newest checkpoint, or the folder itself."""
    source = Path(source)
    if not source.exists():
        raise GenforgeError(
            f"{source} does not exist; give a training run folder or a model folder."
        )
    newest = model_folder(source)
    if newest is not None:
        return newest
    if not (source / "config.json").is_file():
        raise GenforgeError(
            f"{source} is neither a training run (no checkpoints/ folder) nor a model folder (no "
            "config.json); give the folder `genforge train` wrote."
        )
    return source


def _check_out(out: Path, format: str, folder: Path) -> None:
    """Refuse to overwrite anything but an earlier export of the same kind."""
    if out.resolve() == folder.resolve() or (out / STATE).is_file():
        raise GenforgeError(
            f"--out {out} is the model being exported or a training checkpoint; pick another path."
        )
    if format == "hf":
        if out.is_file():
            raise GenforgeError(
                f"--out {out} is a file, but --format hf writes a folder; pick another path."
            )
        if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
            raise GenforgeError(
                f"--out {out} exists and is not a model folder; pick another path (an earlier "
                "export there would be replaced)."
            )
    elif out.is_dir():
        raise GenforgeError(
            f"--out {out} is a folder, but --format gguf writes one file; give a file name such as "
            f"{out / 'model.gguf'}."
        )
    elif out.is_file() and not _is_gguf(out):
        raise GenforgeError(
            f"--out {out} exists and is not a GGUF file; pick another path (an earlier export "
            "there would be replaced)."
        )


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC
