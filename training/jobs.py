"""Training as a server-side job: one at a time, in a worker thread, with typed progress and a stop switch.

A browser tab that closes does not cut a run short; a second request while one runs is refused with a
message naming who is training and how far it is; a stopped run registers nothing.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

from settings import PlatformError
from training.progress import Cancelled, ProgressEvent, Report

log = logging.getLogger(__name__)


class TrainingBusy(PlatformError):
    """A run was refused because another one is going on (the message names who and how far)."""


@dataclass
class Job:
    id: str
    params: dict
    user: str
    state: str = "queued"  # queued → running → done | failed | cancelled
    progress: float = 0.0
    message: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict | None = None
    error: str | None = None
    events: list[ProgressEvent] = field(default_factory=list)
    """Every event that carried a loss (the live loss curve), oldest first."""
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    cancelled_by: str | None = None

    def snapshot(self) -> dict:
        """A JSON-able copy: id, state, progress (0–1), message, user, params, times (epoch seconds), result,
        error, losses ([{step, epoch, loss}]), cancelled_by."""
        return {"id": self.id, "state": self.state, "progress": round(self.progress, 3), "message": self.message,
                "user": self.user, "params": self.params, "started": self.started, "finished": self.finished,
                "result": self.result, "error": self.error, "cancelled_by": self.cancelled_by,
                "losses": [{k: v for k, v in asdict(e).items() if k in ("step", "epoch", "loss")} for e in self.events]}

    def describe(self) -> str:
        """``alice's head run, 40% done (step 12/30 · loss 0.4)``."""
        return f"{self.user}'s {self.params.get('mode', 'head')} run, {self.progress:.0%} done ({self.message or 'starting'})"


class TrainingJobs:
    """Runs ``run(params, report, should_stop) -> result`` jobs one at a time."""

    def __init__(self, run: Callable[..., dict]):
        """``run(params, report, should_stop, **options)`` does the work of one job and returns its result."""
        self._run = run
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None

    @property
    def running(self) -> Job | None:
        with self._lock:
            return self._current

    def start(self, params: dict, user: str = "anonymous", options: dict | None = None) -> Job:
        """Start a job in a worker thread (``options`` go to ``run`` as keywords); PlatformError if one is
        already running (naming who and how far)."""
        with self._lock:
            if self._current is not None:
                raise TrainingBusy(f"Training is busy with {self._current.describe()}. Your run was not started; "
                                    "try again when it finishes, or stop it first")
            job = Job(uuid.uuid4().hex[:12], params, user)
            self._jobs[job.id] = job
            self._current = job
        threading.Thread(target=self._work, args=(job, options or {}), name=f"train-{job.id}", daemon=True).start()
        return job

    def cancel(self, user: str, job_id: str | None = None) -> Job:
        """Ask the running job (or ``job_id``) to stop; it ends as ``cancelled`` and registers nothing."""
        with self._lock:
            job = self._jobs.get(job_id) if job_id else self._current
            if job is None or job.finished is not None:
                raise PlatformError("No training run is going on" if not job_id else f"Training job {job_id} has already ended")
            job.cancelled_by = user
            job.cancel.set()
        return job

    def _work(self, job: Job, options: dict) -> None:
        job.state = "running"

        def report(event: ProgressEvent) -> None:
            job.progress, job.message = max(job.progress, min(event.fraction, 1.0)), event.message
            if event.loss is not None:
                job.events.append(event)

        try:
            job.result = self._run(job.params, report, job.cancel.is_set, **options)
            job.state, job.progress = "done", 1.0
            job.message = f"trained {job.result.get('version')}"
        except Cancelled:
            job.state, job.error = "cancelled", f"Stopped by {job.cancelled_by}; nothing was registered"
        except PlatformError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a bug must not kill the worker silently; the user sees a short reason
            log.exception("training job %s failed", job.id)
            job.state, job.error = "failed", f"Training failed: {type(exc).__name__}: {str(exc)[:300]}"
        finally:
            job.finished = time.time()
            with self._lock:
                self._current = None

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise PlatformError(f"No training job {job_id!r}")
            return self._jobs[job_id]

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while job.finished is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)
        return job

    def latest(self) -> Job | None:
        with self._lock:
            return max(self._jobs.values(), key=lambda j: j.started, default=None)
