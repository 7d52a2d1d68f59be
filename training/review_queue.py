"""The order in which a person reviews new predictions (the review grid's default order), in numpy on cached
backbone embeddings: outliers and most likely wrong first, with a head of :data:`HEAD_SIZE` places chosen so
that the labels it brings teach the most.

Pure functions of arrays, like :mod:`training.audit` whose primitives (unit rows, kNN, the outlier fence) they
use. The settings below were chosen on validation data (``python -m bench --only audit`` prints the "labels
saved" validation table: a pool of 2,000 and 2,000 held out from Fashion-MNIST training images 34,000–37,999,
seeds 1000–1019); the benchmark's test pool and seeds were not used to choose them.
"""
from __future__ import annotations

import numpy as np

from training.audit import blas_limited, knn_vote, neighbours, normalise, outlier_fence

MARGIN_WEIGHT = 0.7
"""Share of the low top-1/top-2 margin in a new prediction's wrongness (the rest: neighbours that disagree); 1 / 0.7 /
0.5 / 0.3 on the validation seeds: 90 % of the wrong predictions found after 44.5 / 40.3 / 41.6 / 43.3 % of a batch."""
HEAD_SIZE = 10
"""Positions at the top of a review queue chosen for what their labels teach: one session's worth of looking, or
of labels added before the next refit."""
HEAD_SIMILARITY = 0.85
"""Cosine similarity (0–1) at or above which a candidate for the head is a repeat of an image already there (on
Fashion-MNIST features a random pair sits near 0.63 and an image's nearest neighbour near 0.88); see
:func:`spread_head`. Validation pool (1,000 images, 1,000 held out), spread alone (no few-labels switch): accuracy
at 90 labels 0.7610 at 0.85, 0.7595 at 0.80, 0.7574 without; review effort (1,000 labels, 128 new, seeds
1000–1009) 0.428 of the batch with or without it."""
FEW_LABELS_PER_CLASS = 6
"""Below this many labels per class (on average) the head covers the new images (see :func:`covering_head`); from it
on, the most doubtful images, one of each run of near repeats (see :func:`spread_head`). Labels saved on validation
images (module docstring; random order's accuracy with 130 labels 0.7670): labels the queue needed to reach it, and
its accuracy at 90 labels. Covering at :data:`COVER_SIMILARITY` 0.88 until 4 / 5 / 6 / 7 / 8 labels per class: 90
(0.7692) / 80 (0.7736) / 80 (0.7754) / 80 (0.7747) / 90 (0.7734); in every round 110 (0.7600); at 0.85 until 4: 100
(0.7661). The earlier head (typical images of k-means clusters no label covers, TypiClust-like) until 3 / 4 / 5 per
class: 110 (0.7583) / 100 (0.7628) / 100 (0.7641); with it until 4, other heads after it: the most doubtful without
the spread 100 (0.7620), margin alone 100 (0.7637), BADGE (k-means++ on the gradient embeddings of the 50 most
doubtful) 100 (0.7661), one per predicted class 100 (0.7659), cluster-margin (one per k-means cluster of the 100
most doubtful) 100 (0.7630), the most typical of the 50 most doubtful 100 (0.7657). Covering until 4 then the most
typical of the 50 most doubtful: 90 (0.7690)."""
COVER_SIMILARITY = 0.88
"""Cosine similarity (0–1) within which a label "covers" an image in :func:`covering_head` (ProbCover's ball; among
2,000 Fashion-MNIST features an image has ~3 others within 0.90, ~34 within 0.85). Validation as above, until 5
labels per class at 0.87 / 0.88 / 0.89: 90 (0.7730) / 80 (0.7736) / 80 (0.7745); until 6: 90 (0.7724) / 80 (0.7754)
/ 90 (0.7730)."""


def review_order(probs: np.ndarray | None, x_new: np.ndarray, x_labelled: np.ndarray, y_labelled: np.ndarray,
                 classes: int, *, few_per_class: float = FEW_LABELS_PER_CLASS, cover_similarity: float = COVER_SIMILARITY
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order in which to review new images: returns (order (n,), wrongness 0–1 (n,), outlier flags (n,)).

    With a model (``probs`` (n, classes)) and at least 2 labels per class: outliers first, then most likely
    wrong first (low top-1/top-2 margin and kNN neighbours that disagree with the prediction). With a model
    but too few labels for neighbour votes (one trained on data this store does not hold): lowest margin
    first. Without a model (cold start): typical examples of each cluster first, one cluster after another,
    so the first labels teach the most. With a model, the first :data:`HEAD_SIZE` places are chosen for what
    their labels teach (see :func:`_with_head`); the rest keep the order above. ``few_per_class`` and
    ``cover_similarity``: see :data:`FEW_LABELS_PER_CLASS` and :data:`COVER_SIMILARITY` (the benchmark varies them).
    """
    with blas_limited():
        return _review_order(probs, x_new, x_labelled, y_labelled, classes, (few_per_class, cover_similarity))


def _review_order(probs, x_new, x_labelled, y_labelled, classes, head_settings):
    unit_new = normalise(x_new)
    counts = np.bincount(np.asarray(y_labelled, dtype=np.int64), minlength=classes) if len(y_labelled) else np.zeros(classes)
    if probs is None:
        order = typical_first(unit_new, max(classes, 2))
        return order, np.zeros(len(x_new)), np.zeros(len(x_new), bool)
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    if len(y_labelled) == 0 or counts.min() < 2:
        order = _with_head(np.argsort(margin, kind="stable"), unit_new, x_labelled, classes, *head_settings)
        return order, 1 - margin, np.zeros(len(x_new), bool)
    unit_old = normalise(x_labelled)
    idx, sims, _ = neighbours(unit_new, unit_old)
    vote = knn_vote(idx, sims, np.asarray(y_labelled, dtype=np.int64), classes)
    predicted = probs.argmax(1)
    wrongness = MARGIN_WEIGHT * (1 - margin) + (1 - MARGIN_WEIGHT) * (1 - vote[np.arange(len(probs)), predicted])
    _, own_sims, _ = neighbours(unit_old)
    fence = outlier_fence(1.0 - own_sims.mean(1)) if own_sims.shape[1] else float("inf")
    outlier = (1.0 - sims.mean(1)) > fence
    order = _with_head(np.lexsort((-wrongness, ~outlier)), unit_new, x_labelled, classes, *head_settings)
    return order, wrongness, outlier


def _with_head(order: np.ndarray, unit_new: np.ndarray, x_labelled: np.ndarray, classes: int, few_per_class: float,
               cover_similarity: float) -> np.ndarray:
    """``order`` with its head chosen for what its labels teach (low-budget active learning): while labels are few,
    the new images that cover the most others no label covers yet (ProbCover, Yehuda et al. 2022), the rest in
    ``order``; after that, ``order`` with one of each run of near repeats in its head."""
    if 0 < len(x_labelled) < few_per_class * classes:
        return then_rest(covering_head(unit_new, normalise(x_labelled), similarity=cover_similarity), order)
    return spread_head(order, unit_new)


def then_rest(head: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``head`` followed by the rows of ``order`` not in it, in their order."""
    taken = np.zeros(len(order), bool)
    taken[head] = True
    return np.concatenate([np.asarray(head, np.int64), order[~taken[order]]])


def covering_head(unit_new: np.ndarray, unit_labelled: np.ndarray, size: int = HEAD_SIZE,
                  similarity: float = COVER_SIMILARITY) -> np.ndarray:
    """Up to ``size`` new rows picked greedily, each the one whose ball (rows at cosine ≥ ``similarity``, itself
    included) holds the most rows that no labelled row and no earlier pick covers yet."""
    n = len(unit_new)
    covered = np.zeros(n, bool)
    if len(unit_labelled) and n:
        covered = neighbours(unit_new, unit_labelled, k=1)[1][:, 0] >= similarity
    gain = ball_counts(unit_new, unit_new[~covered], similarity)
    head: list[int] = []
    while len(head) < size and n and gain.max() > 0:
        best = int(np.argmax(gain))
        head.append(best)
        newly = np.flatnonzero(~covered & (unit_new @ unit_new[best] >= similarity))
        covered[newly] = True
        gain -= ball_counts(unit_new, unit_new[newly], similarity)  # balls are symmetric
        gain[best] = -1
    return np.array(head, np.int64)


def ball_counts(unit: np.ndarray, centres: np.ndarray, similarity: float) -> np.ndarray:
    """(n,) how many of ``centres`` lie within cosine ``similarity`` of each row of ``unit`` (all unit rows)."""
    counts = np.zeros(len(unit), np.int64)
    for start in range(0, len(unit), 2048):  # chunks keep the similarity block ≤ 2048 × len(centres) floats
        counts[start:start + 2048] = (unit[start:start + 2048] @ centres.T >= similarity).sum(1)
    return counts


def spread_head(order: np.ndarray, unit: np.ndarray, size: int = HEAD_SIZE, similarity: float = HEAD_SIMILARITY
                ) -> np.ndarray:
    """``order`` with its first ``size`` places taken, in that order, by rows less similar than ``similarity``
    (cosine, on unit rows) to every row taken before; the rows passed over follow in their own order.

    The most doubtful images often come in near-identical runs (the same confusion, photographed alike): a
    label on the first teaches what its repeats would, so the head shows one of each.
    """
    closest = np.full(len(order), -np.inf, np.float32)
    head: list[int] = []
    for i in order:
        if len(head) >= size:
            break
        if closest[i] < similarity:
            head.append(int(i))
            closest = np.maximum(closest, unit @ unit[i])
    return then_rest(np.array(head, np.int64), order)


def kmeans(unit: np.ndarray, clusters: int, seed: int = 0, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each row (n,), cosine similarity of each row to each centre (n, k)): spherical k-means with
    k-means++ seeding, ``k ≤ clusters``."""
    n = len(unit)
    k = int(max(1, min(clusters, n)))
    rng = np.random.default_rng(seed)
    centres = unit[[rng.integers(n)]]
    for _ in range(1, k):  # k-means++ seeding
        dist = np.clip(1 - (unit @ centres.T).max(1), 0, None)
        centres = np.vstack([centres, unit[rng.choice(n, p=dist / dist.sum()) if dist.sum() > 0 else rng.integers(n)]])
    for _ in range(iterations):
        assign = (unit @ centres.T).argmax(1)
        centres = np.stack([normalise(unit[assign == c].mean(0, keepdims=True))[0] if (assign == c).any() else centres[c]
                            for c in range(k)])
    sims = unit @ centres.T
    return sims.argmax(1), sims


def typical_first(unit: np.ndarray, clusters: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """Row order: k-means clusters in turn (largest first), each cluster's rows nearest its centre first."""
    n = len(unit)
    k = int(min(clusters, n))
    if k <= 1:
        return np.arange(n)
    assign, sims = kmeans(unit, k, seed, iterations)
    queues = [sorted(np.flatnonzero(assign == c), key=lambda i: -sims[i, c]) for c in range(k)]
    queues = [q for q in sorted(queues, key=len, reverse=True) if q]
    order = [q[r] for r in range(max(map(len, queues))) for q in queues if r < len(q)]
    return np.array(order, dtype=np.int64)
