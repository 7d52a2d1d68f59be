"""Embed uploaded images while the rest of their batch is still arriving.

``gradio_client`` sends a batch as one upload request per file, and only then asks for the prediction: 128
small images took about 9 s to arrive on 2 cores, while embedding them takes under 2 s. The app's upload routes
hand each upload's saved image paths here (``ui/activity.py``); a background thread embeds them with the active
version into the embedding cache, so the prediction that follows reads most of its features from the cache.

Only embeddings are computed: nothing is recorded, labelled or shown. It is best-effort and never in the way:
it works while no prediction is in flight (a prediction embeds whatever is left itself), one small chunk per
turn on the cores (a whole batch where the graph runs a fixed one), skips archives, files that are gone and files over the per-image limit, and forgets the
oldest paths when more are waiting than a few batches hold.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path

from classifier.images import IMAGE_SUFFIXES, read_input
from classifier.priority import PREDICTIONS
from settings import PlatformError

log = logging.getLogger(__name__)
CHUNK = 8
"""Images embedded per turn where the graph runs any batch size (eager, ONNX Runtime): a prediction that arrives
meanwhile waits for at most this many."""
FILL_WAIT_S = 0.5
"""How long a chunk smaller than the graph's fixed batch waits for the next upload before it is embedded anyway."""


class UploadPrefetcher:
    """``submit(paths)`` from the upload route; a daemon thread embeds them with ``live.current()``."""

    def __init__(self, live, max_image_mb: int, max_pending: int = 512):
        self.live = live
        self.max_bytes = max_image_mb * 1024 * 1024
        self._pending: deque[Path] = deque(maxlen=max_pending)
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self.embedded = 0
        """Images this prefetcher embedded (cache misses it filled), for ``/status`` and tests."""
        self._thread = threading.Thread(target=self._run, name="upload-prefetch", daemon=True)
        self._thread.start()

    def submit(self, paths) -> int:
        """Queue the image files among ``paths`` (strings from the upload route); returns how many."""
        images = [Path(p) for p in paths if isinstance(p, str) and Path(p).suffix.lower() in IMAGE_SUFFIXES]
        if images:
            with self._cond:
                self._pending.extend(images)
                self._cond.notify_all()
        return len(images)

    def pending(self) -> int:
        """Uploaded images waiting to be embedded or being embedded now."""
        with self._cond:
            return len(self._pending) + (1 if self._busy else 0)

    def wait(self, timeout_s: float = 60.0) -> bool:
        """Block until nothing is pending (tests, shutdown); returns whether it got there."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout_s)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def _chunk_size(self) -> int:
        """Images per turn: the live graph's fixed batch where it has one (torch.compile pads a smaller batch to it,
        so 1 image cost what 16 do: chunks of 1-2 as files arrive one request each made prefetching cost more
        than the uploads it overlaps), else :data:`CHUNK`."""
        try:
            predictor = self.live.current()
        except PlatformError:
            return CHUNK
        return max(CHUNK, predictor.fm.padded_batch()) if predictor is not None else CHUNK

    def _next_chunk(self) -> list[Path] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closed)
            if self._closed:
                return None
        size = self._chunk_size()  # outside the lock: it may load a version
        with self._cond:
            while len(self._pending) < size and not self._closed:  # fill a fixed batch while uploads arrive
                seen = len(self._pending)
                if not self._cond.wait_for(lambda: len(self._pending) != seen or self._closed, FILL_WAIT_S):
                    break  # nothing more arrived: embed what is here
            if self._closed:
                return None
            chunk = [self._pending.popleft() for _ in range(min(size, len(self._pending)))]
            self._busy = True
            return chunk

    def _run(self) -> None:
        while (chunk := self._next_chunk()) is not None:
            try:
                PREDICTIONS.wait_while_predicting()  # a prediction in flight embeds its own images
                predictor = self.live.current()
                if predictor is not None:
                    inputs = []
                    for path in chunk:
                        try:
                            if path.stat().st_size <= self.max_bytes:
                                inputs.append(read_input(path))
                        except (OSError, PlatformError):
                            continue  # gone (Gradio's cache was cleaned) or unreadable: the request will say so
                    todo = predictor.embedder.missing(inputs)
                    if todo:
                        with PREDICTIONS.turn():
                            feats, _ = predictor.embedder.embed(todo)
                        self.embedded += len(feats)
            except Exception:  # never let one bad chunk stop the thread; the prediction path is unaffected
                log.exception("Embedding uploaded images ahead of their prediction failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
