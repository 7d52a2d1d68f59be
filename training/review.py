"""The audit applied to the platform's data: the labelled set (dataset folder + human labels, minus what a
person removed), its cached embeddings, the flagged rows, and the review order of a predicted batch.

Called by :class:`engine.Engine` (``audit``, ``review_queue``); the arithmetic is :mod:`training.audit` and
:mod:`training.review_queue`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from training import audit, review_queue
from training.data import Sample

log = logging.getLogger(__name__)
KIND_ORDER = {"duplicate": 0, "label": 1, "outlier": 2}
"""Flagged rows, worst first: certain duplicates, then label issues, then outliers, each by its score."""


@dataclass
class LabelledSet:
    """Every labelled image once per file: ``entries`` may repeat a sha256 (identical files)."""

    entries: list[Sample]
    human: set[str]
    kept: set[str]
    """sha256s a person reviewed and kept (not reported as label issues or outliers again)."""


def gather(base: list[Sample], human: list[Sample], decisions: dict[str, str]) -> LabelledSet:
    """The labelled set: base files with human labels taking precedence, human-only images, minus removed."""
    labels = {s.sha256: s.label for s in human}
    entries = [Sample(s.sha256, labels.get(s.sha256, s.label), s.name, s.read) for s in base]
    seen = {s.sha256 for s in base}
    entries += [s for s in human if s.sha256 not in seen]
    entries = [s for s in entries if decisions.get(s.sha256) != "remove"]
    return LabelledSet(entries, set(labels), {sha for sha, d in decisions.items() if d == "keep"})


def embedder_for(settings):
    """An Embedder on the base backbone (bundled or ``BACKBONE``) through the platform's embedding cache, at the
    resolution and precision head versions use, so an image a head version predicted is not embedded a second time."""
    from classifier.backbone import resolve_backbone
    from training.config import TrainConfig
    from training.run import cached_embedder, head_features
    backbone = resolve_backbone(settings.backbone, settings.backbones_dir)
    return cached_embedder(head_features(TrainConfig(), backbone), settings)


def audit_set(labelled: LabelledSet, feats: dict[str, np.ndarray]) -> dict:
    """Flagged rows ``{file, sha256, given, suggested, kind, score}`` worst first, plus the summary figures."""
    started = time.perf_counter()
    unique = list({s.sha256: s for s in labelled.entries if s.sha256 in feats}.values())
    names = sorted({s.label for s in unique})
    if len(unique) < 4 or len(names) < 2:
        return {"items": [], "estimated_issues": 0, "audited": len(unique), "seconds": 0.0, "classes": names,
                "points": None}
    index = {n: i for i, n in enumerate(names)}
    x = np.stack([feats[s.sha256] for s in unique])
    result = audit.audit_labels(x, np.array([index[s.label] for s in unique]), len(names), [s.sha256 for s in unique])
    rows: dict[str, dict] = {}
    for group in _file_duplicates(labelled.entries) + [[unique[i] for i in g] for g in result.duplicates]:
        for s in group[1:]:
            rows.setdefault(f"{s.sha256}/{s.name}", _row(s, "duplicate", 1.0, duplicate_of=group[0]))
    for i in result.flagged:
        s = unique[i]
        if s.sha256 not in labelled.kept:
            rows.setdefault(f"{s.sha256}/{s.name}", _row(s, "label", float(result.score[i]), names[result.suggested[i]]))
    for i in result.outliers:
        s = unique[i]
        if s.sha256 not in labelled.kept:
            rows.setdefault(f"{s.sha256}/{s.name}", _row(s, "outlier", float(result.knn_distance[i])))
    items = sorted(rows.values(), key=lambda r: (KIND_ORDER[r["kind"]], -r["score"]))
    points = _map(x, [s.sha256 for s in unique], [s.label for s in unique], {r["sha256"] for r in items})
    return {"items": items, "estimated_issues": result.estimated_issues, "audited": len(unique),
            "seconds": round(time.perf_counter() - started, 3), "classes": names, "points": points}


def _row(sample: Sample, kind: str, score: float, suggested: str | None = None, duplicate_of: Sample | None = None) -> dict:
    row = {"file": sample.name, "sha256": sample.sha256, "given": sample.label, "suggested": suggested,
           "kind": kind, "score": round(score, 4)}
    if duplicate_of is not None:
        row.update(duplicate_of=duplicate_of.sha256, duplicate_of_file=duplicate_of.name)
    return row


def _file_duplicates(entries: list[Sample]) -> list[list[Sample]]:
    """Files with identical bytes (same sha256), as groups of ≥ 2."""
    groups: dict[str, list[Sample]] = {}
    for s in entries:
        groups.setdefault(s.sha256, []).append(s)
    return [g for g in groups.values() if len(g) > 1]


def _map(x: np.ndarray, shas: list[str], labels: list[str], flagged: set[str]) -> dict:
    """2-D projection (first two principal components of the normalised embeddings) for the embedding map."""
    mean, comps, _ = audit.pca_basis(audit.normalise(x), dims=2)
    xy = (audit.normalise(x) - mean) @ comps
    return {"x": xy[:, 0].round(4).tolist(), "y": xy[:, 1].round(4).tolist() if xy.shape[1] > 1 else [0.0] * len(x),
            "label": labels, "sha256": shas, "flagged": [s in flagged for s in shas]}


def queue_for(results: list[dict], feats: dict[str, np.ndarray], labelled: LabelledSet,
              labelled_feats: dict[str, np.ndarray]) -> dict[str, dict]:
    """``{sha256: {"rank", "badges"}}`` for predicted results (rank 1 = review first)."""
    rows = [r for r in results if r.get("sha256") in feats]
    if not rows:
        return {}
    reference = list({s.sha256: s for s in labelled.entries if s.sha256 in labelled_feats}.values())
    names = sorted({s.label for s in reference} | {t["label"] for r in rows for t in r.get("top_k") or []})
    index = {n: i for i, n in enumerate(names)}
    x_new = np.stack([feats[r["sha256"]] for r in rows])
    x_old = np.stack([labelled_feats[s.sha256] for s in reference]) if reference else np.zeros((0, x_new.shape[1]))
    y_old = np.array([index[s.label] for s in reference], dtype=np.int64)
    probs = _probs(rows, index) if all(r.get("label") for r in rows) else None
    classes = max(len(names), 2)
    order, _, outlier = review_queue.review_order(probs, x_new, x_old, y_old, classes)
    badges = _badges(rows, x_new, x_old, y_old, reference, names, outlier)
    return {rows[i]["sha256"]: {"rank": rank, "badges": badges[i]} for rank, i in enumerate(order, 1)}


def _probs(rows: list[dict], index: dict[str, int]) -> np.ndarray:
    """(n, classes) from each result's top-k scores (classes outside the top k get 0)."""
    probs = np.zeros((len(rows), max(len(index), 2)), np.float32)
    for i, r in enumerate(rows):
        for t in r.get("top_k") or [{"label": r["label"], "score": r.get("confidence") or 1.0}]:
            probs[i, index[t["label"]]] = t["score"]
    return probs


def _badges(rows, x_new, x_old, y_old, reference, names, outlier) -> list[list[dict]]:
    """Per row: "near-duplicate of" another labelled image (never of itself: a labelled image is in the reference
    set), "label may be wrong" when the neighbours' vote disagrees (only once every class has the 2 labels that
    :func:`training.review_queue.review_order` needs for votes: with fewer, votes flagged nearly every image), outliers."""
    badges: list[list[dict]] = [[] for _ in rows]
    if not len(reference):
        return badges
    idx, sims, _ = audit.neighbours(audit.normalise(x_new), audit.normalise(x_old))
    vote = audit.knn_vote(idx, sims, y_old, max(len(names), 2))
    votes_count = np.bincount(y_old, minlength=len(names)).min() >= 2
    known = {s.sha256: s for s in reference}
    for i, r in enumerate(rows):
        twin = next((reference[j] for j, sim in zip(idx[i], sims[i])
                     if sim >= audit.DUPLICATE_SIMILARITY and reference[j].sha256 != r["sha256"]), None)
        same = known.get(r["sha256"])
        if twin is None and same is not None and same.name != r.get("file"):
            twin = same  # the same bytes under another name
        if twin is not None:
            badges[i].append({"kind": "duplicate", "text": f"near-duplicate of {twin.name} ({twin.label})"})
        top = names[int(vote[i].argmax())]
        label = r.get("label")
        if votes_count and label in names and top != label and vote[i, names.index(label)] < 0.5:
            badges[i].append({"kind": "label", "text": f"label may be wrong → suggested {top}"})
        if outlier[i]:
            badges[i].append({"kind": "outlier", "text": "unlike the training data"})
    return badges


CLUSTER_MARGIN = 0.0
"""Label by cluster: an unreviewed image is offered for a person's correction when its cosine similarity (base-
backbone embeddings) to the corrected image is at least its similarity to the nearest labelled image of the class
both were predicted as, plus this margin: closer to the correction than to what that class looks like. Raw
similarity alone does not separate them (Fashion-MNIST's wrong predictions sit among right ones of the same
class: ≥ 0.8 offered 1.45 images per correction at precision 0.106). Chosen on validation images only with
``python -m bench.cluster_offer`` (training images 34,000–35,999, seeds 1000–1009; 222 corrections of a 10-class
version's mistakes, 138 of a class it never saw): the smallest margin whose pooled precision (offered images
whose true class is the correction) is ≥ 0.9. At 0.0: 0.929 pooled; 0.982 with 2.05 offered per correction for
the unseen class, 0.346 with 0.12 per correction (an offer after 11 % of them) for the known classes."""
CLUSTER_FLOOR = 0.7
"""…and at least this similar (0–1) in any case: a guard, not tuned (without it, an exploratory run of the same
sweep offered 1 % more images to the unseen class at the same precision)."""
CLUSTER_ALONE = 0.9
"""The similarity required when no labelled image of the predicted class has an embedding to compare with: the
smallest threshold with pooled validation precision ≥ 0.9 without a reference in the same sweep (0.973; 0.88:
0.817)."""
CLUSTER_LIMIT = 12
"""Most images offered after one correction (a group a person can check at a glance)."""


def similar_rows(target: np.ndarray, others: np.ndarray, reference: np.ndarray | None = None,
                 margin: float = CLUSTER_MARGIN, floor: float = CLUSTER_FLOOR, alone: float = CLUSTER_ALONE,
                 limit: int = CLUSTER_LIMIT) -> tuple[np.ndarray, np.ndarray]:
    """(row indices of ``others`` (m, d) close enough to ``target`` (d,) to share its correction, nearest first,
    at most ``limit``; their cosine similarities). ``reference`` (n, d): the labelled images of the class they are
    all predicted as (see :data:`CLUSTER_MARGIN`); without it, :data:`CLUSTER_ALONE` is the threshold."""
    if not len(others):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    unit = audit.normalise(others)
    sims = unit @ audit.normalise(np.asarray(target)[None, :])[0]
    if reference is not None and len(reference):
        needed = np.maximum((unit @ audit.normalise(reference).T).max(1) + margin, floor)
    else:
        needed = np.full(len(sims), alone, np.float32)
    order = np.argsort(-sims, kind="stable")
    order = order[sims[order] >= needed[order]][:limit]
    return order, sims[order]


def cluster_offer(sha256: str, old_label: str, results: list[dict], feats: dict[str, np.ndarray], reviewed: set[str],
                  reference: np.ndarray | None = None, limit: int = CLUSTER_LIMIT) -> list[dict]:
    """``[{sha256, similarity}]`` nearest first: the batch's images other than ``sha256`` that are predicted
    ``old_label``, not in ``reviewed`` (human-labelled or touched) and close to ``sha256`` (:func:`similar_rows`
    with ``reference``, the labelled images of ``old_label``); empty without the corrected image's embedding."""
    if sha256 not in feats:
        return []
    shas = list(dict.fromkeys(r["sha256"] for r in results if r.get("label") == old_label and r.get("sha256") in feats
                              and r["sha256"] != sha256 and r["sha256"] not in reviewed))
    if not shas:
        return []
    rows, sims = similar_rows(feats[sha256], np.stack([feats[s] for s in shas]), reference, limit=limit)
    return [{"sha256": shas[i], "similarity": round(float(s), 4)} for i, s in zip(rows, sims)]
