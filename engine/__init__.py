"""The narrow interface between the UI/CLIs and the platform: predict a batch, save labels, train,
list/activate versions, status. It knows nothing of Gradio; the app and the three CLIs are thin adapters over
it. :class:`Engine` is one object per process, assembled from one module per responsibility: this one
(start, store, prediction, status), :mod:`engine.labels`, :mod:`engine.training` and :mod:`engine.audit`.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from classifier.images import decode, save_thumbnail
from classifier.live import LiveModel
from classifier.priority import PREDICTIONS
from classifier.registry import LocalRegistry
from classifier.uploads import expand_uploads
from engine.audit import AuditMixin
from engine.labels import LabelsMixin
from engine.prefetch import UploadPrefetcher
from engine.training import TrainingMixin
from labeling.recorder import UploadRecorder
from settings import PlatformError, Settings
from training.jobs import TrainingBusy, TrainingJobs
from training.run import train_version
from training.scoring import VersionScorer

__all__ = ["Engine", "TrainingBusy", "on_gpu_when_available", "replay_journal"]
log = logging.getLogger(__name__)
RECORDER_MAX_PAUSE_S = 5.0
"""Longest the upload recorder waits for in-flight predictions before writing its next chunk (seconds)."""
RECORDER_QUIET_S = 0.5
"""The recorder also waits until this long after the last prediction ended (seconds): the recorder and the
embedded database are Python threads, and writing while the answer is delivered holds the GIL against it."""
Progress = Callable[[float, str], None]


def on_gpu_when_available(fn: Callable, duration_s: int = 900) -> Callable:
    """Run ``fn`` inside ``spaces.GPU`` on a ZeroGPU Space (the decorator is a no-op elsewhere);
    without the ``spaces`` package, ``fn`` runs as it is, on the CPU."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration_s)(fn)


class Engine(LabelsMixin, TrainingMixin, AuditMixin):
    """One per process: owns the registry, the live model, the training worker and the store connection."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = LocalRegistry(settings.models_dir)
        self.registry.clean_staging()
        self.live = LiveModel(self.registry, settings, warm=False)  # graphs are built once serving: see serving()
        self.jobs = TrainingJobs(self._run_training)
        self.scorer = VersionScorer(self.registry, self.live.load)
        self._train = on_gpu_when_available(train_version)
        self._store = None
        self._store_lock = threading.Lock()
        self.recorder = UploadRecorder(self.store, pause=lambda: PREDICTIONS.wait_until_idle(RECORDER_MAX_PAUSE_S, RECORDER_QUIET_S))
        """Writes uploaded images and batch records after the prediction has answered (see labeling/recorder.py)."""
        self.prefetcher = UploadPrefetcher(self.live, settings.max_upload_mb) if settings.prefetch_uploads else None
        """Embeds uploaded images while the rest of their batch arrives (see engine/prefetch.py)."""
        self.store_error: str | None = None
        self.thumbs_dir = settings.data_dir / "thumbs"
        self._audit_cache = None  # (key, LabelledSet) of the last audit, see engine.audit
        self._audit_files: dict = {}
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

    def serving(self) -> None:
        """Once the server answers: build the active version's faster graph (and those of versions loaded later),
        then prepare the review order, on a background thread. Both take seconds of both cores; done while the
        server was still starting they made the launch slower."""
        self.live.start_warming()
        self.warming = threading.Thread(target=self._warm_review, name="warm-review", daemon=True)
        self.warming.start()

    def _warm_review(self) -> None:
        """Once the active version's graph is built, load what ranking a batch for review needs (the base
        backbone's embedder, the labelled set and its cached features): the first upload in the browser paid
        0.4 s for it on its request path. Loads the active version first if no request has yet."""
        try:
            predictor = self.live.current()
            if predictor is not None:
                predictor.fm.warm(wait=True)  # after the graph: both would share the same 2 cores
            self._labelled_set(embed_missing=False)
        except Exception as exc:  # the request path loads the same itself, and says what is wrong
            log.info("Ranking was not prepared ahead of the first batch: %s", exc)

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
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.recorder.close()  # queued uploads are written before the store closes
        for part in (self.journal, self.publisher):
            if part is not None:
                part.close()
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # --- prediction ------------------------------------------------------------------------------
    def receiving(self):
        """Context manager around receiving an upload (the app's upload routes): the upload recorder and training
        steps wait while one is received, as they do for predictions (:mod:`classifier.priority`)."""
        return PREDICTIONS.receiving()

    def received(self, paths: list[str]) -> None:
        """An upload route saved these files: embed the images among them ahead of their prediction."""
        if self.prefetcher is not None:
            self.prefetcher.submit(paths)

    def predict(self, sources, progress: Progress | None = None, thumbnails: bool = False, record: bool = True,
                version: str | None = None, max_batch: int | None = None, top_k: int = 3, rank: bool = False) -> dict:
        """Predict uploaded files (paths, bytes, .zip archives); records images and predictions in the store.

        Returns ``{"results", "errors", "batch_id", "model_version", "store_error"}``; a store outage
        never stops predictions. With ``record``, each result carries the image's current ``human_label``
        from the store (None when none, or when the store is unreachable) and its ``label_revision`` (0: never
        labelled). With no trained version yet, results carry ``label`` None (nothing is invented) so the
        images can still be labelled. ``thumbnails`` adds a ``thumbnail`` path per result; ``record=False``
        writes nothing to the store; ``version`` predicts with that version instead of the active one;
        ``max_batch`` overrides ``MAX_BATCH`` (the CLI predicts whole folders); ``rank`` adds the trust queue's
        ``rank`` and ``badges`` to each result (see :meth:`review_queue`; left out if it cannot be computed).
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
        if rank and results:  # before the recorder starts: its writes would share the GIL with the ranking
            self._rank(results, images)
        batch_id, store_error = None, None
        if record:  # the store is asked for each image's human label (None: unknown until it answers)
            for r in results:
                r.update(human_label=None, label_revision=None)
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

    def _rank(self, results: list[dict], images: list) -> None:
        try:
            ranks = self.review_queue(results, {i.sha256: i for i in images})
        except PlatformError as exc:  # the store is down, say: the grid falls back to least confident first
            log.warning("No review order for this batch: %s", exc)
            return
        for row in results:
            row.update(ranks.get(row["sha256"], {}))

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
                  "labels_not_pushed": self.journal.pending() if self.journal else None,
                  "uploads_recording": self.recorder.pending(),
                  "uploads_embedding": self.prefetcher.pending() if self.prefetcher else 0,
                  "model_runtime": predictor.runtime if predictor else None}
        try:
            status["labelled_images"] = self.store().count_labels()
        except PlatformError as exc:
            status["store_error"] = str(exc)
        return status



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
