"""Training data (training/data.py): folders, Kaggle nesting, .zip archives, ``datasets`` folders, and
junk that is skipped and counted instead of crashing a run."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from classifier.registry import LocalRegistry
from conftest import write_dataset
from settings import PlatformError
from training.config import TrainConfig
from training.data import Sample, find_class_root, load_samples, merge_samples
from training.run import train_version

CLASSES = ["circles", "squares", "stripes"]


def counts(loaded) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in loaded.samples:
        out[s.label] = out.get(s.label, 0) + 1
    return out


def test_class_per_folder_tree(dataset_dir):
    loaded = load_samples(dataset_dir)
    assert loaded.classes == CLASSES and counts(loaded) == {c: 10 for c in CLASSES}
    assert loaded.skipped == {}
    first = loaded.samples[0]
    assert first.read() == (dataset_dir / first.label / first.name).read_bytes()
    assert len({s.sha256 for s in loaded.samples}) == 30


def test_images_in_sub_folders_of_a_class_belong_to_it(tmp_path):
    write_dataset(tmp_path / "ds", per_class=2)
    (tmp_path / "ds" / "circles" / "more").mkdir()
    shutil.copy(tmp_path / "ds" / "squares" / "squares_0.jpg", tmp_path / "ds" / "circles" / "more" / "odd.jpg")
    loaded = load_samples(tmp_path / "ds")
    assert counts(loaded) == {"circles": 3, "squares": 2, "stripes": 2}


def test_a_wrapper_folder_is_seen_through_but_a_single_class_is_kept(tmp_path):
    write_dataset(tmp_path / "wrapped" / "my photos", per_class=2)
    assert counts(load_samples(tmp_path / "wrapped")) == {c: 2 for c in CLASSES}
    write_dataset(tmp_path / "single", per_class=3, classes=["circles"])
    assert counts(load_samples(tmp_path / "single")) == {"circles": 3}


def test_kaggle_doubled_nesting_is_seen_through(tmp_path):
    write_dataset(tmp_path / "intel" / "seg_train" / "seg_train", per_class=3)
    loaded = load_samples(tmp_path / "intel" / "seg_train")
    assert counts(loaded) == {c: 3 for c in CLASSES}


def test_kaggle_root_with_train_test_and_pred_picks_seg_train(tmp_path):
    root = tmp_path / "intel"
    write_dataset(root / "seg_train" / "seg_train", per_class=4)
    write_dataset(root / "seg_test" / "seg_test", per_class=2, offset=50)
    pred = write_dataset(tmp_path / "pred", per_class=1, classes=["circles"]) / "circles"
    shutil.copytree(pred, root / "seg_pred" / "seg_pred")
    assert find_class_root(root) == root / "seg_train" / "seg_train"
    loaded = load_samples(root)
    assert counts(loaded) == {c: 4 for c in CLASSES}
    assert all(int(s.name.split("_")[-1].split(".")[0]) < 50 for s in loaded.samples)


def test_zip_of_a_dataset_skips_unsafe_and_nested_entries_and_writes_nothing(dataset_dir, tmp_path):
    archive = tmp_path / "upload" / "data.zip"
    archive.parent.mkdir()
    jpg = (dataset_dir / "circles" / "circles_0.jpg").read_bytes()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(dataset_dir.rglob("*.jpg")):
            zf.write(path, f"seg_train/seg_train/{path.parent.name}/{path.name}")
        zf.writestr("../evil.jpg", jpg)
        zf.writestr(zipfile.ZipInfo("/tmp/evil-absolute.jpg"), jpg)
        zf.writestr("seg_train/circles/../../../evil2.jpg", jpg)
        zf.writestr("seg_train/seg_train/circles/inner.zip", b"PK\x05\x06" + b"\0" * 18)
        zf.writestr("seg_train/seg_train/circles/notes.txt", "hello")
        zf.writestr("loose.jpg", jpg)
        zf.writestr("seg_train/seg_train/squares/", "")
    before = sorted(p for p in tmp_path.rglob("*"))
    loaded = load_samples(archive)
    assert counts(loaded) == {c: 10 for c in CLASSES}
    assert loaded.skipped == {"unsafe path in archive": 3, "nested archive": 1,
                              "not an image file in a class folder": 2}
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/evil-absolute.jpg").exists() and not (tmp_path / "evil.jpg").exists()
    sample = next(s for s in loaded.samples if s.name == "circles_0.jpg")
    assert sample.read() == jpg and sample.label == "circles"


def test_unreadable_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PlatformError, match="broken.zip is not a readable .zip file"):
        load_samples(bad)


@pytest.fixture(scope="module")
def saved_datasets(dataset_dir, tmp_path_factory):
    """The dataset through ``datasets``: load_dataset("imagefolder") → save_to_disk, as a Dataset and a DatasetDict."""
    import datasets
    root = tmp_path_factory.mktemp("hf-datasets")
    cache = root / "cache"
    split = datasets.load_dataset("imagefolder", data_dir=str(dataset_dir), split="train", cache_dir=str(cache))
    split.save_to_disk(str(root / "dataset"))
    whole = datasets.load_dataset("imagefolder", data_dir=str(dataset_dir), cache_dir=str(cache))
    whole.save_to_disk(str(root / "dataset_dict"))
    return root


@pytest.mark.parametrize("kind", ["dataset", "dataset_dict"])
def test_saved_datasets_dataset(saved_datasets, dataset_dir, kind):
    loaded = load_samples(saved_datasets / kind)
    assert counts(loaded) == {c: 10 for c in CLASSES}
    originals = {p.read_bytes(): p.parent.name for p in dataset_dir.rglob("*.jpg")}
    assert all(originals[s.read()] == s.label for s in loaded.samples)  # the bytes are the original files


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(PlatformError, match="not found"):
        load_samples(tmp_path / "nowhere")
    (tmp_path / "file.csv").write_text("a,b\n")
    with pytest.raises(PlatformError, match="neither a folder nor a .zip"):
        load_samples(tmp_path / "file.csv")


def test_non_images_and_bad_folder_names_are_skipped_and_counted(tmp_path):
    root = write_dataset(tmp_path / "ds", per_class=2)
    (root / "circles" / "notes.txt").write_text("not an image")
    (root / "circles" / "data.csv").write_text("1,2")
    (root / "circles" / ".DS_Store").write_bytes(b"\0\0")  # hidden files are not data at all
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(b"x")
    (root / "bad\x01name").mkdir()
    shutil.copy(root / "squares" / "squares_0.jpg", root / "bad\x01name" / "y.jpg")
    loaded = load_samples(root)
    assert counts(loaded) == {c: 2 for c in CLASSES}
    assert loaded.skipped == {"not an image file": 2, "folder name is not a valid label": 1}


def test_human_labels_override_dataset_labels():
    base = [Sample("a", "cat", "a.jpg", bytes), Sample("b", "dog", "b.jpg", bytes)]
    human = [Sample("b", "cat", "b.jpg", bytes), Sample("c", "fox", "c.jpg", bytes)]
    merged = {s.sha256: s.label for s in merge_samples(base, human)}
    assert merged == {"a": "cat", "b": "cat", "c": "fox"}


def test_corrupt_images_never_crash_a_run_and_are_counted(settings, dataset_dir, tmp_path):
    root = shutil.copytree(dataset_dir, tmp_path / "ds")
    (root / "circles" / "truncated.jpg").write_bytes((root / "circles" / "circles_0.jpg").read_bytes()[:300])
    (root / "squares" / "text.jpg").write_text("I am text in disguise")
    (root / "stripes" / "empty.png").write_bytes(b"")
    (root / "stripes" / "readme.md").write_text("# notes")
    data = load_samples(root)
    assert len(data.samples) == 33 and data.skipped == {"not an image file": 1}
    registry = LocalRegistry(settings.models_dir)
    result = train_version(data.samples, TrainConfig(mode="head", epochs=30), settings, registry, skipped=data.skipped)
    assert result["version"] == "v1"
    assert result["metrics"]["skipped"] == {"not an image file": 1, "undecodable image": 3}
    metrics = json.loads((settings.models_dir / "v1" / "metrics.json").read_text())
    assert metrics["skipped"] == result["metrics"]["skipped"]
    assert metrics["train_size"] + metrics["val_size"] == 30


def test_a_dataset_whose_second_class_is_all_corrupt_fails_clearly(settings, tmp_path):
    root = write_dataset(tmp_path / "ds", per_class=3, classes=["circles"])
    (root / "squares").mkdir()
    (root / "squares" / "a.jpg").write_bytes(b"garbage")
    registry = LocalRegistry(settings.models_dir)
    with pytest.raises(PlatformError, match="at least two classes"):
        train_version(load_samples(root).samples, TrainConfig(mode="head"), settings, registry)
    assert registry.versions() == [] and list((registry.root / ".staging").iterdir()) == []
