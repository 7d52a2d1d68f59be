"""The data audit, in numpy on cached backbone embeddings: which labels look wrong and which images are
near-duplicates or unlike the rest (the order in which to review new predictions is :mod:`training.review_queue`).

Everything here is a pure function of arrays (embeddings ``x`` of shape (n, d), integer labels ``y``):
no database, no files, no torch. The formulas are those of confident learning (Northcutt et al., 2021;
cleanlab's ``find_label_issues``), written out by hand:

* out-of-fold probabilities: k-fold refits of a softmax-regression head, so each image is scored by a
  model that never saw its label;
* label-issue score: 1 − self-confidence of the given label, where the probabilities are the mean of the
  out-of-fold head and a cosine kNN vote among the other labelled images;
* estimated number of issues: the off-diagonal count of the confident joint (with an own-class condition,
  see :func:`confident_joint_issues`);
* near-duplicates: cosine similarity of normalised embeddings above :data:`DUPLICATE_SIMILARITY`;
* outliers: mean cosine distance to the k nearest labelled images far above the labelled set's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import ThreadpoolController

FOLDS = 5
NEIGHBOURS = 10
"""k of the kNN vote and of the outlier distance."""
KNN_WEIGHT = 0.5
"""Share of the kNN vote in the combined probabilities (the rest is the out-of-fold head). On the validation
seeds, 0.3 / 0.5 / 0.7 gave a flagged-list precision of 0.68 / 0.65 / 0.59 at recall 0.79 / 0.82 / 0.85 on
1,000 images, and 0.3 / 0.5 found 56 % / 73 % of the flips in a 128-image session's top 10: 0.5 serves both."""
PCA_DIMS = 128
"""Embeddings are projected on their first principal components before the head is fitted (speed)."""
ROWS_PER_DIM = 8
"""At most one component per this many images: whitening n images in ~n dimensions would make them all
equidistant, and the head would learn nothing that carries over to the held-out fold."""
DUPLICATE_SIMILARITY = 0.97
"""Cosine similarity (0–1) above which two images are near copies; chosen on validation images
(``python -m bench --only audit`` prints the validation sweep), not on the benchmark's test seeds."""
OUTLIER_FENCE = 3.0
"""An image is an outlier when its kNN distance exceeds the labelled set's q75 + this × IQR (a far-out fence)."""
RIDGE = 0.1
"""L2 penalty of the softmax-regression head on whitened components (0.01 / 0.1 / 1 tried on validation
seeds: out-of-fold accuracy 0.78 / 0.82 / 0.82)."""
OWN_CLASS_FACTOR = 0.5
"""See :func:`confident_joint_issues`."""
STEPS = 60
BLAS_THREADS = 1
"""BLAS threads for the audit's matrix products: one is immune to the spin-waiting that makes multithreaded
BLAS many times slower on a busy 2-core machine, and these products are small."""

_controller: ThreadpoolController | None = None


def blas_limited():
    """Context manager: numpy's BLAS at :data:`BLAS_THREADS` threads. The controller (which scans the process's
    loaded libraries, about 10 ms) is made once, not on each call on a request's path."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=BLAS_THREADS)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pca_basis(x: np.ndarray, dims: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (d,), components (d, k), std of each component (k,)) of ``x``'s first ``k ≤ dims`` principal
    components, by randomised range finding (Halko et al.): a few matrix products, no large eigenproblem."""
    mean = x.mean(0)
    centred = (x - mean).astype(np.float32)
    k = int(max(1, min(dims or PCA_DIMS, x.shape[0] // ROWS_PER_DIM, x.shape[1])))
    rng = np.random.default_rng(seed)
    basis = centred @ rng.standard_normal((x.shape[1], min(k + 10, x.shape[1]))).astype(np.float32)
    for _ in range(2):  # power iterations sharpen the leading components
        basis, _ = np.linalg.qr(centred @ (centred.T @ basis))
    _, _, vt = np.linalg.svd(basis.T @ centred, full_matrices=False)
    comps = vt[:k].T.astype(np.float32)
    std = (centred @ comps).std(0)
    return mean, comps, np.maximum(std, 1e-6).astype(np.float32)


def whiten(x: np.ndarray, basis) -> np.ndarray:
    mean, comps, std = basis
    return ((x - mean) @ comps) / std


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_softmax(z: np.ndarray, y: np.ndarray, classes: int, ridge: float | None = None, steps: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression on whitened features by full-batch Nesterov gradient descent; (W (k, c), b (c,))."""
    n, k = z.shape
    ridge, steps = RIDGE if ridge is None else ridge, steps or STEPS
    onehot = np.eye(classes, dtype=np.float32)[y]
    w, b = np.zeros((k, classes), np.float32), np.log(onehot.mean(0) + 1e-3).astype(np.float32)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    lr, momentum = 1.0, 0.9  # whitened inputs: the loss curvature is at most 1/2 per direction
    for _ in range(steps):
        lw, lb = w + momentum * vw, b + momentum * vb
        err = (_softmax(z @ lw + lb) - onehot) / n
        vw = momentum * vw - lr * (z.T @ err + ridge * lw)
        vb = momentum * vb - lr * err.sum(0)
        w, b = w + vw, b + vb
    return w, b


def predict_softmax(z: np.ndarray, head: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return _softmax(z @ head[0] + head[1])


def fold_ids(y: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A stratified fold number per row (0…folds−1)."""
    rng = np.random.default_rng(seed)
    ids = np.empty(len(y), dtype=np.int64)
    for cls in np.unique(y):
        where = np.flatnonzero(y == cls)
        ids[rng.permutation(where)] = np.arange(len(where)) % folds
    return ids


def out_of_fold_probs(x: np.ndarray, y: np.ndarray, classes: int, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """(n, classes) probabilities, each row from a head fitted without that row's fold."""
    folds = int(max(2, min(folds, np.bincount(y, minlength=classes).max())))
    ids = fold_ids(y, folds, seed)
    # One projection for all folds: principal components use no labels, so nothing of a held-out label leaks.
    z = whiten(x, pca_basis(x, seed=seed))
    probs = np.zeros((len(y), classes), np.float32)
    for fold in range(folds):
        test, train = ids == fold, ids != fold
        if test.any():
            probs[test] = predict_softmax(z[test], fit_softmax(z[train], y[train], classes))
    return probs


def neighbours(unit: np.ndarray, reference: np.ndarray | None = None, k: int = NEIGHBOURS,
               pairs_above: float | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(indices (n, k), cosine similarities (n, k), pairs) of each row's k most similar rows of ``reference``
    (itself when None, excluding each row itself), most similar first; ``pairs``: the (i, j) with i < j and
    similarity ≥ ``pairs_above`` (self-similarity only), found in the same pass."""
    same = reference is None
    reference = unit if same else reference
    k = int(min(k, len(reference) - (1 if same else 0)))
    idx, sims = np.zeros((len(unit), max(k, 0)), np.int64), np.zeros((len(unit), max(k, 0)), np.float32)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(unit), 2048):  # chunks keep the similarity block ≤ 2048 × n floats
        block = unit[start:start + 2048] @ reference.T
        rows = np.arange(len(block))
        if same:
            block[rows, rows + start] = -np.inf
        if pairs_above is not None:
            r, c = np.nonzero(block >= pairs_above)
            pairs += [(int(a), int(b)) for a, b in zip(r + start, c) if b > a]
        if k > 0:
            part = np.argpartition(-block, k - 1, axis=1)[:, :k]
            part_sims = np.take_along_axis(block, part, 1)
            order = np.argsort(-part_sims, axis=1)
            idx[start:start + len(block)] = np.take_along_axis(part, order, 1)
            sims[start:start + len(block)] = np.take_along_axis(part_sims, order, 1)
    return idx, sims, pairs


def knn_vote(idx: np.ndarray, sims: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(n, classes) similarity-weighted share of each class among the neighbours (uniform when none)."""
    if idx.shape[1] == 0:
        return np.full((len(idx), classes), 1.0 / classes, np.float32)
    weights = np.maximum(sims, 0) + 1e-6
    votes = np.zeros((len(idx), classes), np.float32)
    np.add.at(votes, (np.repeat(np.arange(len(idx)), idx.shape[1]), labels[idx].ravel()), weights.ravel())
    return votes / votes.sum(1, keepdims=True)


def confident_joint_issues(probs: np.ndarray, y: np.ndarray, classes: int, own: float | None = None) -> int:
    """Estimated number of wrong labels: the off-diagonal count of the confident joint.

    Per class j the threshold t_j is the mean probability of j over the images labelled j. An image labelled
    i counts in cell (i, j ≠ i) when p_j ≥ t_j (j the most probable such class) and it is *not* plausibly its
    own class: p_i < ``own`` × t_i. Without that second condition (cleanlab's plain count) overlapping classes
    (Fashion-MNIST's shirts, T-shirts and pullovers) count as noise: 119 estimated for 50 flips on the
    validation seeds, against 63 with ``own`` = 0.5 (chosen there).
    """
    own = OWN_CLASS_FACTOR if own is None else own
    rows = np.arange(len(y))
    counts = np.bincount(y, minlength=classes)
    thresholds = np.array([probs[y == c, c].mean() if counts[c] else 1.0 for c in range(classes)])
    above = probs >= thresholds - 1e-9
    above[rows, y] = False
    issue = above.any(1) & (probs[rows, y] < own * thresholds[y])
    return int(issue.sum())


def duplicate_sets(shas: list[str], pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Groups (≥ 2 row indices, sorted) linked by identical bytes (same sha256) or near-copy ``pairs``."""
    parent = list(range(len(shas)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    links = [(i, first.setdefault(sha, i)) for i, sha in enumerate(shas)] + list(pairs)
    for a, b in links:
        parent[root(b)] = root(a)
    groups: dict[int, list[int]] = {}
    for i in range(len(shas)):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def outlier_fence(distances: np.ndarray) -> float:
    """kNN distance (1 − cosine similarity) above which an image is unlike the reference set."""
    if len(distances) < 4:
        return float("inf")
    q25, q75 = np.percentile(distances, [25, 75])
    return float(q75 + OUTLIER_FENCE * (q75 - q25))


@dataclass
class LabelAudit:
    """The audit of a labelled set (row order = the input's)."""

    oof_probs: np.ndarray
    """(n, classes) out-of-fold head probabilities."""
    probs: np.ndarray
    """(n, classes) the mean of the out-of-fold head and the kNN vote."""
    score: np.ndarray
    """(n,) label-issue score 0–1: 1 − combined probability of the given label."""
    suggested: np.ndarray
    """(n,) the most probable other class."""
    estimated_issues: int
    flagged: np.ndarray
    """Row indices of the ``estimated_issues`` highest scores, worst first."""
    duplicates: list[list[int]] = field(default_factory=list)
    knn_distance: np.ndarray | None = None
    """(n,) mean cosine distance (0–2) to the k nearest other labelled images."""
    outliers: np.ndarray | None = None
    """Row indices whose kNN distance is past the fence, farthest first."""
    fence: float = float("inf")


def audit_labels(x: np.ndarray, y: np.ndarray, classes: int, shas: list[str] | None = None, seed: int = 0,
                 duplicate_similarity: float = DUPLICATE_SIMILARITY) -> LabelAudit:
    """Audit labelled embeddings ``x`` (n, d) with labels ``y`` (n,) in ``0…classes−1``."""
    with blas_limited():
        return _audit_labels(x, np.asarray(y, dtype=np.int64), classes, shas, seed, duplicate_similarity)


def _audit_labels(x, y, classes, shas, seed, duplicate_similarity) -> LabelAudit:
    unit = normalise(x)
    oof = out_of_fold_probs(unit, y, classes, seed=seed)
    idx, sims, pairs = neighbours(unit, pairs_above=duplicate_similarity)
    probs = (1 - KNN_WEIGHT) * oof + KNN_WEIGHT * knn_vote(idx, sims, y, classes)
    rows = np.arange(len(y))
    others = probs.copy()
    others[rows, y] = -1.0
    score = 1.0 - probs[rows, y]
    estimated = min(confident_joint_issues(probs, y, classes), len(y))
    flagged = np.argsort(-score, kind="stable")[:estimated]
    distance = 1.0 - sims.mean(1) if sims.shape[1] else np.zeros(len(y), np.float32)
    fence = outlier_fence(distance)
    far = np.flatnonzero(distance > fence)
    return LabelAudit(oof, probs, score, others.argmax(1), estimated, flagged,
                      duplicate_sets(shas or [str(i) for i in range(len(y))], pairs), distance,
                      far[np.argsort(-distance[far])], fence)
