"""Interactive predictions first: one prediction on the cores at a time, and training steps aside meanwhile.

Two things fought over the cores before: concurrent requests (each running torch's intra-op threads on the
same 2 cores, so 4 clients together got fewer images/s than one), and a training run (a prediction during
training took 2.3× its idle time). :data:`PREDICTIONS` is the one process-wide owner of that decision:

* ``with PREDICTIONS.turn():`` around a prediction's compute — requests queue and run one after another,
  each with every core, so 4 clients' throughput is one client's, not less;
* ``PREDICTIONS.yield_to_predictions()`` between training steps (``training/trainer.py``'s callback and
  ``training/head.py``'s loop) — the step waits while a prediction is in flight or queued, up to
  ``max_wait_s``, so training cannot be starved by a stream of requests;
* ``PREDICTIONS.wait_until_idle()`` between chunks of the upload recorder's store writes, likewise;
* ``with PREDICTIONS.receiving():`` around an upload the server is receiving (the app's upload routes), which
  background work waits for too;
* ``PREDICTIONS.wait_while_predicting()`` before embedding uploaded images ahead of their prediction
  (``engine/prefetch.py``), which then takes a ``turn()`` per small chunk.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

MAX_TRAINING_PAUSE_S = 30.0
"""Longest a training step waits for predictions before taking its turn anyway (seconds)."""


class PredictionPriority:
    """Serialises predictions and lets background work (training) wait while any is in flight."""

    def __init__(self):
        self._turn = threading.Lock()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._receiving = 0
        self._last_end = float("-inf")

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the cores for one prediction; queued callers run one after another."""
        with self._counted("_in_flight"), self._turn:
            yield

    def receiving(self):
        """Context manager marking an upload being received (no turn is taken: uploads run alongside); background
        work waits for it as for a prediction, since the upload is the first half of a request a person waits for."""
        return self._counted("_receiving")

    @contextmanager
    def _counted(self, counter: str) -> Iterator[None]:
        """Count one piece of interactive work in ``counter`` while it runs; its end starts the quiet period."""
        with self._cond:
            setattr(self, counter, getattr(self, counter) + 1)
        try:
            yield
        finally:
            with self._cond:
                setattr(self, counter, getattr(self, counter) - 1)
                self._last_end = time.monotonic()
                self._cond.notify_all()

    def _busy(self) -> bool:  # under self._cond
        return bool(self._in_flight or self._receiving)

    def busy(self) -> bool:
        """Whether a prediction is in flight or queued, or an upload is being received."""
        with self._cond:
            return self._busy()

    def in_flight(self) -> int:
        """Predictions running or queued now."""
        with self._cond:
            return self._in_flight

    def wait_while_predicting(self, max_wait_s: float = MAX_TRAINING_PAUSE_S) -> None:
        """Block while a prediction is in flight or queued (uploads being received do not count), at most
        ``max_wait_s``: background work that a prediction would otherwise do itself (embedding uploads ahead)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._in_flight, max_wait_s)

    def yield_to_predictions(self, max_wait_s: float = MAX_TRAINING_PAUSE_S) -> float:
        """Training's pause: block while predictions are in flight (at most ``max_wait_s``); returns the
        seconds waited."""
        return self.wait_until_idle(max_wait_s)

    def wait_until_idle(self, max_wait_s: float = MAX_TRAINING_PAUSE_S, quiet_s: float = 0.0) -> float:
        """Block while predictions are in flight, or until ``quiet_s`` seconds have passed since the last one
        ended (at most ``max_wait_s`` in all); returns the seconds waited. Other background work (the upload
        recorder) pauses here without counting as training; its ``quiet_s`` leaves the cores to the answer's
        delivery and the page's follow-up requests (thumbnails, charts)."""
        started = time.monotonic()
        deadline = started + max_wait_s
        with self._cond:
            if not self._busy() and started >= self._last_end + quiet_s:
                return 0.0
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                if self._busy():
                    self._cond.wait(deadline - now)
                elif now < self._last_end + quiet_s:
                    self._cond.wait(min(deadline, self._last_end + quiet_s) - now)
                else:
                    break
        return time.monotonic() - started


PREDICTIONS = PredictionPriority()
"""The process's one instance: predictions and training share the same cores, so they share this."""
