"""The one scoring seam: images → labels, probabilities, embeddings, with the project's decode and resize.

The app (through :class:`classifier.predict.Predictor`), ``python -m classifier predict`` and the bulk
engines in ``scale/`` all score through these functions, so a label never depends on which path made it.
Nothing here knows about any execution engine: each function is pure, given a loaded :class:`FeatureModel`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from classifier.embeddings import FeatureModel
from classifier.images import ImageInput, crop, decode
from settings import PlatformError


@dataclass(frozen=True)
class Scores:
    """Scores of n images: ``probabilities`` (n, classes) in 0–1, ``embeddings`` (n, features) float32,
    ``labels`` the class names in column order."""

    labels: list[str]
    probabilities: np.ndarray
    embeddings: np.ndarray


def class_names(fm: FeatureModel) -> list[str]:
    """The model's class names, in the order of its output columns."""
    config = fm.model.config
    return [config.id2label[i] for i in range(config.num_labels)]


@dataclass(frozen=True)
class PixelSpec:
    """A model's input: ``resolution`` (pixels, square) and per-channel ``mean``/``std`` (0–1 scale)."""

    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, fm: FeatureModel) -> "PixelSpec":
        return cls(fm.resolution, tuple(fm.mean), tuple(fm.std))


def crop_pixels(image: ImageInput, spec: PixelSpec | FeatureModel, max_pixels: int) -> np.ndarray:
    """Decode (EXIF-rotated, first frame, at most ``max_pixels`` width × height) and resize/crop one image to
    the model's input before normalising: uint8 (resolution, resolution, 3). Raises PlatformError for an
    unreadable image. This is the exact preparation :class:`classifier.embeddings.Embedder` applies."""
    return crop(decode(image, max_pixels, draft_size=spec.resolution), spec.resolution)


def scores_from_embeddings(fm: FeatureModel, embeddings: np.ndarray) -> Scores:
    """Head + softmax over pooled features of shape (n, features)."""
    with torch.inference_mode():
        feats = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(_device(fm))
        probs = torch.softmax(fm.logits(feats).float(), dim=-1).cpu().numpy()
    return Scores(class_names(fm), probs, np.asarray(embeddings, dtype=np.float32))


def scores_from_crops(fm: FeatureModel, crops: np.ndarray) -> Scores:
    """Backbone (the version's own arithmetic, :meth:`FeatureModel.features_of_crops`) → head → softmax over
    uint8 crops of shape (n, resolution, resolution, 3)."""
    with torch.inference_mode():
        feats = fm.features_of_crops(torch.from_numpy(np.ascontiguousarray(crops, dtype=np.uint8))).float().cpu().numpy()
    return scores_from_embeddings(fm, feats)


def score_batch(fm: FeatureModel, images: list[ImageInput], max_pixels: int
                ) -> tuple[Scores, list[ImageInput], dict[str, str]]:
    """Score a batch of images in-process: ``(scores of the readable ones, those images in row order,
    error message by sha256 for the others)``."""
    crops, good, errors = [], [], {}
    for image in images:
        try:
            crops.append(crop_pixels(image, fm, max_pixels))
            good.append(image)
        except PlatformError as exc:
            errors[image.sha256] = str(exc)
    if not crops:
        names = class_names(fm)
        empty = Scores(names, np.zeros((0, len(names)), np.float32), np.zeros((0, final_features(fm)), np.float32))
        return empty, [], errors
    return scores_from_crops(fm, np.stack(crops)), good, errors


def _device(fm: FeatureModel) -> torch.device:
    """Where the model's weights are (CPU unless a bulk worker moved it to a GPU)."""
    return fm.device


def final_features(fm: FeatureModel) -> int:
    """Width of the pooled features the head reads."""
    weight = [p for p in fm.head.parameters() if p.dim() == 2]
    return int(weight[0].shape[1]) if weight else 0


def top_k_rows(scores: Scores, k: int) -> list[dict]:
    """Per image: ``label``, ``confidence`` (0–1, 6 decimals) and ``top_k`` (list of ``{label, score}``)."""
    k = max(1, min(k, len(scores.labels)))
    order = np.argsort(-scores.probabilities, axis=1, kind="stable")[:, :k]
    rows = []
    for probs, idx in zip(scores.probabilities, order):
        top = [{"label": scores.labels[j], "score": round(float(probs[j]), 6)} for j in idx]
        rows.append({"label": top[0]["label"], "confidence": top[0]["score"], "top_k": top})
    return rows
