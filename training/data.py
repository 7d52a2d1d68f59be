"""Training data from a class-per-folder tree, a .zip of one, or a ``datasets`` dataset.

Everything becomes a list of :class:`Sample` (sha256, label, name, lazy bytes). Non-image files,
nested archives and unreadable entries are skipped and counted, never fatal.
"""
from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from classifier.images import IMAGE_SUFFIXES
from classifier.uploads import UNREADABLE_ENTRY
from settings import PlatformError

log = logging.getLogger(__name__)

MAX_ZIP_MEMBER_BYTES = 50 * 1024 * 1024
MAX_ZIP_TOTAL_BYTES = 4 * 1024 * 1024 * 1024
_SPLIT_DIRS = ("seg_train", "train", "training")


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``read()`` returns its bytes (lazily, from disk, an archive or a database)."""

    sha256: str
    label: str
    name: str
    read: Callable[[], bytes] = field(repr=False, compare=False)


@dataclass
class LoadedData:
    samples: list[Sample]
    skipped: dict[str, int] = field(default_factory=dict)
    """Why items were left out → how many (e.g. 'not an image file': 3)."""

    @property
    def classes(self) -> list[str]:
        return sorted({s.label for s in self.samples})


def _normalize(label: str) -> str:
    from labeling.labels import normalize_label
    return normalize_label(label)


def _skip(skipped: dict[str, int], reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1


def find_class_root(root: Path) -> Path:
    """The folder whose sub-folders are the classes, seeing through Kaggle's ``seg_train/seg_train`` nesting."""
    current = root
    for _ in range(4):
        subdirs = [d for d in current.iterdir() if d.is_dir() and not d.name.startswith(".")]
        split = next((d for d in subdirs if d.name.lower() in _SPLIT_DIRS), None)
        has_images = any(f.suffix.lower() in IMAGE_SUFFIXES for f in current.iterdir() if f.is_file())
        if split is not None and not has_images:
            current = split
        elif len(subdirs) == 1 and not has_images and not _holds_images(subdirs[0]):
            current = subdirs[0]  # a wrapper folder; one holding images is the only class, not a wrapper
        else:
            break
    return current


def _holds_images(folder: Path) -> bool:
    return any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir())


def _file_reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def load_folder(root: Path) -> LoadedData:
    """Class-per-folder tree: ``root/<class>/**/<image>``."""
    class_root = find_class_root(root)
    samples, skipped = [], {}
    for class_dir in sorted(d for d in class_root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        try:
            label = _normalize(class_dir.name)
        except PlatformError:
            _skip(skipped, "folder name is not a valid label")
            continue
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                _skip(skipped, "not an image file")
                continue
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                _skip(skipped, "unreadable file")
                continue
            samples.append(Sample(digest, label, path.name, _file_reader(path)))
    return LoadedData(samples, skipped)


def load_zip(path: Path) -> LoadedData:
    """A .zip of a class-per-folder tree, read in memory: member names are only ever labels, never paths."""
    samples, skipped, total = [], {}, 0
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PlatformError(f"{path.name} is not a readable .zip file ({exc})") from None
    with archive:
        for member in archive.infolist():
            parts = [p for p in PurePosixPath(member.filename.replace("\\", "/")).parts if p not in ("", "/")]
            if member.is_dir() or not parts or parts[-1].startswith("."):
                continue
            if any(p == ".." for p in parts) or member.filename.startswith("/"):
                _skip(skipped, "unsafe path in archive")
                continue
            suffix = PurePosixPath(parts[-1]).suffix.lower()
            if suffix == ".zip":
                _skip(skipped, "nested archive")
                continue
            if suffix not in IMAGE_SUFFIXES or len(parts) < 2:
                _skip(skipped, "not an image file in a class folder")
                continue
            if member.file_size > MAX_ZIP_MEMBER_BYTES or total + member.file_size > MAX_ZIP_TOTAL_BYTES:
                _skip(skipped, "file too large")
                continue
            try:
                with archive.open(member) as fh:
                    data = fh.read(MAX_ZIP_MEMBER_BYTES + 1)
            except UNREADABLE_ENTRY:
                _skip(skipped, "damaged or unsupported archive entry")
                continue
            if len(data) > MAX_ZIP_MEMBER_BYTES:  # the header lied about the size (zip bomb)
                _skip(skipped, "file too large")
                continue
            total += len(data)
            try:
                label = _normalize(parts[-2])
            except PlatformError:
                _skip(skipped, "folder name is not a valid label")
                continue
            samples.append(Sample(hashlib.sha256(data).hexdigest(), label, parts[-1], (lambda d=data: d)))
    return LoadedData(samples, skipped)


def load_hf_dataset(dataset) -> LoadedData:
    """A ``datasets.Dataset`` with an Image column and a ClassLabel (or string) label column."""
    import datasets

    image_col = next((n for n, f in dataset.features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((n for n, f in dataset.features.items() if isinstance(f, datasets.ClassLabel)), None)
    label_col = label_col or ("label" if "label" in dataset.features else None)
    if image_col is None or label_col is None:
        raise PlatformError(f"The dataset needs an image column and a label column; it has {list(dataset.features)}")
    names = getattr(dataset.features[label_col], "names", None)
    dataset = dataset.cast_column(image_col, datasets.Image(decode=False))
    samples, skipped = [], {}
    for row in dataset:
        data = (row[image_col] or {}).get("bytes")
        if data is None and (row[image_col] or {}).get("path"):
            try:
                data = Path(row[image_col]["path"]).read_bytes()
            except OSError:
                data = None
        if not data:
            _skip(skipped, "missing image bytes")
            continue
        raw_label = names[row[label_col]] if names else str(row[label_col])
        try:
            label = _normalize(raw_label)
        except PlatformError:
            _skip(skipped, "invalid label")
            continue
        samples.append(Sample(hashlib.sha256(data).hexdigest(), label, f"{len(samples)}.img", (lambda d=data: d)))
    return LoadedData(samples, skipped)


def load_samples(source: str | Path) -> LoadedData:
    """Load a folder, a .zip, a ``save_to_disk`` folder, or (online) a Hub dataset id."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            import datasets
            loaded = datasets.load_from_disk(str(path))
            return load_hf_dataset(loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded)
        return load_folder(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        return load_zip(path)
    if path.exists():
        raise PlatformError(f"{source} is neither a folder nor a .zip of class folders")
    if "/" not in str(source) or str(source).startswith((".", "/", "~")):
        raise PlatformError(f"Dataset {source} not found (expected a folder, a .zip, or a Hub dataset id)")
    from hub.datasets import load_hub_dataset  # every Hub call lives in the hub package
    return load_hf_dataset(load_hub_dataset(str(source)))


def merge_samples(base: Iterable[Sample], human: Iterable[Sample]) -> list[Sample]:
    """Base samples plus human-labelled ones, one per sha256; a human label overrides the dataset's."""
    merged = {s.sha256: s for s in base}
    merged.update({s.sha256: s for s in human})
    return list(merged.values())


def drop_excluded(samples: Iterable[Sample], excluded: set[str]) -> list[Sample]:
    """The samples a person did not remove from training (``excluded``: sha256s, from the store's audit
    decisions); the one place training honours exclusions."""
    return [s for s in samples if s.sha256 not in excluded]
