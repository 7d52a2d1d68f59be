"""The audit benchmark's simulations, on arrays of prepared backbone features (see :mod:`bench.audit`).

Each function takes a pool (features ``x``, true labels ``y``) and seeds, simulates one situation of the
issue's "Done when" list with numpy's seeded generator, and returns plain numbers per seed.
"""
from __future__ import annotations

import io
import math
import time

import numpy as np

from training import audit, review_queue


def flip_labels(y: np.ndarray, count: int, classes: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, indices flipped): ``count`` labels moved to a random other class."""
    noisy = y.copy()
    flipped = rng.choice(len(y), size=count, replace=False)
    noisy[flipped] = (y[flipped] + rng.integers(1, classes, size=count)) % classes
    return noisy, np.sort(flipped)


def balanced_subset(y: np.ndarray, per_class: int, rng) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)])


def mislabels(x, y, classes: int, seeds, per_class: int = 100, rate: float = 0.05) -> list[dict]:
    """Per seed: precision/recall of the flagged list (size = estimated issues) and of 'prediction ≠ given'."""
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pick = balanced_subset(y, per_class, rng)
        noisy, flipped = flip_labels(y[pick], round(rate * len(pick)), classes, rng)
        started = time.perf_counter()
        result = audit.audit_labels(x[pick], noisy, classes, seed=seed)
        seconds = time.perf_counter() - started
        truth = set(flipped.tolist())
        ours = set(result.flagged.tolist())
        base = set(np.flatnonzero(result.oof_probs.argmax(1) != noisy).tolist())
        rows.append({"seed": seed, "n": len(pick), "flips": len(truth), "estimated": result.estimated_issues,
                     "precision": _share(ours & truth, ours), "recall": _share(ours & truth, truth),
                     "baseline_flagged": len(base), "baseline_precision": _share(base & truth, base),
                     "baseline_recall": _share(base & truth, truth), "seconds": round(seconds, 3)})
    return rows


def _share(part: set, whole: set) -> float:
    return len(part) / len(whole) if whole else 0.0


def session_top(x, y, classes: int, seeds, size: int = 128, rate: float = 0.05, top: int = 10) -> list[dict]:
    """Per seed: flips among the top ``top`` of a ``size``-image session's label-issue queue."""
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(y), size, replace=False)
        noisy, flipped = flip_labels(y[pick], round(rate * size), classes, rng)
        result = audit.audit_labels(x[pick], noisy, classes, seed=seed)
        queue = np.argsort(-result.score, kind="stable")[:top]
        rows.append({"seed": seed, "flips": len(flipped), "in_top": int(np.isin(flipped, queue).sum())})
    return rows


def fit_version(x, y, classes: int, seed: int = 0):
    """A head-mode version as the product trains it (``train_linear_head`` with the head defaults)."""
    from training.config import TrainConfig
    from training.head import train_linear_head
    c = TrainConfig(mode="head", seed=seed)
    weight, bias, _ = train_linear_head(x, y, classes, lr=c.lr, batch_size=c.batch_size, epochs=c.epochs,
                                        weight_decay=c.weight_decay, label_smoothing=c.label_smoothing, seed=seed)
    weight, bias = weight.numpy(), bias.numpy()
    return lambda feats: audit._softmax(feats @ weight.T + bias)


def review_effort(x, y, classes: int, seeds, trained: int = 1000, batch: int = 128, found: float = 0.9) -> list[dict]:
    """Per seed: share of a predicted batch looked at, in queue order, until ``found`` of the wrong predictions are seen."""
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(y))
        old, new = order[:trained], order[trained:trained + batch]
        predict = fit_version(x[old], y[old], classes, seed)
        probs = predict(x[new])
        wrong = probs.argmax(1) != y[new]
        queue, _, outlier = review_queue.review_order(probs, x[new], x[old], y[old], classes)
        need = math.ceil(found * wrong.sum())
        position = int(np.flatnonzero(np.cumsum(wrong[queue]) >= need)[0]) + 1 if need else 0
        random_positions = [int(np.flatnonzero(np.cumsum(wrong[rng.permutation(batch)]) >= need)[0]) + 1
                            for _ in range(200)] if need else [0]
        rows.append({"seed": seed, "wrong": int(wrong.sum()), "looked_at": position / batch,
                     "random_looked_at": float(np.mean(random_positions)) / batch, "outliers": int(outlier.sum())})
    return rows


def labels_saved(x, y, classes: int, seeds, pool: int = 2000, start: int = 10, stop: int = 130, step: int = 10,
                 orders: dict | None = None) -> list[dict]:
    """Per seed and order: accuracy on held-out images after each ``step`` new labels, from ``start`` (one per
    class) to ``stop``; the pool and the held-out images are disjoint halves of a permutation. ``orders``: name →
    keyword settings of :func:`training.review_queue.review_order`, or None for random order (default: the
    queue with its own settings, and random)."""
    orders = {"queue": {}, "random": None} if orders is None else orders
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(y))
        members, held_out = perm[:pool], perm[pool:2 * pool]
        first = np.array([rng.choice(members[y[members] == c]) for c in range(classes)])[:start]
        for name, settings in orders.items():
            labelled, curve = list(first), {}
            pick_rng = np.random.default_rng(seed + 7)
            while True:
                predict = fit_version(x[labelled], y[labelled], classes, seed)
                curve[len(labelled)] = float((predict(x[held_out]).argmax(1) == y[held_out]).mean())
                if len(labelled) >= stop:
                    break
                rest = np.setdiff1d(members, labelled)
                if settings is None:
                    chosen = pick_rng.choice(rest, step, replace=False)
                else:
                    queue, _, _ = review_queue.review_order(predict(x[rest]), x[rest], x[labelled], y[labelled], classes,
                                                            **settings)
                    chosen = rest[queue[:step]]
                labelled += chosen.tolist()
            rows.append({"seed": seed, "order": name, "accuracy": curve})
    return rows


def near_copy(jpeg: bytes, rng) -> bytes:
    """The image re-encoded as JPEG quality 70 after rescaling by 0.9 or 1.1."""
    from PIL import Image
    with Image.open(io.BytesIO(jpeg)) as img:
        factor = float(rng.choice([0.9, 1.1]))
        img = img.convert("RGB").resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=70)
    return out.getvalue()


def duplicate_trials(samples, embed, seeds, size: int = 128, copies: int = 10) -> list[dict]:
    """Per seed: (true pairs, the unit embeddings, shas) of ``size`` images + ``copies`` near copies of some of them.

    ``samples``: a list of :class:`training.data.Sample`; ``embed(list[Sample]) -> {sha: vector}``.
    """
    import hashlib

    from training.data import Sample
    trials = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pick = [samples[i] for i in rng.choice(len(samples), size, replace=False)]
        made = []
        for i in rng.choice(size, copies, replace=False):
            data = near_copy(pick[i].read(), rng)
            made.append((int(i), Sample(hashlib.sha256(data).hexdigest(), pick[i].label, f"copy-{i}.jpg", lambda d=data: d)))
        group = pick + [s for _, s in made]
        feats = embed(group)
        unit = audit.normalise(np.stack([feats[s.sha256] for s in group]))
        pairs = {(i, size + j) for j, (i, _) in enumerate(made)}
        trials.append({"seed": seed, "pairs": pairs, "unit": unit, "shas": [s.sha256 for s in group]})
    return trials


def duplicate_scores(trials, threshold: float) -> dict:
    """Pooled pair precision and recall of :func:`training.audit.duplicate_sets` at ``threshold``."""
    found_total = true_total = hit = 0
    for t in trials:
        _, _, pairs = audit.neighbours(t["unit"], k=0, pairs_above=threshold)
        sets = audit.duplicate_sets(t["shas"], pairs)
        found = {(a, b) for g in sets for a in g for b in g if a < b}
        found_total += len(found)
        true_total += len(t["pairs"])
        hit += len(found & t["pairs"])
    return {"threshold": threshold, "found": found_total, "true": true_total,
            "precision": hit / found_total if found_total else 1.0, "recall": hit / true_total if true_total else 1.0}
