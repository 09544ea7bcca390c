"""Matplotlib figures shared by TensorBoard logging, reports and benchmarks (Agg backend, no display)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def figure_to_array(figure: plt.Figure) -> np.ndarray:
    """Render a figure to an RGB uint8 array (H, W, 3) and close it."""
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    plt.close(figure)
    return rgba[..., :3].copy()


def per_class_bars(values: Sequence[float], class_names: Sequence[str], title: str, ylabel: str) -> plt.Figure:
    """A bar per class (NaN drawn as an empty bar)."""
    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=80)
    heights = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    axis.bar(range(len(class_names)), heights, color="#4c72b0")
    # full names: a cut name ("immature_g") is a different word to a clinician; tight_layout makes room
    axis.set_xticks(range(len(class_names)), [str(n) for n in class_names], rotation=35, ha="right", fontsize=7)
    axis.set_ylim(0, 1.0 if heights.max(initial=0) <= 1.0 else None)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def grouped_class_bars(
    series: dict[str, Sequence[float | None]], class_names: Sequence[str], title: str, ylabel: str
) -> plt.Figure:
    """One group of bars per class, one bar per series (None or NaN drawn as a missing bar), legend outside."""
    figure, axis = plt.subplots(figsize=(7.5, 3.8), dpi=80)
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(class_names))
    for k, (label, values) in enumerate(series.items()):
        heights = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        axis.bar(positions + (k - (len(series) - 1) / 2) * width, np.nan_to_num(heights), width, label=label)
    axis.set_xticks(positions, [str(n) for n in class_names], rotation=35, ha="right", fontsize=8)
    axis.set_ylim(0, 1.0)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    return figure


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> plt.Figure:
    """A row-normalised confusion matrix with counts written in the cells."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    figure, axis = plt.subplots(figsize=(5.6, 5.0), dpi=80)
    axis.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    names = [str(n) for n in class_names]  # full names, as in per_class_bars
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            axis.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=6, color=colour)
    figure.tight_layout()
    return figure
