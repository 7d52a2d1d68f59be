"""Validation metrics as plain JSON-ready dicts: accuracy, macro-F1, per-class P/R/F1, confusion, ECE."""
from __future__ import annotations

import numpy as np


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy − confidence| over equal-width confidence bins, weighted by bin size (0–1)."""
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        mask = (confidence > low) & (confidence <= high)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Metrics of predicted probabilities ``probs`` (n × classes) against integer labels ``y_true``."""
    y_true = np.asarray(y_true, dtype=int)
    n_classes = len(labels)
    if len(y_true) == 0:
        return {"accuracy": None, "macro_f1": None, "per_class": {}, "confusion_matrix": [], "ece": None,
                "labels": labels, "n": 0}
    y_pred = probs.argmax(1)
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class, f1s = {}, []
    for i, name in enumerate(labels):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                           "f1": round(float(f1), 4), "support": int(confusion[i].sum())}
        if confusion[i].sum():
            f1s.append(f1)
    confidence = probs.max(1)
    return {
        "accuracy": round(float((y_pred == y_true).mean()), 4),
        "macro_f1": round(float(np.mean(f1s)) if f1s else 0.0, 4),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "ece": round(expected_calibration_error(confidence, y_pred == y_true), 4),
        "labels": labels,
        "n": int(len(y_true)),
    }
