"""Export of the labelled set, read back with the stock ``datasets`` loaders."""
from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass

import datasets
import pytest
from PIL import Image

from labeling.store import open_store
from settings import PlatformError, load_settings

LABELS = ["cat", "forêt", "山", "cat", "forêt"]


@dataclass
class Upload:
    sha256: str
    data: bytes
    name: str


def _png(i: int) -> Upload:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 40, 200 - i * 30, 17)).save(buffer, "PNG")
    data = buffer.getvalue()
    return Upload(hashlib.sha256(data).hexdigest(), data, f"img{i}.png")


@pytest.fixture
def labelled_store(tmp_path):
    store = open_store(load_settings({"DATA_DIR": str(tmp_path / "data")}))
    images = [_png(i) for i in range(len(LABELS))]
    junk = b"\x00 not an image"
    unreadable = Upload(hashlib.sha256(junk).hexdigest(), junk, "junk.png")
    store.add_images(images + [unreadable])
    store.save_labels([{"sha256": im.sha256, "label": label} for im, label in zip(images, LABELS)])
    store.save_labels([{"sha256": unreadable.sha256, "label": "cat"}])
    yield store, images
    store.close()


def test_imagefolder_export_loads_with_datasets(labelled_store, tmp_path):
    store, images = labelled_store
    out = tmp_path / "export"
    counts = store.export(out, format="imagefolder")
    assert counts["classes"] == {"cat": 2, "forêt": 2, "山": 1} and counts["skipped"] == 1
    assert (out / "forêt" / f"{images[1].sha256[:16]}.png").read_bytes() == images[1].data
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"), split="train")
    names = loaded.features["label"].names
    assert sorted(names) == sorted(["cat", "forêt", "山"])
    assert Counter(names[i] for i in loaded["label"]) == Counter(LABELS)
    assert loaded[0]["image"].size == (16, 16)


def test_datasets_export_round_trips_with_classlabel(labelled_store, tmp_path):
    store, images = labelled_store
    out = tmp_path / "saved"
    counts = store.export(out, format="datasets")
    assert counts["images"] == len(LABELS)
    loaded = datasets.load_from_disk(str(out))
    assert isinstance(loaded.features["label"], datasets.ClassLabel)
    names = loaded.features["label"].names
    by_sha = {row["sha256"]: names[row["label"]] for row in loaded}
    assert by_sha == {im.sha256: label for im, label in zip(images, LABELS)}
    assert loaded[0]["image"].size == (16, 16)


def test_export_refuses_non_empty_directory_and_unknown_format(labelled_store, tmp_path):
    store, _ = labelled_store
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PlatformError, match="not empty"):
        store.export(out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(PlatformError, match="format"):
        store.export(tmp_path / "other", format="zip")
    assert not (tmp_path / "other").exists()
