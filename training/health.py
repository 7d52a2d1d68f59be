"""The data-health card of a version: how clean the data behind it was, and what changed since the last one.

Built by :func:`data_health` from the training samples and their cached backbone embeddings (the audit of
:mod:`training.audit`); written into ``metrics.json`` (key ``data_health``) and the model card.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from training import audit
from training.data import Sample

log = logging.getLogger(__name__)
MAX_AUDITED = 2000
"""Larger training sets are audited on a random sample of this many images: the card then costs about 0.4 s
of CPU in a retrain (measured: 0.2 / 0.4 / 0.8 CPU-seconds for 1,000 / 2,000 / 3,000 images)."""
MAX_LISTED = 100
"""Most flagged images listed by sha256 in the card (used to count fixes in the next version)."""


def _sample(samples: list[Sample], limit: int, seed: int = 0) -> list[Sample]:
    if len(samples) <= limit:
        return samples
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(samples), limit, replace=False))
    return [samples[i] for i in keep]


def data_health(samples: list[Sample], feats: dict[str, np.ndarray], previous: dict | None = None,
                previous_version: str | None = None, limit: int = MAX_AUDITED) -> dict:
    """The card as a JSON-safe dict; ``previous``: the previous version's card (None for the first)."""
    started = time.perf_counter()
    unique = list({s.sha256: s for s in samples if s.sha256 in feats}.values())
    audited = _sample(sorted(unique, key=lambda s: s.sha256), limit)
    names = sorted({s.label for s in audited})
    if len(audited) < 4 or len(names) < 2:
        return {"computed": False, "reason": "fewer than 4 embedded images in 2 classes"}
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[s.label] for s in audited])
    result = audit.audit_labels(np.stack([feats[s.sha256] for s in audited]), y, len(names),
                                [s.sha256 for s in audited])
    correct = result.oof_probs.argmax(1) == y
    flagged = [{"sha256": audited[i].sha256, "given": audited[i].label, "suggested": names[result.suggested[i]],
                "score": round(float(result.score[i]), 4)} for i in result.flagged[:MAX_LISTED]]
    card = {"computed": True, "images": len(unique), "audited": len(audited), "sampled": len(audited) < len(unique),
            "estimated_issues": result.estimated_issues,
            "estimated_noise_rate": round(result.estimated_issues / len(audited), 4),
            "oof_accuracy": round(float(correct.mean()), 4),
            "duplicate_sets": len(result.duplicates), "duplicate_images": sum(len(g) for g in result.duplicates),
            "outliers": int(len(result.outliers)),
            "per_class": {n: {"count": sum(s.label == n for s in unique),
                              "oof_accuracy": round(float(correct[y == i].mean()), 4)} for i, n in enumerate(names)},
            "flagged": flagged}
    card["since_previous"] = _since(card, previous, previous_version, {s.sha256: s.label for s in unique})
    card["seconds"] = round(time.perf_counter() - started, 3)
    return card


def _since(card: dict, previous: dict | None, version: str | None, labels: dict[str, str]) -> dict | None:
    """Issues found and fixed since the previous version, and how the figures moved."""
    if not previous or not previous.get("computed"):
        return None
    before = {f["sha256"]: f["given"] for f in previous.get("flagged", [])}
    fixed = sum(1 for sha, given in before.items() if labels.get(sha) != given)
    now = {f["sha256"] for f in card["flagged"]}
    counts = {n: card["per_class"].get(n, {}).get("count", 0) - previous.get("per_class", {}).get(n, {}).get("count", 0)
              for n in sorted(set(card["per_class"]) | set(previous.get("per_class", {})))}
    return {"version": version, "issues_fixed": fixed, "issues_found": len(now - set(before)),
            "images": card["images"] - previous.get("images", 0),
            "estimated_noise_rate": round(card["estimated_noise_rate"] - previous.get("estimated_noise_rate", 0), 4),
            "oof_accuracy": round(card["oof_accuracy"] - previous.get("oof_accuracy", 0), 4),
            "per_class_counts": {n: d for n, d in counts.items() if d}}


def health_for_run(samples: list[Sample], config, settings, registry) -> dict:
    """The card for a training run, from the embeddings the run cached (head and finetune modes);
    never fails the run: a problem is logged and written into the card."""
    if config.mode == "scratch":
        return {"computed": False, "reason": "scratch mode does not embed the images with the backbone"}
    try:
        from classifier.backbone import resolve_backbone
        from classifier.embeddings import EmbeddingCache
        from training.run import _backbone, head_features
        backbone = resolve_backbone(config.backbone or settings.backbone, settings.backbones_dir)
        fm = head_features(config, backbone) if config.mode == "head" else _backbone(backbone, config.resolution)
        feats = EmbeddingCache.open(settings.embeddings_dir, fm.cache_key).get_many([s.sha256 for s in samples])
        versions = registry.versions()
        previous = versions[-1].metrics().get("data_health") if versions else None
        return data_health(samples, feats, previous, versions[-1].version if versions else None)
    except Exception as exc:  # the card is a report: a failure here must not lose the trained version
        log.warning("No data-health card for this version: %s: %s", type(exc).__name__, exc)
        return {"computed": False, "reason": f"{type(exc).__name__}: {exc}"}
