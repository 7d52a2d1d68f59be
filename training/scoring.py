"""Score model versions on labelled images: the accuracy behind the promotion gate and version comparisons."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from classifier.predict import Predictor
from classifier.registry import LocalRegistry
from training.data import Sample
from training.evaluation import Decision, decide, set_digest, shared_evaluation_set
from training.run import embed_samples


def accuracy_on(predictor: Predictor, samples: list[Sample], should_stop: Callable[[], bool] | None = None
                ) -> tuple[float | None, int]:
    """(top-1 accuracy 0–1, images scored) of ``predictor`` on ``samples``; features come from the embedding
    cache where present, so re-scoring a head version costs only its linear layer. A label the version does
    not know counts as wrong; undecodable images are left out of both figures."""
    feats, _ = embed_samples(predictor.embedder, samples, should_stop=should_stop)
    usable = [s for s in samples if s.sha256 in feats]
    if not usable:
        return None, 0
    with torch.inference_mode():
        logits = predictor.fm.logits(torch.from_numpy(np.stack([feats[s.sha256] for s in usable])))
    predicted = logits.argmax(-1).tolist()
    correct = sum(predictor.labels[i] == s.label for i, s in zip(predicted, usable))
    return correct / len(usable), len(usable)


class VersionScorer:
    """Scores versions of a registry on the images they both held out, recording each score beside the
    versions so that a set is scored once per version. ``load(version)`` gives a version's Predictor."""

    def __init__(self, registry: LocalRegistry, load: Callable[[str], Predictor]):
        self.registry, self.load = registry, load

    def shared_set(self, samples: list[Sample], *versions: str) -> list[Sample]:
        """The labelled images every one of ``versions`` held out (see :mod:`training.evaluation`)."""
        infos = [self.registry.get(v) for v in versions]
        fractions = [float(i.params().get("val_fraction", 0.2)) for i in infos]
        kept = [sha for i in infos for sha in i.metrics().get("eval_kept_for_training") or []]
        return shared_evaluation_set(samples, fractions, kept)

    def score(self, version: str, samples: list[Sample]) -> tuple[float | None, int]:
        """(accuracy 0–1, images) of ``version`` on ``samples``; (None, 0) for no samples."""
        if not samples:
            return None, 0
        digest = set_digest(samples)
        cached = self.registry.score(version, digest)
        if cached is None:
            accuracy, images = accuracy_on(self.load(version), samples)
            cached = {"accuracy": accuracy, "images": images}
            self.registry.record_score(version, digest, cached)
        return cached["accuracy"], cached["images"]

    def compare(self, first: str, second: str, samples: list[Sample]) -> dict:
        """``{"images", first: accuracy, second: accuracy}`` on the images both held out."""
        shared = self.shared_set(samples, first, second)
        (a, n), (b, _) = self.score(first, shared), self.score(second, shared)
        return {"images": n, first: a, second: b}

    def gate(self, candidate: str, active: str | None, samples: list[Sample], tolerance: float) -> Decision:
        """Whether ``candidate`` may replace ``active`` by itself (see :func:`training.evaluation.decide`)."""
        if active is None or active == candidate:
            return decide(candidate, None, None, None, 0, tolerance)
        compared = self.compare(candidate, active, samples)
        return decide(candidate, active, compared[candidate], compared[active], compared["images"], tolerance)
