"""Score model versions on labelled images: the accuracy behind the promotion gate and version comparisons."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from classifier.predict import Predictor
from classifier.registry import LocalRegistry
from training.data import Sample
from training.evaluation import Decision, decide, set_digest, shared_evaluation_set
from training.metrics import classification_metrics
from training.run import embed_samples


def accuracy_on(predictor: Predictor, samples: list[Sample], should_stop: Callable[[], bool] | None = None
                ) -> tuple[float | None, int]:
    """(top-1 accuracy 0–1, images scored) of ``predictor`` on ``samples`` (see :func:`scores_on`)."""
    scores = scores_on(predictor, samples, should_stop)
    return scores["accuracy"], scores["images"]


def _no_scores() -> dict:
    """What a version scores on no images."""
    return {"accuracy": None, "images": 0, "macro_f1": None, "per_class": {}}


def scores_on(predictor: Predictor, samples: list[Sample], should_stop: Callable[[], bool] | None = None) -> dict:
    """``{"accuracy", "images", "macro_f1", "per_class"}`` of ``predictor`` on ``samples`` (accuracy and F1 0–1,
    ``per_class`` as in :func:`training.metrics.classification_metrics`). Features come from the embedding cache
    where present, so re-scoring a head version costs only its linear layer. A label the version does not know
    counts as wrong; undecodable images are left out of every figure."""
    feats, _ = embed_samples(predictor.embedder, samples, should_stop=should_stop)
    usable = [s for s in samples if s.sha256 in feats]
    if not usable:
        return _no_scores()
    with torch.inference_mode():
        logits = predictor.fm.logits(torch.from_numpy(np.stack([feats[s.sha256] for s in usable])))
    labels = list(predictor.labels) + sorted({s.label for s in usable} - set(predictor.labels))
    probs = np.zeros((len(usable), len(labels)), np.float32)
    probs[:, :logits.shape[1]] = torch.softmax(logits.float(), -1).numpy()
    truth = np.array([labels.index(s.label) for s in usable])
    metrics = classification_metrics(truth, probs, labels)
    per_class = {name: row for name, row in metrics["per_class"].items() if row["support"] or name in predictor.labels}
    return {"accuracy": float((probs.argmax(1) == truth).mean()), "images": len(usable),
            "macro_f1": metrics["macro_f1"], "per_class": per_class}


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
        scores = self.scores(version, samples)
        return scores["accuracy"], scores["images"]

    def scores(self, version: str, samples: list[Sample]) -> dict:
        """:func:`scores_on` of ``version`` on ``samples``, recorded beside the version (once per set)."""
        if not samples:
            return _no_scores()
        digest = set_digest(samples)
        cached = self.registry.score(version, digest)
        if cached is None or "per_class" not in cached:  # scores recorded before F1 was
            cached = scores_on(self.load(version), samples)
            self.registry.record_score(version, digest, cached)
        return cached

    def compare(self, first: str, second: str, samples: list[Sample]) -> dict:
        """``{"images", first: accuracy, second: accuracy, "scores": {version: scores}}`` on the images both held
        out (``scores``: :func:`scores_on`, with macro-F1 and per-class F1 on those same images)."""
        shared = self.shared_set(samples, first, second)
        a, b = self.scores(first, shared), self.scores(second, shared)
        return {"images": a["images"], first: a["accuracy"], second: b["accuracy"], "scores": {first: a, second: b}}

    def gate(self, candidate: str, active: str | None, samples: list[Sample], tolerance: float) -> Decision:
        """Whether ``candidate`` may replace ``active`` by itself (see :func:`training.evaluation.decide`)."""
        if active is None or active == candidate:
            return decide(candidate, None, None, None, 0, tolerance)
        compared = self.compare(candidate, active, samples)
        return decide(candidate, active, compared[candidate], compared[active], compared["images"], tolerance)
