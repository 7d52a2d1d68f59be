"""Real images for the benchmark: Fashion-MNIST (IDX, gzip) written as class-per-folder JPEG trees.

Each 28×28 grey image is upscaled to 150×150 RGB (the size of the Intel scene images) and saved as
a JPEG, so the product reads, decodes and resizes exactly what it would read from a user's folder.
Subsets are slices of a class-interleaved order (image 0 of every class, then image 1 of every
class, …), so every slice is balanced and two slices of one split never share an image. A slice is
written once under ``<root>/fashion-mnist-<split>-<start>-<count>/`` and reused by later runs.
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files."""
CLASSES = ("T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
"""Class names in label-index order ('/' of 'T-shirt/top' is not allowed in a label)."""
IMAGE_SIZE = 150
"""Side of the written JPEGs in pixels."""
JPEG_QUALITY = 90
SPLITS = {"train": "train", "test": "t10k"}
_DONE = ".complete"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzip'ed) as a uint8 array: (n,) for labels, (n, rows, cols) for images."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: holds {data.size} values, its header says {shape}")
    return data.reshape(shape)


def load_split(split: str, source: Path = SOURCE_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) and labels (n,) of ``train`` (60,000) or ``test`` (10,000)."""
    stem = SPLITS[split]
    images = read_idx(source / f"{stem}-images-idx3-ubyte.gz")
    labels = read_idx(source / f"{stem}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def interleaved_order(labels: np.ndarray) -> np.ndarray:
    """Indices in class-round-robin order: the first image of each class, then the second, …"""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        where = np.flatnonzero(labels == cls)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))


def to_jpeg(pixels: np.ndarray, size: int = IMAGE_SIZE) -> bytes:
    """One grey image as JPEG bytes, upscaled (bicubic) to ``size``×``size`` RGB."""
    img = Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L")
    img = img.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def subset_dir(root: Path, split: str, start: int, count: int) -> Path:
    return Path(root) / f"fashion-mnist-{split}-{start}-{count}"


def write_subset(root: Path, split: str, start: int, count: int, source: Path = SOURCE_DIR) -> Path:
    """Write images ``start``…``start+count`` of the split's interleaved order as ``<class>/<split>-<index>.jpg``.

    Returns the folder; a folder written by an earlier run is reused. Written in a staging folder and
    renamed into place, so an interrupted run never leaves a half-written subset behind.
    """
    dest = subset_dir(root, split, start, count)
    if (dest / _DONE).is_file():
        return dest
    images, labels = load_split(split, source)
    order = interleaved_order(labels)
    if start < 0 or count < 1 or start + count > len(order):
        raise ValueError(f"{split} has {len(order)} images; cannot take {count} from {start}")
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=root))
    try:
        for name in CLASSES:
            (staging / name).mkdir()
        for index in order[start:start + count]:
            path = staging / CLASSES[labels[index]] / f"{split}-{index:05d}.jpg"
            path.write_bytes(to_jpeg(images[index]))
        (staging / _DONE).write_text(f"{count}\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %d %s images to %s", count, split, dest)
    return dest


def image_files(folder: Path) -> list[Path]:
    """The JPEGs of a written subset (or of any class-per-folder tree), sorted."""
    from classifier.images import list_image_files
    return list_image_files(Path(folder))
