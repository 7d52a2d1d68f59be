"""The label journal: every saved label change, appended to a dataset repo on the Hub.

A Space's disk is wiped on restart; the journal is how labels survive it. Each change is written
to a local folder first (fsync'd), then pushed by a ``huggingface_hub.CommitScheduler`` — on every
append and on a timer. The local folder and the dataset repo share one layout:

- ``journal/<UTC time>-<id>.jsonl``: one row per change ``{id, sha256, label, previous, user,
  time, model_version}``; each process writes its own files, so writers never overwrite each other.
- ``images/<sha256[:2]>/<sha256>.<ext>``: each labelled image, once.
- ``images/metadata.jsonl`` + ``README.md``: the current label of every image, so
  ``datasets.load_dataset("<repo>")`` gives an image/label dataset. It is a view rebuilt from the
  full journal (remote + local) by the last pushing process; the journal rows are the record.

``replay()`` downloads the journal and images so an app with an empty database can reload them.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitScheduler, HfApi
from PIL import Image

from hub.models import check_repo_id, hub_errors
from classifier.registry import fsync_dir
from settings import PlatformError

logger = logging.getLogger(__name__)

ROW_FIELDS = ("id", "sha256", "label", "previous", "user", "time", "model_version")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
JOURNAL_FILE_MAX_BYTES = 1_000_000
"""A journal file is closed and a new one started past this size (bytes), to keep re-uploads small."""
IMAGE_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
DATASET_CARD = """---
configs:
- config_name: default
  data_dir: images
task_categories:
- image-classification
---
# Label journal

Written by the image-classification platform. `journal/*.jsonl` holds every label change in order
(`sha256`, `label`, `previous`, `user`, `time`, `model_version`); `images/` holds each image once,
named by its SHA-256; `images/metadata.jsonl` gives each image's current label, so
`datasets.load_dataset("<this repo>")` returns `image` + `label`.
"""


def _utc_iso(value: object) -> str:
    """A timestamp as UTC ISO-8601 with microseconds, so string order is time order."""
    if value is None:
        stamp = dt.datetime.now(dt.timezone.utc)
    elif isinstance(value, dt.datetime):
        stamp = value
    else:
        try:
            stamp = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise PlatformError(f"Label time must be ISO-8601, got {value!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _image_extension(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or ""
    except Exception:
        raise PlatformError("An image sent to the label journal is not a readable image file") from None
    return IMAGE_EXTENSIONS.get(fmt, fmt.lower() or "img")


def _write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _read_rows(files: list[Path]) -> list[dict]:
    """Rows of the given journal files, in file order; a torn last line (crash mid-write) is skipped."""
    rows = []
    for path in sorted(files, key=lambda p: p.name):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                logger.warning("Skipping an unreadable line in %s", path.name)
    return rows


class _JournalScheduler(CommitScheduler):
    """A CommitScheduler whose push is the journal's own (consistent snapshot, explicit file list)."""

    def __init__(self, *, push, **kwargs):
        self._journal_push = push
        super().__init__(**kwargs)

    def push_to_hub(self):
        return self._journal_push()


class LabelJournal:
    """Append-only label journal in ``journal_dir``, pushed to the dataset repo ``repo_id``."""

    def __init__(self, journal_dir: Path, repo_id: str, token: str | None, endpoint: str | None = None,
                 every_minutes: float = 1.0, private: bool = True):
        """``every_minutes``: timer between pushes besides the push after each append.

        ``private``: visibility if the dataset repo has to be created. Without a token the journal
        stays local (logged once) and ``replay`` reads a public repo.
        """
        self.dir = Path(journal_dir)
        self.repo_id = check_repo_id(repo_id, "HUB_DATASET_ID")
        self._token, self._every, self._private = token, every_minutes, private
        self._api = HfApi(endpoint=endpoint, token=token or False)
        self._lock = threading.Lock()
        (self.dir / "journal").mkdir(parents=True, exist_ok=True)
        if not (self.dir / "README.md").exists():
            _write_durably(self.dir / "README.md", DATASET_CARD.encode())
        self._labels: dict[str, tuple[str, str, str | None]] = {}  # sha256 → (time, id, label)
        self._seen_ids: set[str] = set()
        self._image_names = {p.stem: p.relative_to(self.dir).as_posix() for p in self._local_images()}
        local_rows = _read_rows(list((self.dir / "journal").glob("*.jsonl")))
        self._fold(local_rows)
        self._rows_written, self._rows_pushed = len(local_rows), 0  # local rows count as pending until a push
        self._uploaded: dict[str, tuple[int, int]] = {}  # relpath → (mtime_ns, size) last pushed
        self._state_loaded = False  # remote journal folded in (needed before writing metadata.jsonl)
        self._journal_file: Path | None = None
        self._scheduler: _JournalScheduler | None = None
        self._closed = threading.Event()
        self._connected = threading.Event()
        self._wake = threading.Event()
        if token:
            threading.Thread(target=self._connect_loop, name="label-journal-connect", daemon=True).start()
        else:
            logger.warning("HF_TOKEN is not set: label changes stay in %s and are not pushed to %s", self.dir, repo_id)

    def _local_images(self) -> list[Path]:
        return [p for p in (self.dir / "images").glob("*/*") if p.is_file() and not p.name.startswith(".")]

    def _fold(self, rows: list[dict]) -> None:
        """Merge rows into the current-label state (latest time wins); remember their ids."""
        for row in rows:
            key = (row.get("time") or "", row.get("id") or "")
            if key >= self._labels.get(row["sha256"], ("", "", None))[:2]:
                self._labels[row["sha256"]] = (*key, row.get("label"))
            self._seen_ids.add(row.get("id") or "")

    # --- writing ------------------------------------------------------------------------------
    def append(self, rows: list[dict], images: dict[str, bytes]) -> None:
        """Write label changes (and new images, by sha256) durably to the local journal, then push.

        Never waits for the network. Each row needs ``sha256`` and ``label``; ``time`` defaults to now.
        """
        prepared = [self._prepare_row(row) for row in rows]
        for sha, data in images.items():
            if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != sha:
                raise PlatformError(f"Image bytes do not match their sha256 {sha[:12]}…")
        with self._lock:
            for sha, data in images.items():
                if sha not in self._image_names:
                    name = f"images/{sha[:2]}/{sha}.{_image_extension(data)}"
                    _write_durably(self.dir / name, data)
                    self._image_names[sha] = name
            if prepared:
                self._append_lines(b"".join(json.dumps(row).encode() + b"\n" for row in prepared))
                self._fold(prepared)
                self._rows_written += len(prepared)
        self._request_push()

    @staticmethod
    def _prepare_row(row: dict) -> dict:
        sha = row.get("sha256")
        if not isinstance(sha, str) or not SHA256_PATTERN.match(sha):
            raise PlatformError(f"A label row needs a lowercase hex sha256, got {sha!r}")
        if "label" not in row:
            raise PlatformError("A label row needs a 'label' (None to clear it)")
        prepared = {name: row.get(name) for name in ROW_FIELDS}
        prepared["id"] = str(row.get("id") or uuid.uuid4().hex)
        prepared["time"] = _utc_iso(row.get("time"))
        return prepared

    def _append_lines(self, data: bytes) -> None:
        """Append to this process's journal file (fsync'd), starting a new file past the size cap."""
        path = self._journal_file
        if path is None or path.stat().st_size + len(data) > JOURNAL_FILE_MAX_BYTES:
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            path = self._journal_file = self.dir / "journal" / f"{stamp}-{uuid.uuid4().hex[:12]}.jsonl"
        is_new = not path.exists()
        with open(path, "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if is_new:
            fsync_dir(path.parent)

    def pending(self) -> int:
        """Label rows written locally but not yet pushed to the Hub."""
        with self._lock:
            return self._rows_written - self._rows_pushed

    # --- pushing ------------------------------------------------------------------------------
    def _connect_loop(self) -> None:
        """Start the CommitScheduler (it creates the repo); retry while the Hub is unreachable."""
        while not self._closed.is_set():
            try:
                with hub_errors(f"connecting the label journal to {self.repo_id}", self.repo_id, self._token):
                    scheduler = _JournalScheduler(
                        push=self._push, repo_id=self.repo_id, repo_type="dataset", folder_path=self.dir,
                        every=self._every, private=self._private, hf_api=self._api)
                with self._lock:
                    if self._closed.is_set():  # close() ran while connecting: nobody would stop it later
                        scheduler.stop()
                        return
                    self._scheduler = scheduler
                self._connected.set()
                return
            except PlatformError:
                self._wake.wait(self._every * 60)
                self._wake.clear()

    def _request_push(self) -> None:
        if self._scheduler is not None:
            self._scheduler.trigger()
        else:
            self._wake.set()

    def _changed_files(self) -> list[tuple[str, tuple[int, int]]]:
        """Local files (relpath, stamp) not pushed in their current state; hidden/temp files skipped."""
        changed = []
        for path in sorted(self.dir.rglob("*")):
            rel = path.relative_to(self.dir).as_posix()
            if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):
                continue
            stat = path.stat()
            if self._uploaded.get(rel) != (stat.st_mtime_ns, stat.st_size):
                changed.append((rel, (stat.st_mtime_ns, stat.st_size)))
        return changed

    def _push(self):
        """One push (runs in the scheduler's worker thread): rebuild metadata, commit changed files."""
        with hub_errors(f"pushing the label journal to {self.repo_id}", self.repo_id, self._token):
            with self._lock:
                if not self._changed_files():
                    self._rows_pushed = self._rows_written
                    return None
            if not self._state_loaded:
                self._load_remote_state()
            with self._lock:
                self._write_metadata()
                rows_written, changed = self._rows_written, self._changed_files()
                contents = {rel: (self.dir / rel).read_bytes() for rel, _ in changed}
            info = self._api.create_commit(
                self.repo_id, repo_type="dataset", commit_message=f"Label journal: {len(changed)} file(s)",
                operations=[CommitOperationAdd(rel, data) for rel, data in contents.items()])
            with self._lock:
                self._uploaded.update(changed)
                self._rows_pushed = max(self._rows_pushed, rows_written)
        logger.info("Pushed %d label journal file(s) to %s", len(changed), self.repo_id)
        return info

    def _load_remote_state(self) -> None:
        """Fold the journal rows already on the Hub into the current-label state (no images fetched)."""
        rows, names, _ = self._download(with_images=False)
        with self._lock:
            self._fold([row for row in rows if row.get("id") not in self._seen_ids])
            for name in names:
                self._image_names.setdefault(Path(name).stem, name)
            self._state_loaded = True

    def _write_metadata(self) -> None:
        """Rewrite ``images/metadata.jsonl`` (current label per image) when its content changed."""
        lines = [json.dumps({"file_name": self._image_names[sha].removeprefix("images/"), "sha256": sha,
                             "label": label})
                 for sha, (_, _, label) in sorted(self._labels.items())
                 if sha in self._image_names and label is not None]  # None: the label was removed (an undo)
        data = "".join(line + "\n" for line in lines).encode()
        path = self.dir / "images" / "metadata.jsonl"
        if lines and (not path.exists() or path.read_bytes() != data):
            _write_durably(path, data)

    # --- reading back -------------------------------------------------------------------------
    def _download(self, with_images: bool) -> tuple[list[dict], list[str], dict[str, bytes]]:
        """Journal rows on the Hub, every image path there, and (if asked) image bytes by sha256."""
        patterns = ["journal/*.jsonl", "images/*/*"] if with_images else ["journal/*.jsonl"]
        with tempfile.TemporaryDirectory() as tmp:
            if self._token:
                self._api.create_repo(self.repo_id, repo_type="dataset", private=self._private, exist_ok=True)
            self._api.snapshot_download(self.repo_id, repo_type="dataset", local_dir=tmp, allow_patterns=patterns)
            names = [n for n in self._api.list_repo_files(self.repo_id, repo_type="dataset")
                     if n.startswith("images/") and n.count("/") == 2]
            rows = _read_rows(list((Path(tmp) / "journal").glob("*.jsonl")))
            images = {p.stem: p.read_bytes() for p in Path(tmp).glob("images/*/*")} if with_images else {}
        return rows, names, images

    def replay(self) -> tuple[list[dict], dict[str, bytes]]:
        """All label rows (Hub + local, each once, in time order) and image bytes by sha256.

        For an app starting with an empty database; the rows are not appended again.
        """
        with hub_errors(f"replaying the label journal from {self.repo_id}", self.repo_id, self._token):
            remote_rows, names, images = self._download(with_images=True)
        with self._lock:
            local = _read_rows(list((self.dir / "journal").glob("*.jsonl")))
            images.update({p.stem: p.read_bytes() for p in self._local_images()})
            unique: dict[str, dict] = {}
            for row in remote_rows + local:
                unique.setdefault(row.get("id") or json.dumps(row, sort_keys=True), row)
            rows = sorted(unique.values(), key=lambda row: row.get("time") or "")
            self._fold([row for row in rows if row.get("id") not in self._seen_ids])
            for name in names:
                self._image_names.setdefault(Path(name).stem, name)
            self._state_loaded = True
        logger.info("Replayed %d label rows and %d images from %s", len(rows), len(images), self.repo_id)
        return rows, images

    # --- lifecycle ------------------------------------------------------------------------------
    def flush(self, timeout: float = 30.0) -> bool:
        """Push now and wait up to ``timeout`` seconds; True when nothing is left pending."""
        deadline = time.monotonic() + timeout
        self._wake.set()  # a connect attempt waiting out the Hub's outage tries again now
        if self._token and self._connected.wait(timeout) and self._scheduler is not None:
            try:
                self._scheduler.trigger().result(max(0.0, deadline - time.monotonic()))
            except Exception:  # already logged by the push; the rows stay pending
                pass
        return self.pending() == 0

    def close(self, timeout: float = 10.0) -> None:
        """Push what is pending (waiting up to ``timeout`` s) and stop the scheduler."""
        with self._lock:
            self._closed.set()
        self._wake.set()
        if self._scheduler is not None:
            self.flush(timeout)
            self._scheduler.stop()
