"""A training run's folder on disk: where its checkpoints are and which one the run stands for.

`RUN/checkpoints/step_0001200/` is a Hugging Face model folder plus `train_state.pt`; a folder
counts as a checkpoint once that file is in it (checkpoints are renamed into place whole). Training
writes this layout (`genforge.train.checkpoint`) and model resolution reads it (`genforge.hub`:
`-m RUN` loads the newest checkpoint), so it lives below both and needs only the standard library.
"""

from __future__ import annotations

import re
from pathlib import Path

from genforge.errors import GenforgeError

CHECKPOINTS = "checkpoints"
STATE = "train_state.pt"
_NAME = re.compile(r"step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoints(run: str | Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(run: str | Path) -> Path | None:
    found = checkpoints(run)
    return found[-1] if found else None


def model_folder(path: str | Path) -> Path | None:
    """The model folder a run folder stands for (its newest checkpoint), or None if not a run."""
    path = Path(path)
    if (path / CHECKPOINTS).is_dir():
        newest = latest(path)
        if newest is None:
            raise GenforgeError(f"{path} is a training run without checkpoints yet; train longer.")
        return newest
    return None
