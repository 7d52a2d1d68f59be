"""Where bulk images come from: a folder, a glob, a ``.zip``, a saved ``datasets`` folder or a Hub dataset id.

A :class:`Source` is small and picklable: the driver lists its keys (one string per image, written to the
output's ``path`` column) and any worker, on any node, reads the bytes of a batch of keys. Keys are
``/abs/file.jpg`` for files, ``archive.zip::member`` for archive members and ``dataset[split][row]`` for
``datasets`` rows, so a rerun lists the same keys in the same order.
"""
from __future__ import annotations

import functools
import glob
import zipfile
from dataclasses import dataclass
from pathlib import Path

from classifier.images import IMAGE_SUFFIXES, list_image_files
from settings import PlatformError

MAX_MEMBER_BYTES = 50 * 1024 * 1024
"""Largest single archive member read (bytes); a larger one is reported as an error, not read."""


@dataclass(frozen=True)
class Source:
    """``kind`` is ``files``, ``zip`` or ``dataset``; ``location`` the folder/glob, archive or dataset."""

    kind: str
    location: str
    split: str = "train"

    def keys(self) -> list[str]:
        """Every image of the source, in a stable order."""
        if self.kind == "files":
            return _file_keys(self.location)
        if self.kind == "zip":
            with _open_zip(self.location) as archive:
                return [f"{self.location}::{m.filename}" for m in archive.infolist()
                        if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_SUFFIXES
                        and not Path(m.filename).name.startswith(".")]
        dataset, _ = _dataset(self.location, self.split)
        return [f"{self.location}[{self.split}][{i}]" for i in range(len(dataset))]

    def read(self, keys: list[str]) -> list[bytes | str]:
        """The bytes of each key, or an error message (str) for one that cannot be read."""
        if self.kind == "files":
            return [_read_file(k) for k in keys]
        if self.kind == "zip":
            with _open_zip(self.location) as archive:
                return [_read_member(archive, k[len(self.location) + 2:]) for k in keys]
        dataset, column = _dataset(self.location, self.split)
        rows = dataset.select([int(k.rsplit("[", 1)[1].rstrip("]")) for k in keys])
        out: list[bytes | str] = []
        for key, cell in zip(keys, rows[column]):
            data = (cell or {}).get("bytes")
            if data is None and (cell or {}).get("path"):
                data = _read_file((cell or {})["path"])
            out.append(data if data else f"{key}: the row holds no image bytes")
        return out


def resolve_source(raw: str) -> Source:
    """Turn a command-line SOURCE into a :class:`Source`; PlatformError when it names nothing usable."""
    path = Path(raw).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return Source("dataset", str(path.resolve()))
        return Source("files", str(path.resolve()))
    if path.is_file() and path.suffix.lower() == ".zip":
        return Source("zip", str(path.resolve()))
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return Source("files", str(path.resolve()))
    if glob.has_magic(raw):
        return Source("files", str(Path(raw).expanduser().absolute()) if not Path(raw).is_absolute() else raw)
    if path.exists():
        raise PlatformError(f"{raw}: not a folder, an image, a .zip or a saved datasets folder")
    if "/" in raw and not raw.startswith((".", "/", "~")):
        return Source("dataset", raw)
    raise PlatformError(f"{raw}: no such file, folder or glob (or a Hub dataset id like 'owner/name')")


def _file_keys(location: str) -> list[str]:
    path = Path(location)
    if path.is_dir():
        return [str(p) for p in list_image_files(path)]
    if path.is_file():
        return [str(path)]
    return sorted(str(Path(p).resolve()) for p in glob.glob(location, recursive=True)
                  if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)


def _read_file(path: str) -> bytes | str:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        return f"{path}: cannot read the file ({exc.strerror or exc})"


def _open_zip(location: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(location)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PlatformError(f"{location} is not a readable .zip file ({exc})") from None


def _read_member(archive: zipfile.ZipFile, member: str) -> bytes | str:
    try:
        with archive.open(member) as fh:
            data = fh.read(MAX_MEMBER_BYTES + 1)
    except (KeyError, OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        return f"{member}: damaged or unsupported archive entry ({exc})"
    return data if len(data) <= MAX_MEMBER_BYTES else f"{member}: over {MAX_MEMBER_BYTES:,} bytes"


@functools.lru_cache(maxsize=2)
def _dataset(location: str, split: str):
    """The dataset (memory-mapped Arrow, images left undecoded) and its image column; once per process."""
    import datasets

    try:
        if Path(location).is_dir():
            loaded = datasets.load_from_disk(location)
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[split if split in loaded else next(iter(loaded))]
        else:
            from hub.datasets import load_hub_dataset  # every Hub call lives in the hub package
            loaded = load_hub_dataset(location, split)
    except PlatformError:
        raise
    except Exception as exc:
        raise PlatformError(f"Could not load the dataset {location!r}: {type(exc).__name__}: {exc}") from None
    column = next((n for n, f in loaded.features.items() if isinstance(f, datasets.Image)), None)
    if column is None:
        raise PlatformError(f"The dataset {location!r} has no image column; it has {list(loaded.features)}")
    return loaded.cast_column(column, datasets.Image(decode=False)), column
