"""The narrow interface between the UI/CLIs and the platform: predict a batch, save labels, train,
list/activate versions, status. It knows nothing of Gradio; the app is a thin adapter over it.
"""
from __future__ import annotations

import logging
import sys
import threading
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


def _human_samples(store) -> list[Sample]:
    return [Sample(li.sha256, li.label, li.name, li.read) for li in store.labelled_samples()]


def _load_base(settings: Settings, data: str | None) -> LoadedData:
    return load_samples(data) if data else LoadedData([])


class Engine:
    """One per process: owns the registry, the live model, the training worker and the store connection."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = LocalRegistry(settings.models_dir)
        self.live = LiveModel(self.registry, settings)
        self.jobs = TrainingJobs(self._run_training)
        self._store = None
        self._store_lock = threading.Lock()
        self.store_error: str | None = None
        self.thumbs_dir = settings.data_dir / "thumbs"

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
        """Save ``[{sha256, label}]``; returns ``{saved, new_classes, unchanged}`` once durably written."""
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise PlatformError("Labels must be a list of {\"sha256\": …, \"label\": …} objects")
        if not items:
            raise PlatformError("No labels to save")
        return self.store().save_labels(items, user=user, known_classes=self.classes())

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
        result = train_version(samples, config, self.settings, self.registry, report=report,
                               should_stop=should_stop, activate=False, skipped=base.skipped,
                               dataset_name=self.settings.dataset)
        self.live.activate(result["version"])
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
        rows = []
        for v in self.registry.versions():
            m = v.metrics()
            rows.append({"version": v.version, "active": v.version == active, "created": v.info.get("created"),
                         "mode": v.info.get("mode"), "classes": v.info.get("classes", []),
                         "metrics": {k: m.get(k) for k in ("accuracy", "macro_f1", "ece", "train_size", "val_size", "wall_time_s")}})
        return rows

    def activate(self, version: str) -> dict:
        self.live.activate(str(version).strip())
        return {"active": self.registry.active()}

    def status(self) -> dict:
        predictor = self.live.current()
        running = self.jobs.running
        status = {"active_version": predictor.version if predictor else None,
                  "classes": list(predictor.labels) if predictor else [],
                  "versions": len(self.registry.versions()), "training": running is not None,
                  "training_progress": round(running.progress, 3) if running else None,
                  "dataset": self.settings.dataset, "model_warning": self.live.warning,
                  "labelled_images": None, "store_error": None}
        try:
            status["labelled_images"] = len(self.store().current_labels())
        except PlatformError as exc:
            status["store_error"] = str(exc)
        return status


def train_from_sources(settings: Settings, config: TrainConfig, data: str | None, with_labels: bool,
                       activate: bool = True, show_progress: bool = False) -> dict:
    """The training CLI's path: dataset (+ store labels) → a new registered version."""
    base = _load_base(settings, data)
    human: list[Sample] = []
    store = None
    if with_labels:
        from labeling.store import open_store
        store = open_store(settings)
    try:
        if store is not None:
            human = _human_samples(store)
        samples = merge_samples(base.samples, human)
        if not samples:
            raise PlatformError("No training data: pass --data DIR (or set DATASET), or use --with-labels")
        bar = _progress_bar() if show_progress else None
        report = (lambda f, m: bar(f, m)) if bar else None
        registry = LocalRegistry(settings.models_dir)
        result = train_version(samples, config, settings, registry, report=report, activate=activate,
                               skipped=base.skipped, dataset_name=data)
    finally:
        if store is not None:
            store.close()
    return result


def _progress_bar() -> Progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed} {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message[:60])
        bar.refresh()
    return update
