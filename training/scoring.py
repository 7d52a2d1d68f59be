"""Score a model version on labelled images: the accuracy behind the promotion gate and version comparisons."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from classifier.predict import Predictor
from training.data import Sample
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
