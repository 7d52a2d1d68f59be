"""Build and check the documents the store writes: image facts, predictions, label items."""
from __future__ import annotations

import io
import logging
import math
import re
from datetime import datetime
from typing import Any, Iterable

from bson import ObjectId
from PIL import Image

from labeling.labels import canonical_label, normalize_label
from settings import PlatformError

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_LISTED = 10
"""Most problems spelled out in one error message."""


def image_info(data: bytes) -> dict:
    """``{"format", "width", "height"}`` (pixels) read from the image header; Nones if PIL cannot read it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return {"format": image.format, "width": int(image.width), "height": int(image.height)}
    except Exception as exc:  # PIL raises many types for unreadable or hostile files
        logger.warning("could not read image header (%s); stored without format", type(exc).__name__)
        return {"format": None, "width": None, "height": None}


def prediction_doc(prediction: dict, batch_id: str, now: datetime, batch_shas: set[str]) -> dict:
    """A ``predictions`` document from ``{sha256, label, confidence, top_k, model_version}``."""
    sha = prediction.get("sha256")
    if sha not in batch_shas:
        raise PlatformError(f"Prediction for image {str(sha)[:16]!r} does not belong to this batch")
    label = prediction.get("label")
    if not isinstance(label, str) or not label:
        raise PlatformError(f"Prediction for image {sha[:16]} has no label")
    top_k = [{"label": str(entry["label"]), "score": _score(entry["score"])} for entry in prediction.get("top_k") or []]
    version = prediction.get("model_version")
    return {
        "sha256": sha,
        "model_version": None if version is None else str(version),
        "label": label,
        "confidence": _score(prediction.get("confidence")),
        "top_k": top_k,
        "time": now,
        "batch_id": batch_id,
    }


def _score(value: Any) -> float | None:
    """A 0-1 score as float, None when missing; PlatformError when out of range."""
    if value is None:
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise PlatformError(f"A prediction score must be a number, got {value!r}") from None
    if math.isnan(score) or not 0.0 <= score <= 1.0 + 1e-6:
        raise PlatformError(f"A prediction score must be between 0 and 1, got {value!r}")
    return min(score, 1.0)  # float rounding of a softmax can overshoot 1 by an ulp


def validate_items(items: Iterable[dict], known_classes: list[str], existing: list[str]) -> tuple[dict[str, str], list[str]]:
    """Check label items; return ``({sha256: canonical label}, new class names in first-seen order)``.

    Raises one PlatformError listing every bad item; nothing is returned half-checked.
    """
    known = [*known_classes, *existing]
    seen_classes = set(known)
    wanted: dict[str, str] = {}
    new_classes: list[str] = []
    errors: list[str] = []
    for index, item in enumerate(items, start=1):
        sha = item.get("sha256") if isinstance(item, dict) else None
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            errors.append(f"item {index}: sha256 must be 64 lowercase hex digits")
            continue
        try:
            label = canonical_label(item.get("label"), known)
        except PlatformError as exc:
            errors.append(f"image {sha[:12]}: {exc}")
            continue
        if wanted.setdefault(sha, label) != label:
            errors.append(f"image {sha[:12]}: listed twice with different labels")
        if label not in seen_classes:
            seen_classes.add(label)
            known.append(label)
            new_classes.append(label)
    if errors:
        more = f" (and {len(errors) - _MAX_LISTED} more)" if len(errors) > _MAX_LISTED else ""
        raise PlatformError(f"Nothing saved; {len(errors)} invalid item(s): " + "; ".join(errors[:_MAX_LISTED]) + more)
    return wanted, new_classes


def partition_items(items: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """Split label items into those that can be saved and those that cannot, each with its reason.

    Checks the sha256 format and the label rules one item at a time (case mapping onto known classes is
    left to :meth:`LabelStore.save_labels`); an image listed twice with different labels is rejected both
    times. Rejected items are ``{"sha256", "label", "error"}`` (the label cut to 80 characters).
    """
    good: list[dict] = []
    rejected: list[dict] = []
    labels_by_sha: dict[str, set[str]] = {}
    for index, item in enumerate(items, start=1):
        sha = item.get("sha256") if isinstance(item, dict) else None
        raw = item.get("label") if isinstance(item, dict) else None
        shown = raw[:80] if isinstance(raw, str) else raw
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            rejected.append({"sha256": sha, "label": shown, "error": f"item {index}: sha256 must be 64 lowercase hex digits"})
            continue
        try:
            label = normalize_label(raw)
        except PlatformError as exc:
            rejected.append({"sha256": sha, "label": shown, "error": f"image {sha[:12]}: {exc}"})
            continue
        labels_by_sha.setdefault(sha, set()).add(label.casefold())
        good.append({"sha256": sha, "label": label})
    twice = {sha for sha, labels in labels_by_sha.items() if len(labels) > 1}
    rejected += [{"sha256": i["sha256"], "label": i["label"], "error": f"image {i['sha256'][:12]}: listed twice with different labels"}
                 for i in good if i["sha256"] in twice]
    good = list({i["sha256"]: i for i in good if i["sha256"] not in twice}.values())
    return good, rejected


def nothing_saved(rejected: list[dict]) -> PlatformError:
    """The error for a save in which no item could be saved, listing why."""
    more = f" (and {len(rejected) - _MAX_LISTED} more)" if len(rejected) > _MAX_LISTED else ""
    return PlatformError(f"Nothing saved; {len(rejected)} invalid item(s): "
                         + "; ".join(r["error"] for r in rejected[:_MAX_LISTED]) + more)


def json_safe(value: Any) -> Any:
    """``value`` with datetimes as ISO 8601 strings and ObjectIds as hex strings, recursively."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def label_row(doc: dict) -> dict:
    """A ``labels`` document as the editor and ``/labels`` see it: ``{sha256, label, state, revision, updated_by,
    updated_at}``; state "untouched" (reverted), "confirmed" (the prediction when saved) or "corrected"."""
    label = doc.get("label")
    state = "untouched" if label is None else "confirmed" if label == doc.get("predicted") else "corrected"
    updated = doc.get("updated")
    return {"sha256": doc["_id"], "label": label, "state": state, "revision": doc.get("revision", 0),
            "updated_by": doc.get("user"), "updated_at": updated.isoformat() if updated else None}


def no_label_row(sha256: str) -> dict:
    """The row of an image that never had a human label."""
    return {"sha256": sha256, "label": None, "state": "untouched", "revision": 0, "updated_by": None, "updated_at": None}
