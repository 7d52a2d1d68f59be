"""The active model of a running process: loaded once, swapped atomically, safe under concurrent requests.

A request takes :meth:`LiveModel.current` once and uses that predictor to the end, so a swap never
mixes two versions inside one response.
"""
from __future__ import annotations

import logging
import threading

from classifier.predict import Predictor
from classifier.registry import LocalRegistry
from settings import PlatformError, Settings

log = logging.getLogger(__name__)


class LiveModel:
    """Owns the active :class:`Predictor` behind a lock."""

    def __init__(self, registry: LocalRegistry, settings: Settings, warm: bool = True):
        self.registry = registry
        self._warm = warm
        """Whether loading a version starts building its faster graph (see :meth:`start_warming`)."""
        self.settings = settings
        self._lock = threading.Lock()
        self._predictor: Predictor | None = None
        self._loaded = False
        self._followed: dict | None = None
        """The registry's active record this process last acted on."""
        self.warning: str | None = None
        """Why the registry's active version is not the one served, if it is not."""

    def load(self, version: str) -> Predictor:
        """Verify and load a version without activating it; a damaged version raises PlatformError."""
        info = self.registry.verify(version)
        try:
            predictor = Predictor.load(info.path, version, self.settings.embeddings_dir, self.settings.max_image_pixels)
        except PlatformError as exc:
            raise PlatformError(f"Model version {version} cannot be loaded: {exc}") from None
        if self._warm:
            predictor.fm.warm()  # compiles in the background while requests are served eagerly
        return predictor

    def start_warming(self) -> None:
        """From now on, loading a version starts building its faster graph in the background; the version already
        loaded starts now. The app calls it once its server answers, so the build's seconds of both cores are not
        spent while the server is still starting."""
        self._warm = True
        with self._lock:
            predictor = self._predictor
        if predictor is not None:
            predictor.fm.warm()

    def _initial(self) -> Predictor | None:
        """The active version, or — if it is damaged — the newest version that still loads."""
        active = self.registry.active()
        candidates = ([active] if active else []) + [v.version for v in reversed(self.registry.versions()) if v.version != active]
        for version in candidates:
            try:
                predictor = self.load(version)
            except PlatformError as exc:
                log.warning("%s", exc)
                self.warning = self.warning or str(exc)  # the first failure is the active version's: keep it
                continue
            if version != active and active:
                self.warning = f"{self.warning} Serving {version} instead."
            return predictor
        return None

    def current(self) -> Predictor | None:
        """The predictor to use for one request (None when no version exists yet).

        Follows an activation made elsewhere (the CLI, another process): the registry's ``active.json`` is
        read on every call (a small file) and a changed record loads that version first.
        """
        record = self.registry.active_record()
        with self._lock:
            if not self._loaded:
                self._predictor = self._initial()
                self._loaded, self._followed = True, record
                return self._predictor
            if record == self._followed:
                return self._predictor
        self._follow(record)
        with self._lock:
            return self._predictor

    def _follow(self, record: dict | None) -> None:
        """Serve the version ``record`` names; a version that cannot be loaded keeps the old one, with a warning."""
        if record is None:
            return
        try:
            predictor = self.load(record["version"])
        except PlatformError as exc:
            with self._lock:
                self._followed, self.warning = record, str(exc)
            return
        with self._lock:
            self._predictor, self._followed, self.warning = predictor, record, None
        log.info("Following the registry: active model is now %s", record["version"])

    def require(self) -> Predictor:
        predictor = self.current()
        if predictor is None and self.warning:
            raise PlatformError(f"No model version can be served: {self.warning} Train a new version.")
        if predictor is None:
            raise PlatformError("No model has been trained yet: train one first (Train tab, /retrain, or python -m training)")
        return predictor

    def activate(self, version: str, since: float | None = None) -> Predictor:
        """Load ``version`` fully, then make it active here and in the registry in one step (``since``: the
        activation time to record, epoch seconds; default now)."""
        predictor = self.load(version)  # slow part outside the lock; in-flight requests keep the old one
        with self._lock:
            self.registry.set_active(version, since)
            self._predictor, self._loaded, self.warning = predictor, True, None
            self._followed = self.registry.active_record()
        log.info("Active model is now %s", version)
        return predictor
