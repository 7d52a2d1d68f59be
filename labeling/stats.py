"""Statistics for the UI, computed with aggregation pipelines on the server.

Every human decision (one ``label_history`` row) made while a prediction existed is either
a *confirmation* (the human chose the predicted label) or a *correction* (another label);
decisions on images never predicted count as ``without_prediction``. Agreement is
confirmations / (confirmations + corrections), a 0-1 fraction, None when undefined.
"""
from __future__ import annotations

from pymongo.database import Database

from labeling import schema

_DECISIONS = {
    "decisions": {"$sum": 1},
    "confirmations": {"$sum": {"$cond": [{"$and": [{"$ne": ["$predicted", None]}, {"$eq": ["$label", "$predicted"]}]}, 1, 0]}},
    "corrections": {"$sum": {"$cond": [{"$and": [{"$ne": ["$predicted", None]}, {"$ne": ["$label", "$predicted"]}]}, 1, 0]}},
}


def compute_stats(db: Database) -> dict:
    """JSON-safe summary: image/label counts, labels per class, decisions per model version and per day."""
    per_class = {
        d["_id"]: d["n"]
        for d in db[schema.LABELS].aggregate([{"$group": {"_id": "$label", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}])
    }
    batches = {d["_id"]: d["n"] for d in db[schema.BATCHES].aggregate([{"$group": {"_id": "$state", "n": {"$sum": 1}}}])}
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "images": db[schema.IMAGES].count_documents({}),
        "labelled_images": sum(per_class.values()),
        "per_class": per_class,
        "batches": batches,
        "by_model_version": _by_model_version(db),
        "agreement_by_day": _agreement_by_day(db),
    }


def _rate(row: dict) -> float | None:
    checked = row["confirmations"] + row["corrections"]
    return round(row["confirmations"] / checked, 4) if checked else None


def _by_model_version(db: Database) -> list[dict]:
    """One row per model version: decisions, confirmations, corrections, without_prediction, agreement."""
    rows = db[schema.HISTORY].aggregate([{"$group": {"_id": "$model_version", **_DECISIONS}}])
    result = []
    for row in rows:
        result.append(
            {
                "model_version": row["_id"],
                "decisions": row["decisions"],
                "confirmations": row["confirmations"],
                "corrections": row["corrections"],
                "without_prediction": row["decisions"] - row["confirmations"] - row["corrections"],
                "agreement": _rate(row),
            }
        )
    return sorted(result, key=lambda r: (r["model_version"] is None, str(r["model_version"])))


def _agreement_by_day(db: Database) -> list[dict]:
    """Agreement of each model version with human decisions per UTC day (``YYYY-MM-DD``)."""
    day = {"$dateToString": {"format": "%Y-%m-%d", "date": "$time"}}
    pipeline = [
        {"$match": {"predicted": {"$ne": None}}},
        {"$group": {"_id": {"day": day, "model_version": "$model_version"}, **_DECISIONS}},
    ]
    result = [
        {
            "day": row["_id"]["day"],
            "model_version": row["_id"]["model_version"],
            "confirmations": row["confirmations"],
            "corrections": row["corrections"],
            "agreement": _rate(row),
        }
        for row in db[schema.HISTORY].aggregate(pipeline)
    ]
    return sorted(result, key=lambda r: (r["day"], str(r["model_version"])))
