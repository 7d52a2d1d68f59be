"""Turn a predicted batch into what the page shows: gallery items, the label editor table, summaries."""
from __future__ import annotations

import pandas as pd

from settings import PlatformError

COLUMNS = ["#", "file", "predicted", "confidence", "top-3", "flag", "label", "select"]
DATATYPES = ["number", "str", "str", "number", "str", "str", "str", "bool"]
LABEL_COL, SELECT_COL = COLUMNS.index("label"), COLUMNS.index("select")
SORTS = ["upload order", "lowest confidence first", "by predicted class"]


def _caption(r: dict, threshold: float) -> str:
    if r.get("label") is None:
        return "no model yet"
    mark = "⚠ " if r["confidence"] < threshold else ""
    return f"{mark}{r['label']} · {r['confidence']:.0%}"


def order(results: list[dict], sort: str, class_filter: str | None) -> list[int]:
    """Indices of the rows to show, filtered by predicted class and sorted as asked."""
    idx = [i for i, r in enumerate(results) if not class_filter or class_filter == "all" or r.get("label") == class_filter]
    if sort == SORTS[1]:
        idx.sort(key=lambda i: results[i].get("confidence") if results[i].get("confidence") is not None else -1)
    elif sort == SORTS[2]:
        idx.sort(key=lambda i: (results[i].get("label") or "", -(results[i].get("confidence") or 0)))
    return idx


def gallery(results: list[dict], sort: str, class_filter: str | None, threshold: float) -> list[tuple[str, str]]:
    return [(results[i]["thumbnail"], _caption(results[i], threshold)) for i in order(results, sort, class_filter)]


def table(results: list[dict], sort: str, class_filter: str | None, threshold: float,
          labels: dict[str, str] | None = None) -> pd.DataFrame:
    """The editor rows; ``labels`` (sha256 → label) keeps edits and saved labels across re-sorting."""
    labels = labels or {}
    rows = []
    for i in order(results, sort, class_filter):
        r = results[i]
        conf = r.get("confidence")
        low = conf is not None and conf < threshold
        top3 = ", ".join(f"{t['label']} {t['score']:.0%}" for t in r.get("top_k", [])[:3])
        rows.append([i + 1, r["file"], r.get("label") or "—", round(conf, 4) if conf is not None else None, top3,
                     "⚠ low" if low else "", labels.get(r["sha256"], r.get("label") or ""), False])
    return pd.DataFrame(rows, columns=COLUMNS)


def edited_labels(frame: pd.DataFrame | None, results: list[dict], only_changed: bool = False) -> dict[str, str]:
    """sha256 → label typed in the editor (rows with an empty label are left out; with ``only_changed``,
    so are rows whose label is still the prediction)."""
    out = {}
    if frame is None or len(frame) == 0:
        return out
    for _, row in frame.iterrows():
        try:
            index = int(row["#"]) - 1
        except (TypeError, ValueError):
            continue
        if 0 <= index < len(results):
            label = str(row["label"] if row["label"] is not None else "").strip()
            if label and label != "—" and not (only_changed and label == results[index].get("label")):
                out[results[index]["sha256"]] = label
    return out


def bulk_assign(frame: pd.DataFrame, label: str, only_low: bool) -> pd.DataFrame:
    """Set ``label`` on the selected rows (or on every low-confidence row)."""
    label = (label or "").strip()
    if not label:
        raise PlatformError("Choose or type a class to assign first")
    frame = frame.copy()
    mask = frame["flag"].astype(str).str.startswith("⚠") if only_low else frame["select"].astype(bool)
    if not mask.any():
        raise PlatformError("No rows are selected: tick the 'select' column of the rows to change"
                            if not only_low else "No row is below the confidence threshold")
    frame.loc[mask, "label"] = label
    frame.loc[mask, "select"] = False
    return frame


def batch_accuracy(results: list[dict], saved: dict[str, str]) -> tuple[str, list[str], list[str]]:
    """Accuracy of the model on the labelled part of the batch, and the (human, predicted) pairs."""
    pairs = [(saved[r["sha256"]], r["label"]) for r in results if r["sha256"] in saved and r.get("label")]
    if not pairs:
        return "Save labels to see the model's accuracy on this batch.", [], []
    correct = sum(h == p for h, p in pairs)
    text = f"**Accuracy on this batch:** {correct}/{len(pairs)} = {correct / len(pairs):.1%} (labelled images only)"
    return text, [h for h, _ in pairs], [p for _, p in pairs]


def summary(result: dict, threshold: float) -> str:
    rows = result["results"]
    low = sum(1 for r in rows if r.get("confidence") is not None and r["confidence"] < threshold)
    parts = [f"**{len(rows)} images** predicted by **{result['model_version'] or 'no model yet'}**"]
    if result["model_version"]:
        parts.append(f"{low} below the {threshold:.0%} confidence threshold")
    if result["errors"]:
        parts.append(f"{len(result['errors'])} skipped: " + "; ".join(e["error"] for e in result["errors"][:5])
                     + (" …" if len(result["errors"]) > 5 else ""))
    if result.get("store_error"):
        parts.append(f"⚠ {result['store_error']}")
    return " · ".join(parts)


def upload_count(files: list) -> str:
    """A one-line account of an upload ("**128 files** ready"), instead of a list as long as the upload."""
    if not files:
        return ""
    zips = sum(1 for f in files if str(getattr(f, "name", f)).lower().endswith(".zip"))
    return f"**{len(files)} file{'s' if len(files) != 1 else ''}**" + (f" ({zips} .zip)" if zips else "") + " uploaded"
