"""Record uploads in the store off the request's critical path: one background thread, in submission order.

Storing a batch's images (GridFS, each write journaled) took 8.8 s of a 128-image request in a measurement
on a loaded 2-core machine, against 0.01 s for the human-label lookup that must stay on the path. A
prediction answers first; :class:`UploadRecorder` writes the images and the batch record after it, and
anything that needs them (a label save, a batch reload, an image's bytes) calls :meth:`UploadRecorder.wait`
first, so a label save always finds its image. A write that fails is retried; one that still fails is
reported by ``wait`` (and ``error``) with a message to upload the images again.

Images are written :data:`CHUNK` at a time (fewer where they exceed :data:`CHUNK_BYTES`), and before each chunk the recorder calls ``pause`` (the engine
passes ``PREDICTIONS.wait_until_idle``): a prediction that arrives while a batch is being recorded
gets the cores, instead of sharing them with the previous batch's journaled writes.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from settings import PlatformError

log = logging.getLogger(__name__)
CHUNK = 16
"""Images written between two calls to ``pause`` at most."""
CHUNK_BYTES = 8 * 1024 * 1024
"""Bytes written between two calls to ``pause`` at most (one image more where a single one is larger): 16 phone
photos took 1 s of the app's CPU to store, which a prediction arriving meanwhile had to share."""
RETRY_DELAYS_S = (0.5, 2.0, 5.0)
"""Pauses before each retry of a failed write (a store outage); then the write is given up and reported."""


@dataclass
class _Job:
    batch_id: str
    images: list
    predictions: list[dict]


class UploadRecorder:
    """Writes ``(images, predictions)`` of each batch to ``store()`` on its own thread; ``wait`` blocks until
    given images (or everything submitted) are written."""

    def __init__(self, store: Callable[[], Any], wait_timeout_s: float = 120.0, pause: Callable[[], Any] | None = None):
        self._store = store
        self._pause = pause or (lambda: None)
        self._wait_timeout_s = wait_timeout_s
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._pending: dict[str, int] = {}
        self._failed: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self.error: str | None = None
        """The last write that was given up, for status; None once a later write succeeds."""

    def submit(self, batch_id: str, images: list, predictions: list[dict]) -> None:
        """Queue one batch: ``images`` (``.sha256``, ``.data``, ``.name``) and its prediction rows."""
        with self._cond:
            if self._closed:
                raise PlatformError("The app is shutting down; the upload was not recorded")
            self._jobs.append(_Job(batch_id, list(images), [dict(p) for p in predictions]))
            for image in images:
                self._pending[image.sha256] = self._pending.get(image.sha256, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="upload-recorder", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        """Batches queued or being written."""
        with self._cond:
            return len(self._jobs)

    def wait(self, shas: list[str] | None = None, timeout: float | None = None) -> None:
        """Block until the images ``shas`` (None: every submitted batch) are written; PlatformError if that
        does not happen within the timeout or their write was given up."""
        shas = list(shas) if shas is not None else None
        with self._cond:
            done = self._cond.wait_for(
                lambda: not self._jobs if shas is None else not any(s in self._pending for s in shas),
                self._wait_timeout_s if timeout is None else timeout)
            failed = [self._failed[s] for s in (shas or []) if s in self._failed]
        if not done:
            raise PlatformError("The uploaded images are still being stored; try again in a moment")
        if failed:
            raise PlatformError(f"The image was not stored ({failed[0]}); upload it again, then label it")

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued (up to ``timeout`` seconds), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("%d upload batch(es) were not recorded before shutdown", self.pending())

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                job = self._jobs[0]
            error = self._write_with_retries(job)
            with self._cond:
                self._jobs.popleft()
                for image in job.images:
                    left = self._pending.get(image.sha256, 1) - 1
                    if left:
                        self._pending[image.sha256] = left
                    else:
                        self._pending.pop(image.sha256, None)
                    if error:
                        self._failed[image.sha256] = error
                    else:
                        self._failed.pop(image.sha256, None)
                self.error = error
                self._cond.notify_all()

    def _write_with_retries(self, job: _Job) -> str | None:
        for attempt, delay in enumerate((0.0,) + RETRY_DELAYS_S):
            time.sleep(delay)
            try:
                store = self._store()
                for chunk in _chunks(job.images):  # known images are skipped: a retry redoes nothing
                    self._pause()
                    store.add_images(chunk, source="upload")
                store.record_batch([p["sha256"] for p in job.predictions], job.predictions, batch_id=job.batch_id)
                return None
            except PlatformError as exc:
                log.warning("recording batch %s failed (attempt %d): %s", job.batch_id, attempt + 1, exc)
                error = str(exc)
            except Exception as exc:  # never let the writer thread die: the next batches must still be written
                log.exception("recording batch %s failed", job.batch_id)
                error = f"{type(exc).__name__}: {exc}"
        return error


def _chunks(images: list) -> list[list]:
    """``images`` in order, in runs of at most :data:`CHUNK` images and :data:`CHUNK_BYTES` bytes (a run holds at
    least one image)."""
    runs, run, size = [], [], 0
    for image in images:
        nbytes = image.size
        if run and (len(run) >= CHUNK or size + nbytes > CHUNK_BYTES):
            runs.append(run)
            run, size = [], 0
        run.append(image)
        size += nbytes
    return runs + ([run] if run else [])
