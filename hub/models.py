"""Model versions on the Hugging Face Hub: push, list, download, and the shared active version.

A version is a standard image-classification checkpoint folder (``config.json``,
``model.safetensors``, ``preprocessor_config.json``, ``metrics.json``, ``README.md``,
``version.json``). ``push_version`` makes ``main`` of the model repo equal that folder and tags the
commit with the version name (``v1``, ``v2``, …), so ``download_version("v2")`` fetches exactly what
was pushed. An ``active.json`` at the repo root on ``main`` records which version the app serves,
so a second app with an empty data dir serves the same one.

Every Hub failure becomes :class:`settings.PlatformError` with a message a user can act on; no
message or log line ever holds the token. :class:`PushQueue` pushes in a background thread with
retries, so training never waits for the network.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as dt
import glob
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from settings import PlatformError

logger = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^v\d+$")
ACTIVE_FILE = "active.json"
KEPT_ON_MAIN = {".gitattributes", ACTIVE_FILE}
"""Files on ``main`` that a pushed version folder never deletes."""
REPO_ID_PATTERN = re.compile(r"^[\w.-]+/[\w.-]+$")


def describe_hub_error(exc: BaseException, action: str, repo_id: str) -> str:
    """A one-line, user-actionable description of a failed Hub call (never includes a token)."""
    while isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        exc = exc.__cause__  # snapshot_download wraps the real cause
    if isinstance(exc, (httpx2.TransportError, OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return f"Cannot reach the Hugging Face Hub while {action}; check the network connection and try again."
    if isinstance(exc, RevisionNotFoundError):
        return f"Revision not found in {repo_id} while {action}."
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) and exc.response is not None else None
    if status == 401:
        return (f"The Hub refused access to {repo_id} while {action}: HF_TOKEN is missing or invalid, "
                "or the repo is private.")
    if status == 403:
        return f"HF_TOKEN has no write access to {repo_id} (needed while {action})."
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        return f"{repo_id} was not found on the Hub while {action}; check the repo id and HF_TOKEN."
    if status is not None and status >= 500:
        return f"The Hugging Face Hub is unavailable (HTTP {status}) while {action}; try again later."
    if status is not None:
        server_message = exc.server_message if isinstance(exc, HfHubHTTPError) else ""
        return f"The Hub answered HTTP {status} while {action}: {server_message or 'no details'}."
    if isinstance(exc, ValueError):
        return f"The Hub rejected the request while {action}: {exc}"
    if isinstance(exc, OSError):
        return f"Local file error while {action}: {exc.strerror or exc}"
    return f"Unexpected {type(exc).__name__} while {action}."


@contextlib.contextmanager
def hub_errors(action: str, repo_id: str, token: str | None) -> Iterator[None]:
    """Turn any Hub client failure inside the block into a :class:`PlatformError`, token scrubbed."""
    try:
        yield
    except PlatformError:
        raise
    except Exception as exc:
        message = describe_hub_error(exc, action, repo_id)
        if token:
            message = message.replace(token, "***")
        logger.warning("%s", message)
        raise PlatformError(message) from exc


def download_backbone(repo_id: str, token: str | None = None, endpoint: str | None = None) -> Path:
    """The files of the Hub model ``repo_id`` (a ``BACKBONE`` given as a Hub id) in the local Hugging Face cache:
    downloaded once, then read from the cache (also offline, with ``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import snapshot_download
    with hub_errors(f"downloading the backbone {repo_id}", repo_id, token):
        return Path(snapshot_download(repo_id, token=token or None, endpoint=endpoint,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt"]))


def check_repo_id(repo_id: str, variable: str) -> str:
    """Validate an ``owner/name`` repo id read from ``variable`` (for the error message)."""
    if not repo_id or not REPO_ID_PATTERN.match(repo_id):
        raise PlatformError(f"{variable} must look like 'owner/name', got {repo_id!r}")
    return repo_id


def check_version(version: str) -> str:
    if not VERSION_PATTERN.match(version or ""):
        raise PlatformError(f"A version name looks like 'v3', got {version!r}")
    return version


class HubModelRepo:
    """One model repo on the Hub holding every version as a tag (``v1``, ``v2``, …)."""

    def __init__(self, repo_id: str, token: str | None, endpoint: str | None = None, private: bool = False):
        """``endpoint`` None = the library default (``HF_ENDPOINT`` or huggingface.co); ``token`` None = anonymous."""
        self.repo_id = check_repo_id(repo_id, "HUB_MODEL_ID")
        self.private = private
        self._token = token
        # token=False: never fall back to a token saved on this machine; settings is the one source.
        self._api = HfApi(endpoint=endpoint, token=token or False)

    def __repr__(self) -> str:
        return f"HubModelRepo({self.repo_id!r}, endpoint={self._api.endpoint!r})"

    def _errors(self, action: str):
        return hub_errors(action, self.repo_id, self._token)

    def push_version(self, folder: Path, version: str, commit_message: str) -> str:
        """Upload ``folder`` to ``main`` (replacing the previous version's files), tag it ``version``.

        Returns the commit id. A tag of the same name that points elsewhere is moved.
        """
        folder = Path(folder)
        check_version(version)
        if not folder.is_dir() or not any(folder.iterdir()):
            raise PlatformError(f"Version folder {folder} is missing or empty")
        with self._errors(f"pushing {version} to {self.repo_id}"):
            self._api.create_repo(self.repo_id, repo_type="model", private=self.private, exist_ok=True)
            stale = self._stale_files(folder)
            info = self._api.upload_folder(
                repo_id=self.repo_id, folder_path=folder, commit_message=commit_message, revision="main",
                delete_patterns=[glob.escape(path) for path in stale] or None,
            )
            self._tag(version, info.oid, commit_message)
        logger.info("Pushed %s to %s at commit %s", version, self.repo_id, info.oid)
        return info.oid

    def _stale_files(self, folder: Path) -> list[str]:
        """Files on ``main`` that are not in ``folder`` (left by an earlier version)."""
        local = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        remote = self._api.list_repo_files(self.repo_id, revision="main")
        return sorted(set(remote) - local - KEPT_ON_MAIN)

    def _tag(self, version: str, commit: str, message: str) -> None:
        tags = {tag.name: tag.target_commit for tag in self._api.list_repo_refs(self.repo_id).tags}
        if tags.get(version) == commit:
            return
        if version in tags:
            logger.warning("Tag %s of %s pointed to %s; moving it to %s", version, self.repo_id, tags[version], commit)
            self._api.delete_tag(self.repo_id, tag=version)
        self._api.create_tag(self.repo_id, tag=version, revision=commit, tag_message=message)

    def list_versions(self) -> list[str]:
        """Version tags (``v<number>``), oldest first."""
        with self._errors(f"listing versions of {self.repo_id}"):
            refs = self._api.list_repo_refs(self.repo_id)
        names = [tag.name for tag in refs.tags if VERSION_PATTERN.match(tag.name)]
        return sorted(names, key=lambda name: int(name[1:]))

    def download_version(self, version: str, dest: Path | None = None) -> Path:
        """Fetch the files tagged ``version`` into ``dest`` (created; must not hold files) or the HF cache.

        The folder appears complete or not at all: files land in a hidden sibling first.
        """
        check_version(version)
        action = f"downloading {version} of {self.repo_id}"
        if dest is None:
            with self._errors(action):
                return Path(self._api.snapshot_download(self.repo_id, revision=version))
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise PlatformError(f"Cannot download {version} into {dest}: the folder is not empty")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            with self._errors(action):
                self._api.snapshot_download(self.repo_id, revision=version, local_dir=staging)
            shutil.rmtree(staging / ".cache", ignore_errors=True)  # the client's download bookkeeping
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("Downloaded %s of %s into %s", version, self.repo_id, dest)
        return dest

    def read_active(self) -> str | None:
        """The version recorded in ``active.json`` on ``main``, or None when there is none yet."""
        record = self.read_active_record()
        return record["version"] if record else None

    def read_active_record(self) -> dict | None:
        """``{"version", "activated_at"}`` from ``active.json`` on ``main`` (``activated_at``: when it was
        activated, epoch seconds; 0 when an older file lacks it), or None when there is none yet."""
        url = hf_hub_url(self.repo_id, ACTIVE_FILE, revision="main", endpoint=self._api.endpoint)
        with self._errors(f"reading the active version of {self.repo_id}"), tempfile.TemporaryDirectory() as cache:
            try:
                # A probe without retries first: at app start an outage should fail fast, not back off.
                commit = self._api.get_hf_file_metadata(url=url).commit_hash
            except EntryNotFoundError:
                return None
            path = self._api.hf_hub_download(self.repo_id, ACTIVE_FILE, revision=commit, cache_dir=cache)
            text = Path(path).read_text(encoding="utf-8")
        try:
            record = json.loads(text)
            version = record.get("version")
            activated_at = float(record.get("activated_at") or 0.0)
        except (ValueError, AttributeError, TypeError):
            version = None
        if not isinstance(version, str) or not VERSION_PATTERN.match(version):
            logger.warning("Ignoring malformed %s in %s", ACTIVE_FILE, self.repo_id)
            return None
        return {"version": version, "activated_at": activated_at}

    def write_active(self, version: str, activated_at: float | None = None) -> str:
        """Record ``version`` (an existing tag) as the active one, activated at ``activated_at`` (epoch seconds,
        default now); returns the commit id."""
        check_version(version)
        if version not in self.list_versions():
            raise PlatformError(f"{version} is not a version in {self.repo_id}")
        now = dt.datetime.now(dt.timezone.utc)
        payload = json.dumps({"version": version, "updated": now.isoformat(),
                              "activated_at": now.timestamp() if activated_at is None else activated_at}, indent=2)
        with self._errors(f"recording {version} as active in {self.repo_id}"):
            info = self._api.create_commit(
                self.repo_id, operations=[CommitOperationAdd(ACTIVE_FILE, payload.encode())],
                commit_message=f"Activate {version}", revision="main",
            )
        return info.oid


class PushQueue:
    """Pushes versions to the Hub in one background thread, with retries; ``submit`` never blocks.

    ``statuses()`` maps version → ``{"state": "pending"|"pushed"|"failed", "reason": str|None,
    "attempts": int, "commit": str|None}``.
    """

    def __init__(self, repo: HubModelRepo, attempts: int = 3, backoff_s: Sequence[float] = (0.5, 1.0, 2.0)):
        """``backoff_s[i]`` is the wait in seconds after failed attempt ``i + 1`` (the last value repeats)."""
        if attempts < 1 or not backoff_s:
            raise PlatformError("PushQueue needs at least one attempt and one backoff value")
        self._repo, self._attempts, self._backoff = repo, attempts, tuple(backoff_s)
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._work: dict[str, tuple[Path, str]] = {}
        self._queued: set[str] = set()
        """Versions waiting in the queue (not yet started): a new submit only updates their folder."""
        self._status: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-push", daemon=True)
        self._thread.start()

    def submit(self, version: str, folder: Path, message: str) -> None:
        """Queue a push of ``folder`` as ``version``."""
        check_version(version)
        with self._lock:
            self._work[version] = (Path(folder), message)
            self._status[version] = {"state": "pending", "reason": None, "attempts": 0, "commit": None}
            if version in self._queued:
                return
            self._queued.add(version)
        self._jobs.put(version)

    def retry(self, version: str) -> None:
        """Queue a failed (or finished) push again."""
        with self._lock:
            if version not in self._work:
                raise PlatformError(f"No push of {version} was submitted")
            if self._status[version]["state"] == "pending":
                return
            self._status[version] = {"state": "pending", "reason": None, "attempts": 0, "commit": None}
            self._queued.add(version)
        self._jobs.put(version)

    def statuses(self) -> dict[str, dict]:
        """A copy of every version's push status."""
        with self._lock:
            return copy.deepcopy(self._status)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(s["state"] == "pending" for s in self.statuses().values()):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (an attempt in flight finishes; waits are cut short)."""
        self._stop.set()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (version := self._jobs.get()) is not None and not self._stop.is_set():
            try:
                self._push_with_retries(version)
            except Exception:  # never let one push kill the worker
                logger.exception("Push of %s failed unexpectedly", version)
                self._set(version, state="failed", reason="unexpected error; see the server log")

    def _set(self, version: str, **changes) -> None:
        with self._lock:
            self._status[version].update(changes)

    def _push_with_retries(self, version: str) -> None:
        with self._lock:
            self._queued.discard(version)
            folder, message = self._work[version]
        for attempt in range(1, self._attempts + 1):
            try:
                commit = self._repo.push_version(folder, version, message)
            except PlatformError as exc:
                last = attempt == self._attempts
                self._set(version, attempts=attempt, reason=str(exc), **({"state": "failed"} if last else {}))
                if last:
                    logger.warning("Giving up pushing %s after %d attempts: %s", version, attempt, exc)
                    return
                if self._stop.wait(self._backoff[min(attempt - 1, len(self._backoff) - 1)]):
                    return
                continue
            self._set(version, state="pushed", reason=None, attempts=attempt, commit=commit)
            return
