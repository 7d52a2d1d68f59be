"""Collections, indexes and the schema version of the labelling database.

Documents (times are UTC datetimes):

- ``images``: ``_id`` sha256 hex, ``file_id`` (GridFS id of the bytes), ``name`` (original
  file name, data only), ``size`` (bytes), ``format``/``width``/``height`` (pixels; None when
  PIL cannot read it), ``first_seen``, ``source`` ("upload", "folder", "dataset").
- ``predictions``: ``sha256``, ``model_version``, ``label``, ``confidence`` (0-1), ``top_k``
  (list of ``{label, score}``), ``time``, ``batch_id``.
- ``labels``: ``_id`` sha256, ``label`` (current human label), ``revision`` (1, 2, ... per
  image), ``user``, ``updated``, ``model_version``/``predicted`` at that time, and
  ``last_change`` / ``history_pending`` until its history row is written.
- ``label_history``: append-only, ``_id`` "<sha256>:<revision>", ``sha256``, ``revision``,
  ``previous`` (label before, None for the first), ``label``, ``model_version``,
  ``predicted``, ``user``, ``time``.
- ``batches``: ``_id`` batch id, ``shas``, ``created``, ``state`` ("uploaded", "predicted",
  "labelled").
- ``audit_decisions``: ``_id`` sha256, ``decision`` ("remove": excluded from training; "keep": reviewed,
  not an issue; "clear": neither, after an undo), ``reason``, ``duplicate_of`` (sha256 kept in its
  duplicate set, or None), ``revision``, ``user``, ``updated``; ``last_change`` / ``history_pending`` as
  for ``labels``.
- ``audit_decision_history``: append-only, ``_id`` "<sha256>:<revision>", ``sha256``, ``revision``,
  ``previous`` (decision before, None for the first), ``decision``, ``reason``, ``duplicate_of``,
  ``user``, ``time``.
- ``meta``: ``{"_id": "schema", "schema_version": 1}``.
"""
from __future__ import annotations

import logging

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database

from labeling import blobs
from settings import PlatformError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATABASE_NAME = "image_platform"
"""Database used when the MongoDB URI names none."""

IMAGES = "images"
PREDICTIONS = "predictions"
LABELS = "labels"
HISTORY = "label_history"
BATCHES = "batches"
META = "meta"
DECISIONS = "audit_decisions"
DECISION_HISTORY = "audit_decision_history"
GRIDFS_BUCKET = "image_bytes"

_INDEXES = {
    IMAGES: [[("first_seen", DESCENDING)], [("source", ASCENDING)]],
    PREDICTIONS: [[("sha256", ASCENDING), ("time", DESCENDING)], [("batch_id", ASCENDING)], [("model_version", ASCENDING)]],
    LABELS: [[("label", ASCENDING)], [("updated", DESCENDING)], [("history_pending", ASCENDING)]],
    HISTORY: [[("sha256", ASCENDING), ("revision", DESCENDING)], [("time", DESCENDING)], [("model_version", ASCENDING)]],
    BATCHES: [[("created", DESCENDING)], [("shas", ASCENDING)], [("state", ASCENDING)]],
    DECISIONS: [[("decision", ASCENDING)], [("history_pending", ASCENDING)]],
    DECISION_HISTORY: [[("sha256", ASCENDING), ("revision", DESCENDING)], [("time", DESCENDING)]],
}


def ensure_schema(db: Database) -> None:
    """Create the indexes and the ``meta`` schema document; refuse a newer schema than this code."""
    meta = db[META].find_one({"_id": "schema"})
    if meta is None:
        db[META].update_one({"_id": "schema"}, {"$setOnInsert": {"schema_version": SCHEMA_VERSION}}, upsert=True)
        meta = db[META].find_one({"_id": "schema"}) or {}
    version = meta.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise PlatformError(
            f"The labelling database has schema version {version!r}; this code understands up to "
            f"{SCHEMA_VERSION}. Upgrade the platform before opening it."
        )
    for collection, indexes in _INDEXES.items():
        for keys in indexes:
            db[collection].create_index(keys)
    blobs.ensure_indexes(db, GRIDFS_BUCKET)
    logger.debug("schema version %s ready", version)
