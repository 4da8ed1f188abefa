"""A run's record: `metrics.jsonl` (one JSON object per line) and `loss.png` drawn from it."""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS = "metrics.jsonl"
PLOT = "loss.png"


class MetricsLog:
    def __init__(self, run: Path, enabled: bool = True):
        self.path, self.enabled = run / METRICS, enabled

    def truncate_after(self, step: int) -> None:
        """Forget records past `step` (a resumed run writes them again), atomically."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.read() if r["step"] <= step]
        tmp = self.path.with_name(f".{METRICS}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        return out


def plot(run: Path, units: tuple[str, str] = ("tokens", "loss (nats per token)")) -> Path | None:
    """Draw training and validation loss against tokens seen into RUN/loss.png (atomically);
    `units` names the axes (an image run counts pictures and its loss is a weighted MSE)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is a convenience; the numbers are in metrics.jsonl
        return None
    records = MetricsLog(run).read()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if evals:
        ax.plot(
            [r["tokens"] for r in evals],
            [r["val_loss"] for r in evals],
            "o-",
            label="validation loss",
        )
    ax.set_xlabel(units[0])
    ax.set_ylabel(units[1])
    ax.set_title(str(run))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = run / f".{PLOT}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, run / PLOT)
    return run / PLOT
