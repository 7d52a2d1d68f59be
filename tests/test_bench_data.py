"""The benchmark's data writer: Fashion-MNIST IDX files → class-per-folder 150×150 RGB JPEGs."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from bench import data


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def source(tmp_path):
    """A tiny Fashion-MNIST look-alike: 40 training images (4 per class, labels shuffled), 10 test images.

    Image i is a flat grey of value 5·label + 100, so its class can be read back from the pixels."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for stem, n in (("train", 40), ("t10k", 10)):
        labels = rng.permutation(np.arange(n) % 10)
        images = np.repeat((labels * 5 + 100)[:, None, None], 28, axis=1).repeat(28, axis=2)
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


def test_read_idx_shapes_and_header_check(source, tmp_path):
    images, labels = data.load_split("train", source)
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (40,) and sorted(np.bincount(labels)) == [4] * 10
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0\0\0\0")  # float IDX
    with pytest.raises(ValueError):
        data.read_idx(bad)


def test_interleaved_order_cycles_through_classes():
    labels = np.array([3, 3, 1, 0, 1, 0, 2, 2, 3])
    order = data.interleaved_order(labels)
    assert list(labels[order]) == [0, 1, 2, 3, 0, 1, 2, 3, 3]
    assert sorted(order) == list(range(len(labels)))


def test_write_subset_makes_class_folders_of_150px_rgb_jpegs(source, tmp_path):
    folder = data.write_subset(tmp_path / "out", "train", 0, 20, source=source)
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 20
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(data.CLASSES)
    images, labels = data.load_split("train", source)
    for path in files:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (150, 150)
            pixel = np.asarray(img).mean()
        index = int(path.stem.split("-")[1])
        assert path.parent.name == data.CLASSES[labels[index]]
        assert abs(pixel - images[index].mean()) < 3  # the right image went into the right folder
    per_class = [len(list((folder / c).glob("*.jpg"))) for c in data.CLASSES]
    assert per_class == [2] * 10  # 20 images of the interleaved order: two of each class


def test_slices_are_disjoint_and_reused(source, tmp_path, monkeypatch):
    root = tmp_path / "out"
    first = data.write_subset(root, "train", 0, 20, source=source)
    second = data.write_subset(root, "train", 20, 20, source=source)
    names = lambda folder: {p.name for p in folder.rglob("*.jpg")}  # noqa: E731
    assert not names(first) & names(second)
    assert len(names(first) | names(second)) == 40
    monkeypatch.setattr(data, "to_jpeg", lambda *a, **k: pytest.fail("a finished subset was written again"))
    assert data.write_subset(root, "train", 0, 20, source=source) == first
    assert not [p for p in root.iterdir() if p.name.startswith(".writing-")]


def test_out_of_range_subset_is_refused_and_leaves_nothing(source, tmp_path):
    with pytest.raises(ValueError):
        data.write_subset(tmp_path / "out", "test", 5, 10, source=source)
    assert not list((tmp_path / "out").glob("fashion-mnist-*"))


def test_the_product_loads_a_written_subset(source, tmp_path):
    from training.data import load_folder
    folder = data.write_subset(tmp_path / "out", "test", 0, 10, source=source)
    loaded = load_folder(folder)
    assert len(loaded.samples) == 10 and not loaded.skipped
    assert sorted(loaded.classes) == sorted(data.CLASSES)
