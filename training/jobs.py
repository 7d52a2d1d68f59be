"""Training as a server-side job: one at a time, in a worker thread, with pollable progress.

A browser tab that closes does not cut a run short; a second request while one runs is refused clearly.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from settings import PlatformError

log = logging.getLogger(__name__)


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
    losses: list[float] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def snapshot(self) -> dict:
        return {"id": self.id, "state": self.state, "progress": round(self.progress, 3), "message": self.message,
                "user": self.user, "params": self.params, "started": self.started, "finished": self.finished,
                "result": self.result, "error": self.error, "losses": list(self.losses)}


class TrainingJobs:
    """Runs ``run(params, report, should_stop) -> result`` jobs one at a time."""

    def __init__(self, run: Callable[[dict, Callable[[float, str], None], Callable[[], bool]], dict]):
        self._run = run
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None

    @property
    def running(self) -> Job | None:
        with self._lock:
            return self._current

    def start(self, params: dict, user: str = "anonymous") -> Job:
        with self._lock:
            if self._current is not None:
                raise PlatformError(f"A training run is already in progress (started by {self._current.user}, "
                                    f"{self._current.progress:.0%} done); try again when it finishes")
            job = Job(uuid.uuid4().hex[:12], params, user)
            self._jobs[job.id] = job
            self._current = job
        threading.Thread(target=self._work, args=(job,), name=f"train-{job.id}", daemon=True).start()
        return job

    def _work(self, job: Job) -> None:
        job.state = "running"

        def report(fraction: float, message: str) -> None:
            job.progress, job.message = max(job.progress, min(fraction, 1.0)), message
            if "loss " in message:
                try:
                    job.losses.append(float(message.rsplit("loss ", 1)[1].split()[0]))
                except ValueError:
                    pass

        try:
            job.result = self._run(job.params, report, job.cancel.is_set)
            job.state, job.progress = "done", 1.0
            job.message = f"trained {job.result.get('version')}"
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
