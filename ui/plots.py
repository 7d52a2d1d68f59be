"""Matplotlib figures for the app: batch class distribution, confidence histogram, confusion matrix,
loss curves and per-class F1 comparisons. Each returns a Figure (or None when there is nothing to draw)."""
from __future__ import annotations

from collections import Counter

import numpy as np
from matplotlib.figure import Figure


def figure(width: float = 5.0, height: float = 3.0):
    """A figure and its axes, outside pyplot's registry: pyplot keeps every figure it makes until closed, and
    Gradio never closes the figures it draws, so each prediction's two charts would stay in memory for good."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots()


def class_distribution(results: list[dict]):
    counts = Counter(r["label"] for r in results if r.get("label"))
    if not counts:
        return None
    fig, ax = figure()
    names, values = zip(*counts.most_common())
    ax.barh(names[::-1], values[::-1], color="#4c78a8")
    ax.set_xlabel("images")
    ax.set_title("Predicted classes")
    return fig


def confidence_histogram(results: list[dict], threshold: float):
    conf = [r["confidence"] for r in results if r.get("confidence") is not None]
    if not conf:
        return None
    fig, ax = figure()
    ax.hist(conf, bins=np.linspace(0, 1, 21), color="#72b7b2", edgecolor="white")
    ax.axvline(threshold, color="#e45756", linestyle="--", label=f"threshold {threshold:.2f}")
    low = sum(c < threshold for c in conf)
    ax.set_title(f"Confidence — {low} of {len(conf)} below threshold")
    ax.set_xlabel("confidence")
    ax.legend(loc="upper left")
    return fig


def confusion(true: list[str], pred: list[str], title: str = "Confusion matrix (rows: human label)"):
    if not true:
        return None
    names = sorted(set(true) | set(pred))
    index = {n: i for i, n in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=int)
    for t, p in zip(true, pred):
        matrix[index[t], index[p]] += 1
    return confusion_from_matrix(matrix, names, title)


def confusion_from_matrix(matrix, names: list[str], title: str):
    matrix = np.asarray(matrix)
    if matrix.size == 0:
        return None
    size = min(9.0, 2.5 + 0.45 * len(names))
    fig, ax = figure(size, size * 0.85)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    high = matrix.max() or 1
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > high / 2 else "black", fontsize=8)
    ax.set_title(title)
    return fig


def loss_curves(curves: dict[str, list[dict]]):
    """``{"v2": [{"epoch", "loss"}, …], …}`` as lines."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig, ax = figure()
    for name, curve in curves.items():
        ax.plot([p["epoch"] for p in curve], [p["loss"] for p in curve], marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title("Loss curve")
    ax.legend()
    return fig


def live_loss(losses: list[float]):
    if not losses:
        return None
    fig, ax = figure(5, 2.5)
    ax.plot(range(1, len(losses) + 1), losses, color="#f58518")
    ax.set_xlabel("report")
    ax.set_ylabel("loss")
    ax.set_title(f"Training loss (latest {losses[-1]:.4f})")
    return fig


def f1_comparison(new: dict, old: dict | None, new_name: str, old_name: str | None, images: str = "validation"):
    """Per-class F1 of two versions side by side (each a dict with ``per_class``: ``metrics.json`` or the scores on
    the images both held out); ``images`` names which images, for the title."""
    classes = sorted(set(new.get("per_class", {})) | set((old or {}).get("per_class", {})))
    if not classes:
        return None
    fig, ax = figure(max(5.0, 0.6 * len(classes) + 2), 3)
    x = np.arange(len(classes))
    width = 0.4 if old else 0.6
    ax.bar(x - (width / 2 if old else 0), [new.get("per_class", {}).get(c, {}).get("f1", 0) for c in classes],
           width, label=new_name, color="#4c78a8")
    if old:
        ax.bar(x + width / 2, [old.get("per_class", {}).get(c, {}).get("f1", 0) for c in classes], width,
               label=old_name, color="#bab0ac")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title(f"Per-class F1 ({images})")
    ax.legend()
    return fig
