"""A training run's record: metrics.jsonl (one JSON point per line) and curves.png."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..atomic_files import atomic_write, writing


class MetricsLog:
    """metrics.jsonl: one JSON object per logged point (step, epoch, split, loss, accuracy, ...)."""

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, point: dict) -> None:
        if self.enabled:
            with writing(self.path), open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({**point, "time": round(time.time(), 3)}) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop points logged after `step` (a resumed run logs them again), and a line that
        a full disk cut short."""
        if not self.enabled or not self.path.exists():
            return
        keep = [json.dumps(p) for p in read_points(self.path) if p.get("step", 0) <= step]
        text = "".join(line + "\n" for line in keep)
        atomic_write(self.path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def read_points(metrics: Path) -> list[dict]:
    """The points of a metrics.jsonl, skipping a line that is not whole JSON (cut short)."""
    points = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            points.append(json.loads(line))
        except ValueError:
            continue
    return [point for point in points if isinstance(point, dict)]


def write_curves(metrics: Path, png: Path) -> bool:
    """curves.png: training and validation loss and accuracy against steps (matplotlib, Agg).
    matplotlib is optional (`pip install 'banger[plot]'`): without it, returns False."""
    if not metrics.exists():
        return False
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = read_points(metrics)
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("validation", "o-")):
        chosen = [p for p in points if p.get("split") == split]
        steps = [p["step"] for p in chosen]
        loss_axes.plot(steps, [p["loss"] for p in chosen], style, label=split, markersize=3)
        accuracy_axes.plot(steps, [p["accuracy"] for p in chosen], style, label=split, markersize=3)
    labels = ((loss_axes, "cross-entropy loss (nats/token)"), (accuracy_axes, "token accuracy"))
    for axes, name in labels:
        axes.set_xlabel("step")
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    try:
        atomic_write(png, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    finally:
        plt.close(figure)
    return True
