"""Versioned model registry on the local disk: ``v1``, ``v2``, … under ``DATA_DIR/models``.

A run writes into a staging folder; :meth:`LocalRegistry.register` gives it the next version name and
renames it into place in one step, so a crash never leaves a half-written version listed. The active
version is one small JSON file replaced atomically.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from classifier.embeddings import file_digest
from settings import PlatformError

VERSION_RE = re.compile(r"^v(\d+)$")
EVALUATIONS_FILE = "evaluations.json"
"""Scores of versions on evaluation sets and promotion decisions, beside the versions."""
REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "version.json")


@dataclass
class VersionInfo:
    """What the registry knows of one version (``info`` is its ``version.json``)."""

    version: str
    path: Path
    info: dict = field(default_factory=dict)

    @property
    def number(self) -> int:
        return int(self.version[1:])

    def metrics(self) -> dict:
        return self._json("metrics.json")

    def params(self) -> dict:
        """The training parameters the run used (``params.json``; empty for versions made elsewhere)."""
        return self._json("params.json")

    def _json(self, name: str) -> dict:
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return {}


def write_json_atomic(path: Path, data) -> None:
    """Write JSON so readers see the old file or the new one, never a torn one (fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def version_number(version: str) -> int:
    match = VERSION_RE.match(str(version).strip())
    if not match:
        raise PlatformError(f"{version!r} is not a version name; versions look like 'v1', 'v2', …")
    return int(match.group(1))


class LocalRegistry:
    """Model versions as Hugging Face folders under ``root``; one of them active."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._active_file = self.root / "active.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def versions(self) -> list[VersionInfo]:
        """Every complete version, oldest first."""
        found = []
        for child in self.root.iterdir():
            if child.is_dir() and VERSION_RE.match(child.name) and (child / "version.json").is_file():
                try:
                    info = json.loads((child / "version.json").read_text())
                except (OSError, ValueError):
                    info = {"error": "version.json is unreadable"}
                found.append(VersionInfo(child.name, child, info))
        return sorted(found, key=lambda v: v.number)

    def get(self, version: str) -> VersionInfo:
        version_number(version)
        path = self.root / version
        if not (path / "version.json").is_file():
            known = ", ".join(v.version for v in self.versions()) or "none yet"
            raise PlatformError(f"There is no model version {version} (versions: {known})")
        return VersionInfo(version, path, json.loads((path / "version.json").read_text()))

    def active(self) -> str | None:
        """The active version's name, or None when none is set (or it no longer exists)."""
        record = self.active_record()
        return record["version"] if record else None

    def active_record(self) -> dict | None:
        """``{"version", "since"}`` of the active version (``since``: when it was activated, epoch seconds)."""
        try:
            record = json.loads(self._active_file.read_text())
        except (OSError, ValueError):
            return None
        version = record.get("version") if isinstance(record, dict) else None
        if not version or not (self.root / str(version) / "version.json").is_file():
            return None
        return {"version": version, "since": float(record.get("since") or 0.0)}

    def stage(self) -> Path:
        """A fresh staging folder for a run to write its checkpoint into."""
        staging = self.root / ".staging"
        staging.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(dir=staging, prefix=time.strftime("%Y%m%d-%H%M%S-")))

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def clean_staging(self, min_age_s: float = 86400.0) -> int:
        """Remove staging folders left by crashed runs (older than ``min_age_s`` seconds, so a run still
        going in another process keeps its folder); returns how many were removed."""
        staging = self.root / ".staging"
        now = time.time()
        leftovers = [p for p in staging.iterdir() if now - p.stat().st_mtime > min_age_s] if staging.is_dir() else []
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return len(leftovers)

    def register(self, staged: Path, info: dict, finalize: Callable[[Path, str], None] | None = None) -> str:
        """Give ``staged`` the next version name and move it into place atomically; returns the name.

        ``finalize(folder, version)`` may write files that need the name (a model card) first.
        """
        missing = [f for f in REQUIRED_FILES[:-1] if not (staged / f).is_file()]
        if missing:
            raise PlatformError(f"The checkpoint is incomplete (missing {', '.join(missing)}); not registered")
        with self._locked():
            numbers = [v.number for v in self.versions()]
            numbers += [int(p.name[1:]) for p in self.root.iterdir() if VERSION_RE.match(p.name)]
            version = f"v{max(numbers, default=0) + 1}"
            if finalize:
                finalize(staged, version)
            record = dict(info, version=version, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          weights_sha256=file_digest(staged / "model.safetensors", 64))
            write_json_atomic(staged / "version.json", record)
            fsync_dir(staged)
            os.rename(staged, self.root / version)
            fsync_dir(self.root)
        return version

    def verify(self, version: str) -> VersionInfo:
        """Check a version's files are all there and its weights match the recorded checksum."""
        info = self.get(version)
        missing = [f for f in REQUIRED_FILES if not (info.path / f).is_file()]
        if missing:
            raise PlatformError(f"Model version {version} is damaged: missing {', '.join(missing)}")
        expected = info.info.get("weights_sha256")
        if expected and file_digest(info.path / "model.safetensors", 64) != expected:
            raise PlatformError(f"Model version {version} is damaged: its weights do not match their checksum")
        return info

    def set_active(self, version: str, since: float | None = None) -> None:
        """Make ``version`` active; ``since`` (epoch seconds, default now) orders activations across machines."""
        self.get(version)
        write_json_atomic(self._active_file, {"version": version, "since": time.time() if since is None else since})

    # Evaluations and promotion decisions live beside the versions (whose folders never change once written).
    def _sidecar(self) -> dict:
        try:
            return json.loads((self.root / EVALUATIONS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _update_sidecar(self, section: str, version: str, key: str | None, value: dict) -> None:
        with self._locked():
            data = self._sidecar()
            entry = data.setdefault(section, {}).setdefault(version, {})
            if key is None:
                data[section][version] = value
            else:
                entry[key] = value
            write_json_atomic(self.root / EVALUATIONS_FILE, data)

    def score(self, version: str, set_digest: str) -> dict | None:
        """A version's recorded score on an evaluation set (``{"accuracy", "images"}``), or None."""
        return self._sidecar().get("scores", {}).get(version, {}).get(set_digest)

    def record_score(self, version: str, set_digest: str, score: dict) -> None:
        self._update_sidecar("scores", version, set_digest, score)

    def promotion(self, version: str) -> dict | None:
        """The promotion decision taken when ``version`` was trained (``promoted``, ``reason``, …), or None."""
        return self._sidecar().get("promotions", {}).get(version)

    def record_promotion(self, version: str, decision: dict) -> None:
        self._update_sidecar("promotions", version, None, decision)

    def import_version(self, folder: Path, version: str) -> VersionInfo:
        """Copy a complete version folder (e.g. downloaded from the Hub) in under its own name."""
        version_number(version)
        if (self.root / version / "version.json").is_file():
            return self.get(version)
        staged = self.stage()
        shutil.copytree(folder, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
        with self._locked():
            if not (self.root / version).exists():
                os.rename(staged, self.root / version)
        self.discard(staged)
        return self.get(version)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
