"""Checkpoints that never lose work: each one is a Hugging Face model folder plus the training state.

`RUN/checkpoints/step_0001200/` holds `model.safetensors`, `config.json` and the tokenizer (so
`genforge chat -m RUN` and transformers load it as it is) and `train_state.pt` (optimizer, step,
RNG states, the run's config). A checkpoint is written into a hidden temporary folder and renamed
into place, so a kill at any moment leaves the previous checkpoints whole; then all but the newest
`keep` are deleted. The folder layout (names, which checkpoint is the newest) is `genforge.runs`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from genforge.errors import GenforgeError
from genforge.model.config import ModelConfig
from genforge.runs import CHECKPOINTS, STATE, checkpoint_name, checkpoints, latest, model_folder
from genforge.weights.export import atomic_folder, genforge_state, write_hf_files

__all__ = [
    "CHECKPOINTS",
    "STATE",
    "checkpoints",
    "latest",
    "load",
    "model_folder",
    "model_writer",
    "save",
]


def save(
    run: str | Path,
    step: int,
    write_weights: Callable[[Path], object],
    train_state: dict,
    keep: int,
) -> Path:
    """Write checkpoint `step` of `run`: `write_weights(folder)` puts the model's files (a model
    folder, or an adapter) into the folder, then the training state goes next to them."""
    path = Path(run) / CHECKPOINTS / checkpoint_name(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(path) as tmp:
        write_weights(tmp)
        torch.save(train_state, tmp / STATE)
    for old in checkpoints(run)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def model_writer(
    model_state: dict[str, torch.Tensor], cfg: ModelConfig, tokenizer_dir: str | Path
) -> Callable[[Path], object]:
    """A `write_weights` for `save`: the whole model as a Hugging Face folder."""
    return lambda folder: write_hf_files(model_state, cfg, tokenizer_dir, folder)


def unreadable(path: Path, e: Exception) -> GenforgeError:
    """What a user reads about a damaged checkpoint: which one, why, and what to do."""
    return GenforgeError(
        f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to resume "
        "from the one before."
    )


def load_state(path: Path) -> dict:
    """The training state of one checkpoint folder."""
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file: say which, never a traceback from torch's unpickler
        raise unreadable(path, e) from None


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(model state with genforge names, training state) of one checkpoint folder."""
    from safetensors.torch import load_file

    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        cfg = ModelConfig(**state["model"])
        weights = genforge_state(load_file(path / "model.safetensors"), cfg)
    except Exception as e:  # a damaged file: say which, never a traceback from torch's unpickler
        raise unreadable(path, e) from None
    return weights, state
