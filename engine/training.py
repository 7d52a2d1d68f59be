"""The engine's training and versions side: one training path (jobs, the promotion gate), versions,
activation, Hub pushes."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Callable

from engine.samples import human_samples, load_base
from hub.datasets import dataset_revision
from settings import PlatformError
from training.config import TrainConfig
from training.data import LoadedData, Sample, drop_excluded, merge_samples
from training.evaluation import Decision
from training.progress import ProgressEvent, Report, part_of

log = logging.getLogger(__name__)


class TrainingMixin:
    """Mixed into :class:`engine.Engine`; uses its ``settings``, ``store()``, ``registry``, ``live``, ``jobs``,
    ``publisher`` and ``journal``."""

    # --- training --------------------------------------------------------------------------------
    def _training_samples(self, data: str | None, human_labels: bool) -> tuple[list[Sample], LoadedData, int]:
        """Dataset samples (``data``, a folder/.zip/saved dataset/Hub id) merged with the store's human labels,
        minus the images a person removed from training; returns (samples, the dataset as loaded, how many
        human labels)."""
        base = load_base(data)
        human: list[Sample] = []
        excluded: set[str] = set()
        if human_labels:
            try:
                store = self.store()
                human, excluded = human_samples(store), store.excluded()
            except PlatformError:
                if not base.samples:
                    raise
                log.warning("Training without human labels: the labelling store is unreachable")
        return drop_excluded(merge_samples(base.samples, human), excluded), base, len(human)

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
        if version is None:  # a torchrun rank other than 0: rank 0 registers, gates and activates
            return result
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
                         "resolution": v.info.get("resolution"), "precision": v.info.get("precision"),
                         "trained_by": v.info.get("trained_by"), "promotion": self.registry.promotion(v.version),
                         "metrics": {k: m.get(k) for k in ("accuracy", "macro_f1", "ece", "train_size", "val_size", "wall_time_s")},
                         "label_noise": (m.get("data_health") or {}).get("estimated_noise_rate"),
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

