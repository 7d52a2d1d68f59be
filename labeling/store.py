"""The labelling store: images, predictions, batches and human labels in MongoDB.

Every write that must survive a crash uses write concern ``w="majority", j=True``: the
call returns only after the server has journaled it (on a standalone server or the
embedded one "majority" is the server itself). A label save is one conditional update of
the image's ``labels`` document (compare-and-set on its ``revision``), so concurrent saves
are serialised and the last one to commit wins; its history row has a deterministic id
(``<sha256>:<revision>``) so writing it again after a crash or a retry never duplicates it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from gridfs import GridFSBucket
from pymongo import DESCENDING, WriteConcern
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from labeling import blobs, schema
from labeling.connection import Connection, connect, connection_error
from labeling.records import image_info, json_safe, label_row, no_label_row, prediction_doc, validate_items
from settings import PlatformError, Settings

logger = logging.getLogger(__name__)

DURABLE = WriteConcern(w="majority", j=True)
"""Acknowledged only once journaled: survives a SIGKILL of the server process."""
_FAST = WriteConcern(w=1)
"""For bookkeeping writes that a later call repeats if lost."""
IMAGE_SOURCES = ("upload", "folder", "dataset")
DECISIONS = ("remove", "keep", "clear")
"""Audit decisions: exclude from training, reviewed and kept, neither (an undo)."""
_CHUNK = 500
"""Documents fetched per ``$in`` query when joining labels with images."""
_HAS_LABEL = {"label": {"$type": "string"}}
"""Label documents that hold a human label (a revert leaves the document with label None, keeping its revision)."""


@dataclass(frozen=True)
class LabelledImage:
    """One image with a current human label; ``read()`` fetches its bytes from GridFS."""

    sha256: str
    label: str
    name: str
    _reader: Callable[[], bytes] = field(repr=False, compare=False)

    def read(self) -> bytes:
        """The image file's bytes, read from the database now."""
        return self._reader()

    def __iter__(self) -> Iterator[Any]:
        """Unpack as ``sha256, label, name, read``."""
        return iter((self.sha256, self.label, self.name, self.read))


def _guarded(method: Callable) -> Callable:
    """Turn driver errors of a store method into a PlatformError naming the host only.

    On a borrowed embedded server (started by another process that has since exited) the
    store reconnects once, starting its own server, and repeats the call: label saves and
    image adds are idempotent; a repeated ``record_batch`` at worst records the batch twice.
    """

    @functools.wraps(method)
    def wrapper(self: "LabelStore", *args: Any, **kwargs: Any) -> Any:
        connection = self._connection
        try:
            return method(self, *args, **kwargs)
        except ConnectionFailure as exc:
            if not self._reconnect(connection, exc):
                raise connection_error(exc, self.hosts) from None
        except PyMongoError as exc:
            raise connection_error(exc, self.hosts) from None
        try:
            return method(self, *args, **kwargs)
        except PyMongoError as exc:
            raise connection_error(exc, self.hosts) from None

    return wrapper


def new_batch_id() -> str:
    """A fresh batch id (UTC time, then 12 random hex digits), as :meth:`Store.record_batch` makes them."""
    return f"{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class LabelStore:
    """Images, predictions and human labels of the platform; thread-safe (one client per store)."""

    def __init__(
        self,
        connection: Connection,
        database: str,
        max_batch: int = 128,
        reconnect: Callable[[], Connection] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self._database = database
        self._reconnect_with = reconnect
        self._reconnect_lock = threading.Lock()
        self._closed = False
        self._attach(connection)

    def _attach(self, connection: Connection) -> None:
        self._connection = connection
        self.hosts = connection.hosts
        self._db = connection.client.get_database(self._database, write_concern=DURABLE)
        self._fs = GridFSBucket(self._db, bucket_name=schema.GRIDFS_BUCKET)

    def _reconnect(self, failed: Connection, exc: BaseException) -> bool:
        """After ``failed`` (a borrowed embedded server) broke, open the database anew; False if not applicable."""
        if self._closed or not failed.borrowed or self._reconnect_with is None:
            return False
        with self._reconnect_lock:
            if self._connection is failed:  # another thread may have reconnected already
                logger.warning("the embedded database at %s went away (%s); reopening it", self.hosts, type(exc).__name__)
                self._attach(self._reconnect_with())
                # Closing a client whose server vanished waits seconds for its monitor threads.
                threading.Thread(target=failed.close, name="labeling-close-stale-client", daemon=True).start()
        return True

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client; stop the embedded server if this process started it."""
        if not self._closed:
            self._closed = True
            self._connection.close()

    @_guarded
    def ping(self) -> None:
        """Raise PlatformError unless the database answers."""
        self._db.client.admin.command("ping")

    @_guarded
    def prepare(self) -> None:
        """Create indexes, check the schema version and finish history rows a crash left pending."""
        schema.ensure_schema(self._db)
        for doc in self._db[schema.LABELS].find({"history_pending": True}, {"last_change": 1}):
            self._write_history(doc["last_change"])

    # Images, batches, predictions -------------------------------------------------------

    @_guarded
    def add_images(self, images: Iterable[Any], source: str = "upload") -> None:
        """Store each image (``.sha256``, ``.data`` bytes, ``.name``) once; known sha256s are skipped."""
        if source not in IMAGE_SOURCES:
            raise PlatformError(f"Image source must be one of {', '.join(IMAGE_SOURCES)}, got {source!r}")
        pending = {}
        for image in images:
            data = bytes(image.data)
            if hashlib.sha256(data).hexdigest() != image.sha256:
                raise PlatformError(f"Image {str(image.name)[:80]!r}: sha256 does not match its bytes")
            pending.setdefault(image.sha256, (data, str(image.name or "")))
        known = {d["_id"] for d in self._db[schema.IMAGES].find({"_id": {"$in": list(pending)}}, {"_id": 1})}
        for sha, (data, name) in pending.items():
            if sha not in known:
                self._insert_image(sha, data, name, source)

    def _insert_image(self, sha: str, data: bytes, name: str, source: str) -> None:
        # Written unjournaled; the journaled ``images`` insert that follows flushes the journal (and, on
        # replica sets, waits for the oplog) up to and including them.
        file_id = blobs.put(self._db, schema.GRIDFS_BUCKET, data, sha, {"sha256": sha}, _FAST)
        doc = {"_id": sha, "file_id": file_id, "name": name[:1024], "size": len(data), **image_info(data)}
        doc.update(first_seen=_now(), source=source)
        try:
            self._db[schema.IMAGES].insert_one(doc)
        except DuplicateKeyError:
            # Another writer stored the same image meanwhile; keep theirs, drop our copy.
            self._fs.delete(file_id)

    @_guarded
    def record_batch(self, shas: list[str], predictions: list[dict] | None = None, batch_id: str | None = None) -> str:
        """Record an upload of up to ``max_batch`` known images and their predictions; return the batch id
        (``batch_id`` when given, from :func:`new_batch_id`: the id a response already carries).

        Predictions are dicts ``{sha256, label, confidence (0-1), top_k: [{label, score}], model_version}``
        (extra keys are ignored; a None label means "not predicted" and is not stored).
        """
        shas = list(dict.fromkeys(shas))
        if not shas or len(shas) > self.max_batch:
            raise PlatformError(f"A batch holds 1 to {self.max_batch} images, got {len(shas)}")
        self._require_images(shas)
        batch_id = batch_id or new_batch_id()
        # Rows without a label come from an app with no trained model yet: nothing was predicted.
        docs = [prediction_doc(p, batch_id, _now(), set(shas)) for p in predictions or [] if p.get("label") is not None]
        if docs:
            self._db[schema.PREDICTIONS].insert_many(docs)
        state = "predicted" if docs else "uploaded"
        self._db[schema.BATCHES].insert_one({"_id": batch_id, "shas": shas, "created": _now(), "state": state})
        return batch_id

    def _require_images(self, shas: list[str]) -> None:
        found = {d["_id"] for d in self._db[schema.IMAGES].find({"_id": {"$in": shas}}, {"_id": 1})}
        unknown = [s for s in shas if s not in found]
        if unknown:
            shown = ", ".join(str(s)[:16] for s in unknown[:5])
            raise PlatformError(f"{len(unknown)} image(s) are not in the store (add them first): {shown}")

    @_guarded
    def image_bytes(self, sha256: str) -> bytes:
        """The bytes of a stored image; PlatformError if unknown."""
        doc = self._db[schema.IMAGES].find_one({"_id": sha256}, {"file_id": 1})
        if doc is None:
            raise PlatformError(f"Image {str(sha256)[:16]} is not in the store")
        return self._read_file(doc["file_id"])

    @_guarded
    def _read_file(self, file_id: Any) -> bytes:
        return self._fs.open_download_stream(file_id).read()

    # Labels ---------------------------------------------------------------------------

    @_guarded
    def save_labels(self, items: list[dict], user: str = "anonymous", known_classes: Iterable[str] = ()) -> dict:
        """Save human labels ``[{"sha256", "label"}]``; returns ``{"saved", "unchanged", "new_classes", "labels"}``
        where ``labels`` maps each sha256 to the label as stored (normalised, case mapped to a known class).

        Validates everything first (nothing is written if a label is invalid or an image is
        unknown), maps case-only variants onto known spellings, and returns only after every
        change is journaled. Saving the label an image already has changes nothing.
        """
        known_classes = list(known_classes)
        existing = [x for x in self._db[schema.LABELS].distinct("label", _HAS_LABEL) if isinstance(x, str)]
        wanted, new_classes = validate_items(items, known_classes, existing)
        self._require_images(list(wanted))
        user = str(user or "").strip()[:128] or "anonymous"
        predicted = self._latest_predictions(list(wanted))
        saved = 0
        for sha, label in wanted.items():
            saved += self._apply_label(sha, label, user, predicted.get(sha, {}))
        self._refresh_batch_states(list(wanted))
        logger.info("saved %d label(s) by %s, %d unchanged", saved, user, len(wanted) - saved)
        return {"saved": saved, "unchanged": len(wanted) - saved, "new_classes": new_classes, "labels": dict(wanted)}

    def _latest_predictions(self, shas: list[str]) -> dict[str, dict]:
        pipeline = [
            {"$match": {"sha256": {"$in": shas}}},
            {"$sort": {"time": DESCENDING}},
            {"$group": {"_id": "$sha256", "model_version": {"$first": "$model_version"}, "label": {"$first": "$label"}}},
        ]
        return {d["_id"]: d for d in self._db[schema.PREDICTIONS].aggregate(pipeline)}

    def _apply_label(self, sha: str, label: str, user: str, prediction: dict) -> bool:
        """Compare-and-set the image's label; True if it changed (or was first confirmed)."""
        while True:
            current = self._current_label_doc(sha)
            if current is not None and current["label"] == label:
                return False
            if self._commit_label(sha, current, label, user, prediction) is not None:
                return True
            # Another writer committed in between: read again; the later commit wins.

    def _current_label_doc(self, sha: str) -> dict | None:
        """The image's label document (label None after a revert), its pending history row written first."""
        current = self._db[schema.LABELS].find_one({"_id": sha})
        if current is not None and current.get("history_pending"):
            self._write_history(current["last_change"])
        return current

    def _commit_label(self, sha: str, current: dict | None, label: str | None, user: str, prediction: dict) -> dict | None:
        """One compare-and-set of ``current`` to ``label`` (None: no human label); the change, or None if
        another writer committed since ``current`` was read."""
        labels = self._db[schema.LABELS]
        revision = (current or {}).get("revision", 0) + 1
        now = _now()
        change = {
            "_id": f"{sha}:{revision}", "sha256": sha, "revision": revision,
            "previous": current["label"] if current else None, "label": label,
            "model_version": prediction.get("model_version"), "predicted": prediction.get("label"),
            "user": user, "time": now,
        }
        fields = {k: change[k] for k in ("label", "revision", "model_version", "predicted", "user")}
        fields.update(updated=now, last_change=change, history_pending=True)
        if current is None:
            try:
                labels.insert_one({"_id": sha, **fields})
            except DuplicateKeyError:
                return None
        elif not labels.update_one({"_id": sha, "revision": current["revision"]}, {"$set": fields}).matched_count:
            return None
        self._write_history(change)
        return change

    def _write_history(self, change: dict) -> None:
        """Insert a history row (idempotent by its id) and clear the label doc's pending flag."""
        with contextlib.suppress(DuplicateKeyError):
            self._db[schema.HISTORY].insert_one(dict(change))
        self._db[schema.LABELS].with_options(write_concern=_FAST).update_one(
            {"_id": change["sha256"], "revision": change["revision"]},
            {"$unset": {"history_pending": "", "last_change": ""}},
        )

    def _refresh_batch_states(self, shas: list[str]) -> None:
        """Mark batches whose images all have a human label as ``labelled``."""
        batches = self._db[schema.BATCHES]
        for batch in batches.find({"shas": {"$in": shas}, "state": {"$ne": "labelled"}}, {"shas": 1}):
            labelled = self._db[schema.LABELS].count_documents({"_id": {"$in": batch["shas"]}, **_HAS_LABEL})
            if labelled == len(batch["shas"]):
                batches.with_options(write_concern=_FAST).update_one({"_id": batch["_id"]}, {"$set": {"state": "labelled"}})

    @_guarded
    def set_label(self, sha256: str, label: str | None, user: str = "anonymous", expected_revision: int | None = None,
                  known_classes: Iterable[str] = ()) -> dict:
        """Set (``label`` None: revert to no human label) one image's label as one person's edit.

        ``expected_revision`` is the revision the editor last saw (0: none); if another writer has committed
        since, nothing is written and the result says ``"conflict"`` with the current state. Returns
        :meth:`label_states`' row plus ``status`` ("saved", "unchanged", "conflict") and ``new_class``.
        """
        new_classes: list[str] = []
        if label is not None:
            existing = [x for x in self._db[schema.LABELS].distinct("label", _HAS_LABEL) if isinstance(x, str)]
            wanted, new_classes = validate_items([{"sha256": sha256, "label": label}], list(known_classes), existing)
            label = wanted[sha256]
        self._require_images([sha256])
        user = str(user or "").strip()[:128] or "anonymous"
        current = self._current_label_doc(sha256)
        if expected_revision is not None and (current or {}).get("revision", 0) != int(expected_revision):
            status = "conflict"
        elif (current or {}).get("label") == label:
            status = "unchanged"
        else:
            prediction = self._latest_predictions([sha256]).get(sha256, {})
            change = self._commit_label(sha256, current, label, user, prediction)
            status = "saved" if change is not None else "conflict"
            if change is not None and label is not None:
                self._refresh_batch_states([sha256])
        row = self.label_states([sha256], include_reverted=True).get(sha256) or no_label_row(sha256)
        return dict(row, status=status, new_class=new_classes[0] if new_classes and status == "saved" else None)

    @_guarded
    def label_states(self, shas: Iterable[str] | None = None, include_reverted: bool = False) -> dict[str, dict]:
        """``{sha256: {sha256, label, state, revision, updated_by, updated_at}}`` for images with a human label
        (``shas`` None: all of them). ``state`` is "confirmed" when the label is what the model predicted when it
        was saved, else "corrected"; with ``include_reverted``, reverted images come too (label None, state
        "untouched") so an editor knows their revision."""
        query = {} if include_reverted else dict(_HAS_LABEL)
        if shas is not None:
            query["_id"] = {"$in": list(shas)}
        fields = {"label": 1, "revision": 1, "user": 1, "updated": 1, "predicted": 1}
        return {d["_id"]: label_row(d) for d in self._db[schema.LABELS].find(query, fields)}

    @_guarded
    def batch_predictions(self, batch_id: str) -> list[dict]:
        """A recorded batch in upload order: ``{sha256, file, label, confidence, top_k, model_version}`` per image
        (label None when nothing was predicted); PlatformError if the batch is unknown."""
        batch = self._db[schema.BATCHES].find_one({"_id": str(batch_id)}, {"shas": 1})
        if batch is None:
            raise PlatformError("That batch is not in the store any more: upload the images again")
        shas = batch["shas"]
        predicted = {d["sha256"]: d for d in self._db[schema.PREDICTIONS].find({"batch_id": batch["_id"]})}
        names = {d["_id"]: d.get("name") for d in self._db[schema.IMAGES].find({"_id": {"$in": shas}}, {"name": 1})}
        return [{"sha256": sha, "file": names.get(sha) or sha[:12], "label": predicted.get(sha, {}).get("label"),
                 "confidence": predicted.get(sha, {}).get("confidence"), "top_k": predicted.get(sha, {}).get("top_k") or [],
                 "model_version": predicted.get(sha, {}).get("model_version")} for sha in shas]

    @_guarded
    def predictions_of(self, sha256: str, limit: int = 20) -> list[dict]:
        """The image's predictions, newest first: ``{model_version, label, confidence, top_k, time}`` (JSON-safe)."""
        cursor = self._db[schema.PREDICTIONS].find({"sha256": sha256}, {"_id": 0, "batch_id": 0, "sha256": 0})
        return [json_safe(d) for d in cursor.sort("time", DESCENDING).limit(max(1, min(int(limit), 1000)))]

    @_guarded
    def current_labels(self) -> dict[str, str]:
        """``{sha256: human label}`` for every labelled image."""
        return {d["_id"]: d["label"] for d in self._db[schema.LABELS].find(_HAS_LABEL, {"label": 1})}

    @_guarded
    def known_images(self, shas: list[str]) -> set[str]:
        """Which of ``shas`` are stored images."""
        return {d["_id"] for d in self._db[schema.IMAGES].find({"_id": {"$in": list(shas)}}, {"_id": 1})}

    @_guarded
    def count_labels(self) -> int:
        """How many images have a human label."""
        return self._db[schema.LABELS].count_documents(_HAS_LABEL)

    def labelled_samples(self) -> Iterator[LabelledImage]:
        """Every image with a current human label, in sha256 order; bytes are read lazily."""
        try:
            # Label docs are small: read them all up front so no server cursor idles out
            # while a slow consumer (training) works through the images.
            labels = list(self._db[schema.LABELS].find(_HAS_LABEL, {"label": 1}).sort("_id", 1))
            for start in range(0, len(labels), _CHUNK):
                yield from self._join_images(labels[start : start + _CHUNK])
        except PyMongoError as exc:
            raise connection_error(exc, self.hosts) from None

    def _join_images(self, labels: list[dict]) -> Iterator[LabelledImage]:
        shas = [d["_id"] for d in labels]
        images = {d["_id"]: d for d in self._db[schema.IMAGES].find({"_id": {"$in": shas}}, {"name": 1, "file_id": 1})}
        for doc in labels:
            image = images.get(doc["_id"])
            if image is None:
                logger.warning("label for %s has no stored image; skipped", doc["_id"][:16])
                continue
            reader = functools.partial(self._read_file, image["file_id"])
            yield LabelledImage(doc["_id"], doc["label"], image.get("name") or doc["_id"], reader)

    @_guarded
    def history(self, sha256: str | None = None, limit: int = 100) -> list[dict]:
        """Label changes, newest first (JSON-safe: times are ISO 8601 UTC strings)."""
        query = {} if sha256 is None else {"sha256": sha256}
        limit = max(1, min(int(limit), 10_000))
        cursor = self._db[schema.HISTORY].find(query).sort([("time", DESCENDING), ("revision", DESCENDING)]).limit(limit)
        return [json_safe({k: v for k, v in doc.items() if k != "_id"}) for doc in cursor]

    @_guarded
    def stats(self) -> dict:
        """Counts per class, corrections per model version, agreement over time (JSON-safe)."""
        from labeling.stats import compute_stats

        return compute_stats(self._db)

    def export(self, out_dir: str | Path, format: str = "imagefolder") -> dict:
        """Write the labelled set to ``out_dir`` as an imagefolder tree or a saved ``datasets.Dataset``."""
        from labeling.export import export_samples

        return export_samples(self.labelled_samples(), Path(out_dir), format)

    # Audit decisions (training exclusions) ---------------------------------------------
    # "remove" excludes an image from training, "keep" marks a flagged image as reviewed, "clear" undoes
    # both. Each change is a compare-and-set on the image's decision document with its own history row,
    # exactly like a label change, so the trail is complete and every action can be undone.

    @_guarded
    def set_decisions(self, items: list[dict], user: str = "anonymous") -> dict:
        """Record ``[{"sha256", "decision": "remove"|"keep"|"clear", "reason"?, "duplicate_of"?}]`` durably;
        returns ``{"changed", "previous": {sha256: decision before (None if none)}}``."""
        wanted: dict[str, dict] = {}
        for item in items:
            decision = item.get("decision") if isinstance(item, dict) else None
            if decision not in DECISIONS:
                raise PlatformError(f"An audit decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
            wanted[str(item.get("sha256"))] = item
        if not wanted:
            raise PlatformError("No audit decisions to record")
        self._require_images(list(wanted))
        user = str(user or "").strip()[:128] or "anonymous"
        previous, changed = {}, 0
        for sha, item in wanted.items():
            before, did = self._apply_decision(sha, item, user)
            previous[sha], changed = before, changed + did
        return {"changed": changed, "previous": previous}

    def _apply_decision(self, sha: str, item: dict, user: str) -> tuple[str | None, bool]:
        docs = self._db[schema.DECISIONS]
        while True:
            current = docs.find_one({"_id": sha})
            if current is not None and current.get("history_pending"):
                self._write_decision_history(current["last_change"])
            before = current["decision"] if current else None
            if before == item["decision"] or (before is None and item["decision"] == "clear"):
                return before, False
            revision = (current or {}).get("revision", 0) + 1
            change = {"_id": f"{sha}:{revision}", "sha256": sha, "revision": revision, "previous": before,
                      "decision": item["decision"], "reason": str(item.get("reason") or "")[:200],
                      "duplicate_of": item.get("duplicate_of"), "user": user, "time": _now()}
            fields = {k: change[k] for k in ("decision", "reason", "duplicate_of", "revision", "user")}
            fields.update(updated=change["time"], last_change=change, history_pending=True)
            if current is None:
                try:
                    docs.insert_one({"_id": sha, **fields})
                    break
                except DuplicateKeyError:
                    continue
            elif docs.update_one({"_id": sha, "revision": current["revision"]}, {"$set": fields}).matched_count:
                break
        self._write_decision_history(change)
        return before, True

    def _write_decision_history(self, change: dict) -> None:
        with contextlib.suppress(DuplicateKeyError):
            self._db[schema.DECISION_HISTORY].insert_one(dict(change))
        self._db[schema.DECISIONS].with_options(write_concern=_FAST).update_one(
            {"_id": change["sha256"], "revision": change["revision"]},
            {"$unset": {"history_pending": "", "last_change": ""}})

    @_guarded
    def decisions(self) -> dict[str, str]:
        """``{sha256: "remove"|"keep"}`` for every image with a standing audit decision."""
        return {d["_id"]: d["decision"] for d in self._db[schema.DECISIONS].find({"decision": {"$ne": "clear"}}, {"decision": 1})}

    def excluded(self) -> set[str]:
        """The sha256s a person removed from training."""
        return {sha for sha, decision in self.decisions().items() if decision == "remove"}

    @_guarded
    def decision_history(self, sha256: str | None = None, limit: int = 100) -> list[dict]:
        """Audit decisions, newest first (JSON-safe)."""
        query = {} if sha256 is None else {"sha256": sha256}
        cursor = self._db[schema.DECISION_HISTORY].find(query).sort([("time", DESCENDING), ("revision", DESCENDING)])
        return [json_safe({k: v for k, v in doc.items() if k != "_id"}) for doc in cursor.limit(max(1, min(int(limit), 10_000)))]


def open_store(settings: Settings) -> LabelStore:
    """Open the labelling store on ``settings.mongodb_uri`` or the embedded server under ``settings.db_dir``."""
    connection = connect(settings)
    try:
        database = connection.client.get_default_database(default=schema.DATABASE_NAME).name
        store = LabelStore(connection, database, max_batch=settings.max_batch, reconnect=lambda: connect(settings))
        store.prepare()
    except BaseException:
        connection.close()
        raise
    return store
