"""Keep the local registry and a Hub model repo in step: every new version is pushed in the background;
at start (and on demand) the active version recorded on the Hub is downloaded and served.

Network or auth failures never take the app down: they become a ``hub_error`` message (no token in it)
and the app keeps serving what it has.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time

from huggingface_hub.errors import RepositoryNotFoundError

from hub.models import HubModelRepo, PushQueue
from classifier.live import LiveModel
from classifier.registry import LocalRegistry
from settings import PlatformError, Settings

log = logging.getLogger(__name__)


def commit_message(version: str, info: dict, metrics: dict) -> str:
    """Names the version, the mode and the headline metric, e.g. ``v3: head, val accuracy 0.912``."""
    acc = metrics.get("accuracy")
    headline = f"val accuracy {acc:.3f}" if isinstance(acc, (int, float)) else "no validation metrics"
    return f"{version}: {info.get('mode', '?')} on {metrics.get('train_size', '?')} images, {headline}"


class ModelPublisher:
    """Pushes versions to ``HUB_MODEL_ID`` and pulls the Hub's active version into the local registry."""

    def __init__(self, settings: Settings, registry: LocalRegistry, live: LiveModel,
                 attempts: int = 3, backoff_s=(1.0, 4.0, 15.0)):
        self.repo = HubModelRepo(settings.hub_model_id, settings.hf_token, endpoint=settings.hub_endpoint, private=True)
        self.registry, self.live = registry, live
        self.queue = PushQueue(self.repo, attempts=attempts, backoff_s=backoff_s) if settings.hf_token else None
        self.hub_error: str | None = None
        self._lock = threading.Lock()
        self._recorders: list[threading.Thread] = []

    def publish(self, version: str) -> None:
        """Queue a background push of a registered version (never blocks)."""
        if self.queue is None:
            return
        info = self.registry.get(version)
        self.queue.submit(version, info.path, commit_message(version, info.info, info.metrics()))

    def retry(self, version: str) -> None:
        if self.queue is None:
            raise PlatformError("Pushing needs HF_TOKEN")
        self.queue.retry(version)

    def statuses(self) -> dict[str, dict]:
        return self.queue.statuses() if self.queue else {}

    def _fetch(self, version: str) -> None:
        """Download ``version`` into the registry unless it is already there."""
        if (self.registry.root / version / "version.json").is_file():
            return
        staging = self.registry.root / ".staging" / f"hub-{version}"
        if staging.exists():
            shutil.rmtree(staging)
        folder = self.repo.download_version(version, staging)
        try:
            self.registry.import_version(folder, version)
        finally:
            self.registry.discard(folder)

    def sync(self) -> str | None:
        """Serve the newest activation: the Hub's active version (downloading it if needed), unless this
        machine activated another one later, which is then recorded on the Hub. Returns the version served,
        or None if neither has one. Failures are recorded in ``hub_error`` and logged; they never raise."""
        try:
            record = self.repo.read_active_record()
            local = self.registry.active_record()
            if local and (record is None or (local["since"] > record["activated_at"] and local["version"] != record["version"])):
                if record is not None or self.repo.list_versions():
                    log.info("Keeping %s: activated here after the Hub's %s", local["version"], record and record["version"])
                    self.record_active(local["version"])
                self.hub_error = None
                return local["version"]
            version = record["version"] if record else (self.repo.list_versions() or [None])[-1]
            if version:
                self._fetch(version)
                current = self.live.current()
                if self.registry.active() != version or current is None or current.version != version:
                    self.live.activate(version, since=record["activated_at"] if record else None)
            self.hub_error = None
            return version
        except PlatformError as exc:
            if isinstance(exc.__cause__, RepositoryNotFoundError) and self.queue is not None:
                self.hub_error = None  # nothing published yet: the first push creates the repo
                return None
            self.hub_error = f"The Hub is unreachable, serving the local model: {exc}"
            log.warning("%s", self.hub_error)
            return None

    def activate(self, version: str) -> None:
        """Make ``version`` active, downloading it from the Hub if only the Hub has it; record it there."""
        if not (self.registry.root / version / "version.json").is_file():
            try:
                self._fetch(version)
            except PlatformError as exc:
                raise PlatformError(f"{version} is not here and could not be fetched from the Hub: {exc}") from None
        self.live.activate(version)
        self.record_active(version)

    def record_active(self, version: str) -> None:
        """Write ``active.json`` on the Hub in the background (after pending pushes), so another app follows;
        it carries this machine's activation time, so the newest activation wins everywhere."""
        if self.queue is not None:
            record = self.registry.active_record()
            since = record["since"] if record and record["version"] == version else None
            thread = threading.Thread(target=self._record_active, args=(version, since), daemon=True)
            self._recorders.append(thread)
            thread.start()

    def _record_active(self, version: str, since: float | None) -> None:
        with self._lock:
            try:
                if self.queue is not None:
                    self.queue.wait(timeout=120)  # the tag must exist before active.json names it
                self.repo.write_active(version, activated_at=since)
            except PlatformError as exc:
                self.hub_error = f"Could not record the active version on the Hub: {exc}"
                log.warning("%s", self.hub_error)

    def wait(self, version: str, timeout: float) -> dict | None:
        """Wait up to ``timeout`` seconds for pending pushes and active-version records; returns ``version``'s
        push state (``{"state", "reason"?}``) or None when pushing is off."""
        if self.queue is None:
            return None
        deadline = time.monotonic() + timeout
        self.queue.wait(timeout=timeout)
        for thread in list(self._recorders):
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.queue.statuses().get(version)

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
