"""Export the human-labelled images as stock dataset formats, and push them to the Hub.

- ``imagefolder``: ``OUT/<label dir>/<sha256[:16]>.<ext>``, read back with
  ``datasets.load_dataset("imagefolder", data_dir=OUT)``.
- ``datasets``: a ``datasets.Dataset`` (columns ``image``, ``label`` as ``ClassLabel``,
  ``sha256``) written with ``save_to_disk(OUT)``, read back with ``datasets.load_from_disk``.

The export is built in a temporary sibling directory and renamed into place at the end, so
``OUT`` never holds half an export.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable

from PIL import Image

from labeling.labels import label_to_dirname
from settings import PlatformError, Settings

logger = logging.getLogger(__name__)

FORMATS = ("imagefolder", "datasets")
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def image_extension(data: bytes) -> str | None:
    """File extension (with dot) for the image format of ``data``; None when PIL cannot read it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
    except Exception:  # PIL raises many types for unreadable files
        return None
    if fmt in _EXTENSIONS:
        return _EXTENSIONS[fmt]
    matches = [ext for ext, name in Image.registered_extensions().items() if name == fmt]
    return min(matches) if matches else None


def export_samples(samples: Iterable, out_dir: Path, format: str = "imagefolder") -> dict:
    """Write labelled samples (``.sha256 .label .read()``) to ``out_dir``; returns counts per class."""
    if format not in FORMATS:
        raise PlatformError(f"Export format must be one of {', '.join(FORMATS)}, got {format!r}")
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PlatformError(f"Export directory {out_dir} already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        writer = _write_imagefolder if format == "imagefolder" else _write_datasets
        counts, skipped = writer(list(samples), staging / "out")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging / "out", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported %d image(s) in %d class(es) to %s", sum(counts.values()), len(counts), out_dir)
    return {"format": format, "out_dir": str(out_dir), "images": sum(counts.values()), "skipped": skipped, "classes": dict(sorted(counts.items()))}


def _write_imagefolder(samples: list, out: Path) -> tuple[Counter, int]:
    out.mkdir()
    counts: Counter = Counter()
    skipped = 0
    for sample in samples:
        data = sample.read()
        ext = image_extension(data)
        if ext is None:
            logger.warning("image %s is not readable by PIL; not exported", sample.sha256[:16])
            skipped += 1
            continue
        class_dir = out / label_to_dirname(sample.label)
        class_dir.mkdir(exist_ok=True)
        (class_dir / f"{sample.sha256[:16]}{ext}").write_bytes(data)
        counts[sample.label] += 1
    return counts, skipped


def _write_datasets(samples: list, out: Path) -> tuple[Counter, int]:
    import datasets  # heavy import, only for this format

    names = sorted({s.label for s in samples})
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names), "sha256": datasets.Value("string")}
    )
    counts: Counter = Counter()
    skipped = []

    def rows():
        for sample in samples:
            data = sample.read()
            ext = image_extension(data)
            if ext is None:
                skipped.append(sample.sha256)
                continue
            counts[sample.label] += 1
            yield {"image": {"bytes": data, "path": f"{sample.sha256[:16]}{ext}"}, "label": sample.label, "sha256": sample.sha256}

    # A deterministic fingerprint: the generator closes over the store, which datasets cannot hash.
    fingerprint = hashlib.sha256(repr([(s.sha256, s.label) for s in samples]).encode()).hexdigest()[:32]
    with tempfile.TemporaryDirectory(prefix="labeling-export-cache-") as cache:
        dataset = datasets.Dataset.from_generator(rows, features=features, cache_dir=cache, fingerprint=fingerprint)
        dataset.save_to_disk(str(out))
        del dataset
    if skipped:
        logger.warning("%d image(s) not readable by PIL were not exported", len(skipped))
    return counts, len(skipped)
