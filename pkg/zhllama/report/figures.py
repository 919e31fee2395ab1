"""The report's PNG figures (matplotlib's Agg backend: no display needed, same output on a laptop and in a pod)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

# Figures carry no creation time, so a report rebuilt from the same runs has the same bytes.
PNG_METADATA = {"Software": None}
DPI = 110


def loss_curves(training: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Training loss against optimizer step, one panel per training step (pretrain, sft)."""
    figure, axes = plt.subplots(1, len(training), figsize=(5 * len(training), 3.6), squeeze=False)
    for axis, (step, records) in zip(axes[0], training.items(), strict=True):
        axis.plot([r["step"] for r in records], [r["loss"] for r in records], marker=".", color="tab:blue")
        axis.set_title(f"{step} loss")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss (nats/token)")
        axis.grid(alpha=0.3)
    _save(figure, path)


def bars(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str, path: Path,
         value_format: str = "{:.2f}") -> None:
    """One bar per model, its value written on top."""
    figure, axis = plt.subplots(figsize=(1.6 * len(labels) + 2, 3.6))
    drawn = axis.bar(labels, values, color=["tab:gray", "tab:blue", "tab:green", "tab:orange"][: len(labels)])
    axis.bar_label(drawn, labels=[value_format.format(v) for v in values])
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, max(values) * 1.15 if max(values) > 0 else 1)
    _save(figure, path)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float]], title: str, ylabel: str,
                 path: Path) -> None:
    """Bars of each series (a model) side by side for each group (a task)."""
    figure, axis = plt.subplots(figsize=(2.5 * len(groups) + 2, 3.6))
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        positions = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        drawn = axis.bar(positions, values, width, label=name)
        axis.bar_label(drawn, labels=[f"{v:.0%}" for v in values])
    axis.set_xticks(range(len(groups)), groups)
    axis.set_ylim(0, 1.1)
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.legend()
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(figure)
