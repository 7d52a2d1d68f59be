"""The narrow interface between the UI/CLIs and the platform: predict a batch, save labels, train,
list/activate versions, status. It knows nothing of Gradio; the app is a thin adapter over it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from classifier.images import decode, save_thumbnail
from classifier.live import LiveModel
from classifier.priority import PREDICTIONS
from classifier.registry import LocalRegistry
from classifier.uploads import expand_uploads
from hub.datasets import dataset_revision, push_export
from labeling.recorder import UploadRecorder
from settings import PlatformError, Settings
from training.config import TrainConfig
from training.data import LoadedData, Sample, load_samples, merge_samples
from training.evaluation import Decision
from training.jobs import TrainingJobs
from training.progress import ProgressEvent, Report, part_of
from training.run import train_version
from training.scoring import VersionScorer

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
        self.scorer = VersionScorer(self.registry, self.live.load)
        self._train = on_gpu_when_available(train_version)
        self._store = None
        self._store_lock = threading.Lock()
        self.recorder = UploadRecorder(self.store)
        """Writes uploaded images and batch records after the prediction has answered (see labeling/recorder.py)."""
        self.store_error: str | None = None
        self.thumbs_dir = settings.data_dir / "thumbs"
        self.publisher = None
        self.journal = None
        if settings.hub_model_id:
            from hub.publish import ModelPublisher
            self.publisher = ModelPublisher(settings, self.registry, self.live)
        if settings.hub_dataset_id:
            from hub.journal import LabelJournal
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
        self.recorder.close()  # queued uploads are written before the store closes
        for part in (self.journal, self.publisher):
            if part is not None:
                part.close()
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # --- prediction ------------------------------------------------------------------------------
    def predict(self, sources, progress: Progress | None = None, thumbnails: bool = False, record: bool = True,
                version: str | None = None, max_batch: int | None = None, top_k: int = 3) -> dict:
        """Predict uploaded files (paths, bytes, .zip archives); records images and predictions in the store.

        Returns ``{"results", "errors", "batch_id", "model_version", "store_error"}``; a store outage
        never stops predictions. Each result carries the image's current ``human_label`` from the store
        (None when none, or when the store is unreachable or not asked) and its ``label_revision`` (0: never
        labelled). With no trained version yet, results carry ``label`` None (nothing is invented) so the
        images can still be labelled. ``thumbnails`` adds a ``thumbnail`` path per result; ``record=False``
        writes nothing to the store; ``version`` predicts with that version instead of the active one;
        ``max_batch`` overrides ``MAX_BATCH`` (the CLI predicts whole folders).
        """
        predictor = self.live.load(version) if version else self.live.current()
        images, errors = expand_uploads(sources, max_batch or self.settings.max_batch,
                                        self.settings.max_upload_mb, self.settings.max_archive_mb)
        with PREDICTIONS.turn():  # one prediction on the cores at a time; training steps aside meanwhile
            if predictor is not None:
                results, bad = predictor.predict_batch(images, top_k=top_k, progress=progress)
            else:
                results, bad = self._unpredicted(images)
        errors += bad
        if thumbnails:
            by_sha = {i.sha256: i for i in images}
            for r in results:
                r["thumbnail"] = str(save_thumbnail(by_sha[r["sha256"]], self.thumbs_dir, self.settings.max_image_pixels))
        batch_id, store_error = None, None
        for r in results:
            r.update(human_label=None, label_revision=None)  # None: unknown until the store answers
        if results and record:
            from labeling.store import new_batch_id
            good = {r["sha256"] for r in results}
            try:
                # One indexed query stays on the path (the grid shows human labels at once); storing the images
                # and the batch record happens after the answer, and label saves wait for it (self.recorder).
                states = self.store().label_states([r["sha256"] for r in results], include_reverted=True)
                for r in results:
                    state = states.get(r["sha256"]) or {}
                    r.update(human_label=state.get("label"), label_revision=state.get("revision", 0))
                batch_id = new_batch_id()
                self.recorder.submit(batch_id, [i for i in images if i.sha256 in good], results)
            except PlatformError as exc:
                store_error = f"Predictions were not recorded: {exc}"
                log.warning("%s", store_error)
        return {"results": results, "errors": errors, "batch_id": batch_id,
                "model_version": predictor.version if predictor else None, "store_error": store_error}

    def batch_results(self, batch_id: str) -> dict:
        """A recorded batch again, as :meth:`predict` returned it (thumbnails included), with each image's
        current human label from the store: what a reloaded page shows."""
        from classifier.images import ImageInput

        self.recorder.wait()  # a batch answered moments ago may still be being recorded
        store = self.store()
        results = store.batch_predictions(batch_id)
        states = store.label_states([r["sha256"] for r in results], include_reverted=True)
        for r in results:
            path = self.thumbs_dir / r["sha256"][:2] / f"{r['sha256']}.jpg"
            if not path.is_file():
                image = ImageInput(r["file"], store.image_bytes(r["sha256"]), r["sha256"])
                path = save_thumbnail(image, self.thumbs_dir, self.settings.max_image_pixels)
            state = states.get(r["sha256"]) or {}
            r.update(thumbnail=str(path), human_label=state.get("label"), label_revision=state.get("revision", 0))
        versions = {r["model_version"] for r in results if r["model_version"]}
        return {"results": results, "errors": [], "batch_id": batch_id, "store_error": None,
                "model_version": versions.pop() if len(versions) == 1 else None}

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
        """The active version's classes."""
        predictor = self.live.current()
        return list(predictor.labels) if predictor else []

    def class_names(self) -> list[str]:
        """Every class a label may take now: the active version's, in its order, then every other human label
        (sorted); the store's part is left out while it is unreachable."""
        names = self.classes()
        try:
            names += sorted(set(self.store().current_labels().values()) - set(names))
        except PlatformError:
            pass
        return names

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
        try:
            self.recorder.wait([i["sha256"] for i in good])  # images predicted moments ago: stored first
        except PlatformError:
            pass  # an image whose write was given up is rejected below as not in the store
        store = self.store()
        known = store.known_images([i["sha256"] for i in good]) if good else set()
        rejected += [dict(i, error=f"image {i['sha256'][:12]} is not in the store: predict it first")
                     for i in good if i["sha256"] not in known]
        good = [i for i in good if i["sha256"] in known]
        if not good:
            raise nothing_saved(rejected)
        result = store.save_labels(good, user=user, known_classes=self.classes())
        result["rejected"] = rejected
        # as saved: normalised, case mapped onto known classes
        self._journal(store, [{"sha256": sha, "label": lab} for sha, lab in result["labels"].items()], user)
        return result

    def _journal(self, store, changes: list[dict], user: str) -> None:
        """Append saved label changes ``[{sha256, label (None: reverted)}]`` to the Hub journal, if there is one."""
        if self.journal is None or not changes:
            return
        predictor = self.live.current()
        rows = [{"sha256": c["sha256"], "label": c["label"], "user": user,
                 "model_version": predictor.version if predictor else None} for c in changes]
        self.journal.append(rows, {c["sha256"]: store.image_bytes(c["sha256"]) for c in changes if c["label"] is not None})

    def labels(self, shas: list[str] | None = None) -> list[dict]:
        """The current human labels ``[{sha256, label, state, revision, updated_by, updated_at}]`` (``shas``:
        only those images), sorted by sha256; ``state`` is "confirmed" (the prediction when saved) or "corrected"."""
        if shas is not None and (not isinstance(shas, list) or not all(isinstance(s, str) for s in shas)):
            raise PlatformError("sha256s must be a list of strings")
        rows = self.store().label_states(shas)
        return [rows[sha] for sha in sorted(rows)]

    def label_states(self, shas: list[str]) -> dict[str, dict]:
        """Like :meth:`labels` for an editor: sha256 → row, reverted images included (label None) with their
        revision, which an edit must name."""
        return self.store().label_states(shas, include_reverted=True)

    def set_label(self, sha256: str, label: str | None, user: str = "anonymous",
                  expected_revision: int | None = None) -> dict:
        """One person's edit of one image: ``label`` (None reverts to no human label), saved durably once
        ``expected_revision`` (the revision the editor saw) is still current; see ``LabelStore.set_label``."""
        if not isinstance(sha256, str) or (label is not None and not isinstance(label, str)):
            raise PlatformError("An edit needs a sha256 and a label (or null to revert)")
        self.recorder.wait([sha256])  # the image predicted moments ago is stored before its label
        store = self.store()
        result = store.set_label(sha256, label, user=user, expected_revision=expected_revision,
                                 known_classes=self.classes())
        if result["status"] == "saved":
            self._journal(store, [result], user)
        return result

    def label_detail(self, sha256: str) -> dict:
        """What a person needs to judge one image: ``{label, history (who, when, which version predicted
        what; newest first), predictions (each version's top-k, newest first)}``."""
        self.recorder.wait([sha256])
        store = self.store()
        state = store.label_states([sha256], include_reverted=True).get(sha256)
        return {"label": state, "history": store.history(sha256, limit=50), "predictions": store.predictions_of(sha256)}

    def image_bytes(self, sha256: str) -> bytes:
        """The stored bytes of an image; PlatformError if unknown."""
        self.recorder.wait([sha256])
        return self.store().image_bytes(sha256)

    def import_labelled(self, source, user: str = "anonymous") -> dict:
        """Import a folder or ``.zip`` of class sub-folders as human labels by ``user`` (images stored once,
        labels saved like any edit). Returns ``{imported, unchanged, classes, new_classes, skipped}``."""
        from classifier.images import ImageInput

        loaded = load_samples(source)
        if not loaded.samples:
            raise PlatformError(f"No labelled images found in {Path(str(source)).name}: expected one sub-folder "
                                "per class holding images")
        store = self.store()
        origin = "folder" if Path(str(source)).is_dir() else "upload"
        images = [ImageInput(s.name, s.read(), s.sha256) for s in loaded.samples]
        store.add_images(images, source=origin)
        result = store.save_labels([{"sha256": s.sha256, "label": s.label} for s in loaded.samples], user=user,
                                   known_classes=self.classes())
        self._journal(store, [{"sha256": sha, "label": lab} for sha, lab in result["labels"].items()], user)
        return {"imported": result["saved"], "unchanged": result["unchanged"], "classes": loaded.classes,
                "new_classes": result["new_classes"], "skipped": loaded.skipped}

    # --- training --------------------------------------------------------------------------------
    def _training_samples(self, data: str | None, human_labels: bool) -> tuple[list[Sample], LoadedData, int]:
        """Dataset samples (``data``, a folder/.zip/saved dataset/Hub id) merged with the store's human labels;
        returns (samples, the dataset as loaded, how many human labels)."""
        base = _load_base(self.settings, data)
        human: list[Sample] = []
        if human_labels:
            try:
                human = _human_samples(self.store())
            except PlatformError:
                if not base.samples:
                    raise
                log.warning("Training without human labels: the labelling store is unreachable")
        return merge_samples(base.samples, human), base, len(human)

    def _run_training(self, params: dict, report: Report, should_stop: Callable[[], bool], *, user: str,
                      data: str | None, human_labels: bool, promote: bool) -> dict:
        config = TrainConfig.from_mapping(params)
        report(ProgressEvent(0.0, "loading training data"))
        samples, base, human = self._training_samples(data, human_labels)
        if not samples:
            raise PlatformError("There is nothing to train on yet: set DATASET to a class-per-folder directory, "
                                "import a labelled folder, or label some predicted images")
        extra = {"dataset_revision": dataset_revision(self.settings)} if self.journal is not None else {}
        result = self._train(samples, config, self.settings, self.registry, report=part_of(report, 0.0, 0.9),
                             should_stop=should_stop, activate=False, skipped=base.skipped,
                             dataset_name=data or self.settings.hub_dataset_id, extra_info=dict(extra, trained_by=user))
        version = result["version"]
        report(ProgressEvent(0.92, f"comparing {version} with the active version on the same images"))
        decision = self.scorer.gate(version, self.registry.active(), samples, self.settings.promotion_tolerance) \
            if promote else Decision(False, f"{version} was registered without activating it (as asked)")
        self.registry.record_promotion(version, dict(asdict(decision), user=user, time=time.time()))
        if self.publisher is not None:
            self.publisher.publish(version)
        if decision.promoted:
            self._activate(version)
        result["metrics"]["human_labels"] = human
        result.update(promoted=decision.promoted, reason=decision.reason, started_by=user,
                      compared_on=decision.images, warnings=result["metrics"].get("warnings") or [])
        return result

    def start_training(self, params: dict, user: str = "anonymous", data: str | None = None,
                       human_labels: bool = True, promote: bool = True):
        """Start a run in the background; returns its job. ``data`` defaults to ``DATASET``. Refused with a
        message naming who is training when a run is going on. The new version goes live only if it passes
        the promotion gate (``promote=False``: registered, never activated)."""
        TrainConfig.from_mapping(params)  # bad parameters fail here, before a job exists
        options = {"user": user, "data": data if data is not None else self.settings.dataset,
                   "human_labels": human_labels, "promote": promote}
        return self.jobs.start(params, user, options)

    def retrain(self, params: dict, user: str = "anonymous", on_progress: Report | None = None, **options) -> dict:
        """Train and register a version, blocking until done; returns ``{version, metrics, promoted, reason,
        started_by, compared_on, warnings}``. ``on_progress`` receives each progress event. Options as
        :meth:`start_training`."""
        job = self.start_training(params, user, **options)
        while job.finished is None:
            time.sleep(0.2)
            if on_progress is not None:
                on_progress(ProgressEvent(job.progress, job.message))
        if job.state != "done":
            raise PlatformError(job.error or f"Training {job.state}")
        return job.result

    def cancel_training(self, user: str = "anonymous") -> dict:
        """Stop the running training job; it registers nothing. Returns the job's snapshot."""
        return self.jobs.cancel(user).snapshot()

    def wait_for_training(self, timeout: float | None = None) -> dict | None:
        """Block until the latest job ends (or ``timeout`` seconds pass); returns its snapshot, or None."""
        job = self.jobs.latest()
        return self.jobs.wait(job, timeout).snapshot() if job else None

    def training_status(self) -> dict | None:
        """The latest job of this process as a snapshot (see :meth:`training.jobs.Job.snapshot`), or None."""
        job = self.jobs.latest()
        return job.snapshot() if job else None

    # --- versions --------------------------------------------------------------------------------
    def require_model(self) -> str:
        """The active version; PlatformError saying why when none can be served."""
        return self.live.require().version

    def active_version(self) -> str | None:
        """The version served now (following activations made by other processes)."""
        predictor = self.live.current()
        return predictor.version if predictor else None

    def version_metrics(self, version: str) -> dict:
        """A version's ``metrics.json`` (accuracy, per-class F1, confusion matrix, loss curve, …)."""
        return self.registry.get(version).metrics()

    def compare_versions(self, first: str, second: str) -> dict:
        """Both versions scored on the images both held out: ``{"images", first: accuracy, second: accuracy}``."""
        samples, _, _ = self._training_samples(self.settings.dataset, True)
        return self.scorer.compare(first, second, samples)

    def models(self) -> list[dict]:
        active = self.active_version()
        pushes = self.publisher.statuses() if self.publisher else {}
        rows = []
        for v in self.registry.versions():
            m = v.metrics()
            push = pushes.get(v.version)
            rows.append({"version": v.version, "active": v.version == active, "created": v.info.get("created"),
                         "mode": v.info.get("mode"), "classes": v.info.get("classes", []),
                         "trained_by": v.info.get("trained_by"), "promotion": self.registry.promotion(v.version),
                         "metrics": {k: m.get(k) for k in ("accuracy", "macro_f1", "ece", "train_size", "val_size", "wall_time_s")},
                         "hub": ({"state": push["state"], "reason": push.get("reason")} if push else None)})
        return rows

    def activate(self, version: str) -> dict:
        """Make ``version`` active (a rollback, or a version the gate held back) → ``{"active"}``."""
        self._activate(str(version or "").strip())
        return {"active": self.active_version()}

    def _activate(self, version: str) -> None:
        if self.publisher is not None:
            self.publisher.activate(version)
        else:
            self.live.activate(version)

    def retry_push(self, version: str) -> None:
        if self.publisher is None:
            raise PlatformError("Hub publishing is off: set HUB_MODEL_ID and HF_TOKEN")
        self.publisher.retry(version)

    def wait_for_hub(self, version: str, timeout: float = 300.0) -> dict | None:
        """Wait for pending Hub pushes (a CLI before it exits); returns ``version``'s push state, or None when
        publishing is off."""
        if self.publisher is None:
            return None
        return self.publisher.wait(version, timeout)

    def status(self) -> dict:
        predictor = self.live.current()
        running = self.jobs.running
        status = {"active_version": predictor.version if predictor else None,
                  "classes": list(predictor.labels) if predictor else [],
                  "versions": len(self.registry.versions()), "training": running is not None,
                  "training_progress": round(running.progress, 3) if running else None,
                  "training_by": running.user if running else None,
                  "dataset": self.settings.dataset, "model_warning": self.live.warning,
                  "labelled_images": None, "store_error": self.store_error,
                  "hub_error": self.publisher.hub_error if self.publisher else None,
                  "labels_not_pushed": self.journal.pending() if self.journal else None}
        try:
            status["labelled_images"] = self.store().count_labels()
        except PlatformError as exc:
            status["store_error"] = str(exc)
        return status

    # --- labelled data for the CLIs -----------------------------------------------------------------
    def label_stats(self) -> dict:
        """Counts of images, labels, classes and batches in the store (``python -m labeling stats``)."""
        return self.store().stats()

    def export_labels(self, out_dir, format: str = "imagefolder", push: bool = False) -> dict:
        """Write the labelled images as an ``imagefolder`` tree or a saved ``datasets`` folder; with ``push``,
        also to ``HUB_DATASET_ID``. Returns the counts."""
        if push and not (self.settings.hub_dataset_id and self.settings.hf_token):
            raise PlatformError("--push needs HUB_DATASET_ID and HF_TOKEN to be set")
        counts = self.store().export(out_dir, format=format)
        if push:
            counts["pushed_to"] = push_export(Path(counts["out_dir"]), format, self.settings)
        return counts


def replay_journal(journal, store) -> int:
    """Load the Hub label journal into a store that holds no labels yet; returns label changes replayed.

    Rows are saved in time order, in runs by the same user (the history keeps who labelled what).
    """
    from classifier.images import ImageInput
    if store.current_labels():
        return 0
    rows, images = journal.replay()
    store.add_images([ImageInput(sha[:12], data, sha) for sha, data in images.items()], source="dataset")
    runs: list[tuple[str, dict[str, str | None]]] = []
    for row in rows:
        if row.get("sha256") not in images or not (row.get("label") or "label" in row):
            continue
        user = row.get("user") or "anonymous"
        if not runs or runs[-1][0] != user or row["sha256"] in runs[-1][1]:
            runs.append((user, {}))
        runs[-1][1][row["sha256"]] = row.get("label") or None
    for user, labels in runs:
        items = [{"sha256": s, "label": lab} for s, lab in labels.items() if lab]
        if items:
            store.save_labels(items, user=user)
        for sha in (s for s, lab in labels.items() if not lab):  # a revert: back to no human label
            store.set_label(sha, None, user=user)
    replayed = sum(len(labels) for _, labels in runs)
    log.info("Replayed %d label changes from the Hub journal", replayed)
    return replayed
