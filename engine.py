"""The narrow interface between the UI/CLIs and the platform: predict a batch, save labels, train,
list/activate versions, status. It knows nothing of Gradio; the app is a thin adapter over it.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable

from classifier.images import decode, save_thumbnail
from classifier.live import LiveModel
from classifier.registry import LocalRegistry
from classifier.uploads import expand_uploads
from settings import PlatformError, Settings
from training.config import TrainConfig
from training.data import LoadedData, Sample, load_samples, merge_samples
from training.jobs import TrainingJobs
from training.run import train_version

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


def on_gpu_when_available(fn: Callable, duration_s: int = 900) -> Callable:
    """Run ``fn`` inside ``spaces.GPU`` on a ZeroGPU Space (the decorator is a no-op elsewhere);
    without the ``spaces`` package, ``fn`` runs as it is, on the CPU."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration_s)(fn)


def _human_samples(store) -> list[Sample]:
    return [Sample(li.sha256, li.label, li.name, li.read) for li in store.labelled_samples()]


def _load_base(settings: Settings, data: str | None) -> LoadedData:
    return load_samples(data) if data else LoadedData([])


class Engine:
    """One per process: owns the registry, the live model, the training worker and the store connection."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = LocalRegistry(settings.models_dir)
        self.registry.clean_staging()
        self.live = LiveModel(self.registry, settings)
        self.jobs = TrainingJobs(self._run_training)
        self._train = on_gpu_when_available(train_version)
        self._store = None
        self._store_lock = threading.Lock()
        self.store_error: str | None = None
        self.thumbs_dir = settings.data_dir / "thumbs"
        self.publisher = None
        self.journal = None
        if settings.hub_model_id:
            from classifier.publish import ModelPublisher
            self.publisher = ModelPublisher(settings, self.registry, self.live)
        if settings.hub_dataset_id:
            from labeling.journal import LabelJournal
            self.journal = LabelJournal(settings.data_dir / "journal", settings.hub_dataset_id, settings.hf_token,
                                        endpoint=settings.hub_endpoint)

    def start(self) -> None:
        """Before serving: follow the Hub's active version and replay the Hub label journal into an empty
        database. Failures are reported in ``status()`` and never stop the app."""
        if self.publisher is not None:
            self.publisher.sync()
        try:
            self.store()  # opened (and later closed) by this thread, as the embedded server prefers
        except PlatformError as exc:
            log.warning("%s", exc)
        if self.journal is not None:
            try:
                replay_journal(self.journal, self.store())
            except PlatformError as exc:
                self.store_error = f"Could not restore labels from the Hub: {exc}"
                log.warning("%s", self.store_error)

    # --- labelling store -------------------------------------------------------------------------
    def store(self):
        """The labelling store, connected on first use; an outage raises PlatformError and is retried next call."""
        with self._store_lock:
            if self._store is None:
                from labeling.store import open_store
                try:
                    self._store = open_store(self.settings)
                    self.store_error = None
                except PlatformError as exc:
                    self.store_error = str(exc)
                    raise
            return self._store

    def close(self) -> None:
        for part in (self.journal, self.publisher):
            if part is not None:
                part.close()
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # --- prediction ------------------------------------------------------------------------------
    def predict(self, sources, progress: Progress | None = None, thumbnails: bool = False) -> dict:
        """Predict uploaded files (paths, bytes, .zip archives); records images and predictions in the store.

        Returns ``{"results", "errors", "batch_id", "model_version", "store_error"}``; a store outage
        never stops predictions. With no trained version yet, results carry ``label`` None (nothing is
        invented) so the images can still be labelled. ``thumbnails`` adds a ``thumbnail`` path per result.
        """
        predictor = self.live.current()
        images, errors = expand_uploads(sources, self.settings.max_batch)
        if predictor is not None:
            results, bad = predictor.predict_batch(images, progress=progress)
        else:
            results, bad = self._unpredicted(images)
        errors += bad
        if thumbnails:
            by_sha = {i.sha256: i for i in images}
            for r in results:
                r["thumbnail"] = str(save_thumbnail(by_sha[r["sha256"]], self.thumbs_dir, self.settings.max_image_pixels))
        batch_id, store_error = None, None
        if results:
            good = {r["sha256"] for r in results}
            try:
                store = self.store()
                store.add_images([i for i in images if i.sha256 in good], source="upload")
                batch_id = store.record_batch([r["sha256"] for r in results], results)
            except PlatformError as exc:
                store_error = f"Predictions were not recorded: {exc}"
                log.warning("%s", store_error)
        return {"results": results, "errors": errors, "batch_id": batch_id,
                "model_version": predictor.version if predictor else None, "store_error": store_error}

    def _unpredicted(self, images) -> tuple[list[dict], list[dict]]:
        """Rows for images when no model exists: decodable ones, with no label."""
        results, errors = [], []
        for img in images:
            try:
                decode(img, self.settings.max_image_pixels, draft_size=64)
            except PlatformError as exc:
                errors.append({"file": img.name, "error": str(exc)})
                continue
            results.append({"file": img.name, "sha256": img.sha256, "label": None, "confidence": None,
                            "top_k": [], "model_version": None})
        return results, errors

    def classes(self) -> list[str]:
        predictor = self.live.current()
        return list(predictor.labels) if predictor else []

    # --- labels ----------------------------------------------------------------------------------
    def save_labels(self, items: list[dict], user: str = "anonymous") -> dict:
        """Save ``[{sha256, label}]`` once durably written; returns ``{saved, unchanged, new_classes, labels,
        rejected}``. A bad item (invalid label, unknown image) is skipped with its reason in ``rejected``;
        if no item can be saved, PlatformError says why and nothing is written."""
        from labeling.records import nothing_saved, partition_items

        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise PlatformError("Labels must be a list of {\"sha256\": …, \"label\": …} objects")
        if not items:
            raise PlatformError("No labels to save")
        good, rejected = partition_items(items)
        store = self.store()
        known = store.known_images([i["sha256"] for i in good]) if good else set()
        rejected += [dict(i, error=f"image {i['sha256'][:12]} is not in the store: predict it first")
                     for i in good if i["sha256"] not in known]
        good = [i for i in good if i["sha256"] in known]
        if not good:
            raise nothing_saved(rejected)
        result = store.save_labels(good, user=user, known_classes=self.classes())
        result["rejected"] = rejected
        if self.journal is not None:
            predictor = self.live.current()
            stored = result["labels"]  # as saved: normalised, case mapped onto known classes
            rows = [{"sha256": sha, "label": label, "user": user,
                     "model_version": predictor.version if predictor else None} for sha, label in stored.items()]
            self.journal.append(rows, {sha: store.image_bytes(sha) for sha in stored})
        return result

    # --- training --------------------------------------------------------------------------------
    def _run_training(self, params: dict, report: Progress, should_stop: Callable[[], bool]) -> dict:
        config = TrainConfig.from_mapping(params)
        report(0.0, "loading training data")
        base = _load_base(self.settings, self.settings.dataset)
        try:
            human = _human_samples(self.store())
        except PlatformError:
            if not base.samples:
                raise
            human = []
            log.warning("Training without human labels: the labelling store is unreachable")
        samples = merge_samples(base.samples, human)
        if not samples:
            raise PlatformError("There is nothing to train on yet: set DATASET to a class-per-folder directory, "
                                "or label some predicted images and save them")
        extra = {"dataset_revision": self._journal_revision()} if self.journal is not None else {}
        result = self._train(samples, config, self.settings, self.registry, report=report,
                               should_stop=should_stop, activate=False, skipped=base.skipped,
                               dataset_name=self.settings.dataset or self.settings.hub_dataset_id, extra_info=extra)
        self.live.activate(result["version"])
        if self.publisher is not None:
            self.publisher.publish(result["version"])
            self.publisher.record_active(result["version"])
        result["metrics"]["human_labels"] = len(human)
        return result

    def start_training(self, params: dict, user: str = "anonymous"):
        TrainConfig.from_mapping(params)  # bad parameters fail here, before a job exists
        return self.jobs.start(params, user)

    def retrain(self, params: dict, user: str = "anonymous") -> dict:
        """Train, register and activate a version; blocks until done. Returns ``{version, metrics}``."""
        job = self.jobs.wait(self.start_training(params, user))
        if job.state != "done":
            raise PlatformError(job.error or f"Training {job.state}")
        return job.result

    # --- versions --------------------------------------------------------------------------------
    def models(self) -> list[dict]:
        active = self.registry.active()
        pushes = self.publisher.statuses() if self.publisher else {}
        rows = []
        for v in self.registry.versions():
            m = v.metrics()
            push = pushes.get(v.version)
            rows.append({"version": v.version, "active": v.version == active, "created": v.info.get("created"),
                         "mode": v.info.get("mode"), "classes": v.info.get("classes", []),
                         "metrics": {k: m.get(k) for k in ("accuracy", "macro_f1", "ece", "train_size", "val_size", "wall_time_s")},
                         "hub": ({"state": push["state"], "reason": push.get("reason")} if push else None)})
        return rows

    def activate(self, version: str) -> dict:
        version = str(version or "").strip()
        if self.publisher is not None:
            self.publisher.activate(version)
        else:
            self.live.activate(version)
        return {"active": self.registry.active()}

    def retry_push(self, version: str) -> None:
        if self.publisher is None:
            raise PlatformError("Hub publishing is off: set HUB_MODEL_ID and HF_TOKEN")
        self.publisher.retry(version)

    def _journal_revision(self) -> str | None:
        """The label journal's current commit on the Hub, for the model card (None when unknown)."""
        try:
            from huggingface_hub import HfApi
            api = HfApi(endpoint=self.settings.hub_endpoint, token=self.settings.hf_token or False)
            return api.repo_info(self.settings.hub_dataset_id, repo_type="dataset").sha
        except Exception as exc:  # any Hub failure: the card just omits the revision
            log.info("No dataset revision for the model card: %s", type(exc).__name__)
            return None

    def status(self) -> dict:
        predictor = self.live.current()
        running = self.jobs.running
        status = {"active_version": predictor.version if predictor else None,
                  "classes": list(predictor.labels) if predictor else [],
                  "versions": len(self.registry.versions()), "training": running is not None,
                  "training_progress": round(running.progress, 3) if running else None,
                  "dataset": self.settings.dataset, "model_warning": self.live.warning,
                  "labelled_images": None, "store_error": self.store_error,
                  "hub_error": self.publisher.hub_error if self.publisher else None,
                  "labels_not_pushed": self.journal.pending() if self.journal else None}
        try:
            status["labelled_images"] = self.store().count_labels()
        except PlatformError as exc:
            status["store_error"] = str(exc)
        return status

    # --- data audit (issue 14): label issues, duplicates, outliers, review order ---------------------
    def _labelled_set(self, data: str | None = None):
        """The labelled set the audit sees (dataset folder + human labels − removed) and its embeddings;
        remembered until a label or an audit decision changes (the dataset folder is read once)."""
        from training.review import embedder_for, gather
        from training.run import embed_samples
        store = self.store()
        decisions = store.decisions()
        key = (data or self.settings.dataset, hash(frozenset(store.current_labels().items())),
               hash(frozenset(decisions.items())))
        cached = getattr(self, "_audit_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        base = _load_base(self.settings, data or self.settings.dataset).samples
        labelled = gather(base, _human_samples(store), decisions)
        feats, _ = embed_samples(embedder_for(self.settings), labelled.entries)
        self._audit_cache = (key, labelled, feats)
        return labelled, feats

    def audit(self, data: str | None = None, with_map: bool = False) -> dict:
        """Audit every labelled image → ``{"items": [{file, sha256, given, suggested, kind, score}, …] worst
        first, "estimated_issues", "audited", "seconds"}`` (+ ``"points"`` for the embedding map)."""
        from training.review import audit_set
        started = time.perf_counter()
        labelled, feats = self._labelled_set(data)
        result = audit_set(labelled, feats)
        self._audit_files = {s.sha256: s for s in labelled.entries}
        result["seconds"] = round(time.perf_counter() - started, 3)
        if not with_map:
            result.pop("points", None)
        return result

    def review_queue(self, results: list[dict]) -> dict[str, dict]:
        """``{sha256: {"rank": 1…, "badges": [{"kind", "text"}]}}`` for a predicted batch: most likely wrong
        first (typical examples of each cluster first while fewer than 2 labels per class exist)."""
        from classifier.images import ImageInput
        from training.review import embedder_for, queue_for
        store = self.store()
        labelled, labelled_feats = self._labelled_set()
        embedder = embedder_for(self.settings)
        shas = [r["sha256"] for r in results if r.get("sha256")]
        feats = embedder.cache.get_many(shas)  # a head-mode version embedded them already, with this backbone
        missing = [ImageInput(sha[:12], store.image_bytes(sha), sha) for sha in shas if sha not in feats]
        feats.update(embedder.embed(missing)[0] if missing else {})
        return queue_for(results, feats, labelled, labelled_feats)

    def _ensure_stored(self, shas: list[str]) -> dict:
        """Dataset-folder images enter the store before a person's action on them is recorded; returns the
        audited files by sha256 (their labels before the action)."""
        from classifier.images import ImageInput
        store = self.store()
        missing = set(shas) - store.known_images(list(shas))
        files = getattr(self, "_audit_files", {})
        if missing - set(files):
            files = self._audit_files = {s.sha256: s for s in self._labelled_set()[0].entries}
        store.add_images([ImageInput(files[s].name, files[s].read(), s) for s in missing if s in files], source="dataset")
        return files

    def audit_accept(self, items: list[dict], user: str = "anonymous") -> dict:
        """Accept suggested labels ``[{sha256, label}]`` (saved as human labels); returns ``{saved, undo}``.
        Undo saves the label each image had before (a dataset label then becomes a human one)."""
        files = self._ensure_stored([i.get("sha256") for i in items])
        human = self.store().current_labels()
        before = {i["sha256"]: human.get(i["sha256"]) or getattr(files.get(i["sha256"]), "label", None) for i in items}
        result = self.save_labels(items, user=user)
        undo = [{"sha256": sha, "label": label} for sha, label in before.items() if label]
        return {"saved": result["saved"], "undo": {"action": "label", "items": undo}}

    def audit_decide(self, shas: list[str], decision: str, user: str = "anonymous", duplicate_of: str | None = None) -> dict:
        """Record "keep" (reviewed, not an issue) or "remove" (excluded from training); returns ``{changed, undo}``."""
        self._ensure_stored(list(shas) + ([duplicate_of] if duplicate_of else []))
        items = [{"sha256": s, "decision": decision, "duplicate_of": duplicate_of} for s in shas]
        result = self.store().set_decisions(items, user=user)
        undo = [{"sha256": s, "decision": prev or "clear"} for s, prev in result["previous"].items()]
        return {"changed": result["changed"], "undo": {"action": "decision", "items": undo}}

    def audit_keep_one(self, keep: str, others: list[str], user: str = "anonymous") -> dict:
        """Keep one image of a duplicate set and remove the others from training; returns ``{changed, undo}``."""
        kept = self.audit_decide([keep], "keep", user)
        removed = self.audit_decide([s for s in others if s != keep], "remove", user, duplicate_of=keep)
        return {"changed": kept["changed"] + removed["changed"],
                "undo": {"action": "decision", "items": kept["undo"]["items"] + removed["undo"]["items"]}}

    def audit_undo(self, undo: dict, user: str = "anonymous") -> dict:
        """Undo an audit action with the ``undo`` value it returned (a new history row, nothing deleted)."""
        if not isinstance(undo, dict) or undo.get("action") not in ("label", "decision") or not undo.get("items"):
            raise PlatformError("Nothing to undo")
        if undo["action"] == "label":
            return {"saved": self.save_labels(undo["items"], user=user)["saved"]}
        return {"changed": self.store().set_decisions(undo["items"], user=user)["changed"]}


def replay_journal(journal, store) -> int:
    """Load the Hub label journal into a store that holds no labels yet; returns label changes replayed.

    Rows are saved in time order, in runs by the same user (the history keeps who labelled what).
    """
    from classifier.images import ImageInput
    if store.current_labels():
        return 0
    rows, images = journal.replay()
    store.add_images([ImageInput(sha[:12], data, sha) for sha, data in images.items()], source="dataset")
    runs: list[tuple[str, dict[str, str]]] = []
    for row in rows:
        if not row.get("label") or row.get("sha256") not in images:
            continue
        user = row.get("user") or "anonymous"
        if not runs or runs[-1][0] != user or row["sha256"] in runs[-1][1]:
            runs.append((user, {}))
        runs[-1][1][row["sha256"]] = row["label"]
    for user, labels in runs:
        store.save_labels([{"sha256": s, "label": lab} for s, lab in labels.items()], user=user)
    replayed = sum(len(labels) for _, labels in runs)
    log.info("Replayed %d label changes from the Hub journal", replayed)
    return replayed
