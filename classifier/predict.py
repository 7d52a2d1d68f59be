"""Predict batches of images with one model version: features (cached) → head → softmax → top-k."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from classifier.backbone import load_model_and_processor
from classifier.embeddings import Embedder, EmbeddingCache, FeatureModel, ProgressFn
from classifier.images import ImageInput, read_input
from classifier.score import class_names, scores_from_embeddings, top_k_rows
from settings import PlatformError

log = logging.getLogger(__name__)


class Predictor:
    """A loaded model version. Thread-safe for prediction; never mutated after loading."""

    def __init__(self, version: str, feature_model: FeatureModel, cache_root: Path | None, max_pixels: int):
        self.version = version
        self.fm = feature_model
        self.labels = class_names(feature_model)
        cache = EmbeddingCache.open(cache_root, feature_model.cache_key) if cache_root else None
        self.embedder = Embedder(feature_model, cache, max_pixels)

    @property
    def runtime(self) -> dict:
        """How this process computes this version's features: ``resolution`` (pixels), ``precision``, ``graph``,
        ``compiling`` (the graph is being compiled in the background; until then it runs eagerly) and
        ``torch_threads``, the CPU threads a forward pass may use."""
        import torch
        return dict(self.fm.inference_choice(), compiling=self.fm.compiling, torch_threads=torch.get_num_threads())

    @classmethod
    def load(cls, folder: Path, version: str, cache_root: Path | None, max_pixels: int) -> "Predictor":
        """Load a version folder; ``version.json`` names the backbone its features come from."""
        try:
            info = json.loads((Path(folder) / "version.json").read_text())
        except (OSError, ValueError):
            info = {}
        model, processor = load_model_and_processor(str(folder))
        backbone_id = info.get("backbone_id") or f"{version}-{info.get('weights_sha256', 'unknown')[:16]}"
        precision = info.get("precision") or "float32"  # versions made before it was recorded: float32
        return cls(version, FeatureModel(model, processor, backbone_id, precision), cache_root, max_pixels)

    def predict_batch(self, sources: Iterable, top_k: int = 3, progress: ProgressFn | None = None
                      ) -> tuple[list[dict], list[dict]]:
        """Predict every image; returns (results, errors).

        Each result: ``file``, ``sha256``, ``label``, ``confidence`` (0–1), ``top_k`` (list of
        ``{label, score}``) and ``model_version``. Each error: ``file`` and ``error`` (a message);
        one bad image never stops the rest of the batch.
        """
        inputs: list[ImageInput] = []
        errors: list[dict] = []
        for src in sources:
            try:
                inputs.append(read_input(src))
            except PlatformError as exc:
                errors.append({"file": _name_of(src), "error": str(exc)})
        feats, failed = self.embedder.embed(inputs, progress)
        good = [i for i in inputs if i.sha256 in feats]
        errors += [{"file": i.name, "error": failed[i.sha256]} for i in inputs if i.sha256 in failed]
        if not good:
            return [], errors
        scores = scores_from_embeddings(self.fm, np.stack([feats[i.sha256] for i in good]))
        results = [{"file": img.name, "sha256": img.sha256, **row, "model_version": self.version}
                   for img, row in zip(good, top_k_rows(scores, top_k))]
        return results, errors


def _name_of(src) -> str:
    if isinstance(src, (str, Path)):
        return Path(src).name
    return getattr(src, "name", "image")
