"""PNG plots of the evaluation commands (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _length_label(length: int) -> str:
    return f"{length // 1024}K" if length >= 1024 and length % 1024 == 0 else str(length)


# Heatmap geometry: every cell gets at least this many inches, so that its "0.00" label in ANNOTATION_FONTSIZE points
# fits inside it however many lengths and depths a grid has (the figure grows with the grid instead).
CELL_WIDTH_IN = 0.8
CELL_HEIGHT_IN = 0.6
ANNOTATION_FONTSIZE = 9
_MARGIN_WIDTH_IN = 2.6  # y label, tick labels and the colour bar
_MARGIN_HEIGHT_IN = 1.6  # title, x label and tick labels


def heatmap_figure(
    depths: Sequence[float],
    lengths: Sequence[int],
    scores: Sequence[Sequence[float | None]],
    *,
    title: str,
) -> plt.Figure:
    """The figure of `depth_length_heatmap` (the caller closes it): CELL_WIDTH_IN x CELL_HEIGHT_IN inches or more per
    cell, each cell's score written in ANNOTATION_FONTSIZE points."""
    grid = [[float("nan") if value is None else value for value in row] for row in scores]
    size = (
        max(5.0, _MARGIN_WIDTH_IN + CELL_WIDTH_IN * len(lengths)),
        max(3.0, _MARGIN_HEIGHT_IN + CELL_HEIGHT_IN * len(depths)),
    )
    figure, axes = plt.subplots(figsize=size)
    image = axes.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(lengths)), [_length_label(length) for length in lengths], fontsize=ANNOTATION_FONTSIZE)
    axes.set_yticks(range(len(depths)), [f"{depth:g}%" for depth in depths], fontsize=ANNOTATION_FONTSIZE)
    axes.set_xlabel("context length (tokens)")
    axes.set_ylabel("needle depth")
    axes.set_title(title, fontsize=10)
    for row, values in enumerate(scores):
        for column, value in enumerate(values):
            if value is not None:
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=ANNOTATION_FONTSIZE)
    figure.colorbar(image, ax=axes, label="score")
    figure.tight_layout()
    return figure


def depth_length_heatmap(
    path: str | pathlib.Path,
    depths: Sequence[float],
    lengths: Sequence[int],
    scores: Sequence[Sequence[float | None]],
    *,
    title: str,
) -> pathlib.Path:
    """Score per (depth row, length column) in [0, 1], the number written in each cell; missing cells are blank."""
    path = pathlib.Path(path)
    figure = heatmap_figure(depths, lengths, scores, title=title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def loss_by_position(
    path: str | pathlib.Path,
    bin_edges: Sequence[int],
    bin_losses: Sequence[float],
    *,
    train_seq_len: int,
    title: str,
) -> pathlib.Path:
    """Mean token loss per position bin (len(bin_edges) = len(bin_losses) + 1), the training sequence length marked."""
    path = pathlib.Path(path)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.stairs(bin_losses, bin_edges, baseline=None, linewidth=1.5)
    axes.axvline(train_seq_len, color="grey", linestyle="--", label=f"training length {train_seq_len}")
    axes.set_xlabel("token position")
    axes.set_ylabel("loss (nats/token)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def accuracy_against_chance(
    path: str | pathlib.Path,
    labels: Sequence[str],
    accuracies: Sequence[float | None],
    chances: Sequence[float | None],
    *,
    title: str,
) -> pathlib.Path:
    """One bar per label (accuracy in [0, 1], the value written above it), its chance level a black tick across it."""
    path = pathlib.Path(path)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(labels)), 3.5))
    heights = [0.0 if value is None else value for value in accuracies]
    axes.bar(range(len(labels)), heights, color="tab:blue", label="accuracy")
    for index, chance in enumerate(chances):
        if chance is not None:
            axes.hlines(
                chance, index - 0.4, index + 0.4, color="black", linewidth=2, label="chance" if index == 0 else None
            )
    for index, value in enumerate(accuracies):
        axes.text(index, heights[index] + 0.02, "-" if value is None else f"{value:.2f}", ha="center", fontsize=8)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylim(0.0, 1.05)
    axes.set_ylabel("accuracy")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
