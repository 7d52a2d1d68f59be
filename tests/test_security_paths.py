"""Issue 'Reliability and security': names a user supplies (file names, archive entries, labels, version names,
the server folder to sample from) never become filesystem paths outside the data directory."""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from app import Handlers
from conftest import data_dir_with_backbone, make_image, tree_snapshot, write_dataset
from engine import Engine
from settings import PlatformError, load_settings
from training.data import load_zip


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    make_image("ellipse", (220, 60, 40), seed=seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory, backbone_dir, dataset_dir):
    """An engine with v1, two configured sample roots, and a private cwd; ``outside`` is a folder no name may reach."""
    root = tmp_path_factory.mktemp("paths")
    samples = [write_dataset(root / "samples-a", per_class=2), write_dataset(root / "samples-b", per_class=1)]
    outside = root / "outside"
    write_dataset(outside, per_class=1)
    settings = load_settings({"DATA_DIR": str(data_dir_with_backbone(root, backbone_dir)), "DATASET": str(dataset_dir),
                              "SAMPLE_ROOTS": os.pathsep.join(map(str, samples))})
    engine = Engine(settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert engine.retrain({"mode": "head", "epochs": 20})["version"] == "v1"
        yield {"root": root, "engine": engine, "handlers": Handlers(engine), "samples": samples, "outside": outside}
    engine.close()


@pytest.mark.parametrize("index", [-1, 2, 99, "1/../..", "../outside", str(Path("/etc")), 1.5, True, None, "", "nan"])
def test_sampling_takes_only_an_index_into_the_configured_roots(world, index):
    with pytest.raises(PlatformError, match="Choose one of the configured sample folders"):
        world["handlers"].sample(index, 4, 0.6)


@pytest.mark.parametrize("index, root, count, expected", [(0, 0, 5, 5), ("1", 1, 99, 3), (1.0, 1, "lots", 1)])
def test_sampling_from_a_configured_root_reads_only_that_root(world, index, root, count, expected):
    value, *_ = world["handlers"].sample(index, count, 0.6)
    names = {r["file"] for r in json.loads(value)["rows"]}
    in_root = {p.name for p in world["samples"][root].rglob("*.jpg")}
    assert len(names) == expected and names <= in_root
    assert not names & {p.name for p in world["outside"].rglob("*.jpg")} - in_root


@pytest.mark.parametrize("version", ["../v1", "v1/../../outside", "/etc/passwd", "v1\x00", "v01x", "..", "v-1"])
def test_version_names_cannot_reach_other_folders(world, version):
    with pytest.raises(PlatformError) as err:
        world["engine"].activate(version)
    assert "is not a version name" in str(err.value)
    assert world["engine"].status()["active_version"] == "v1"


def test_uploaded_names_are_only_labels_and_files_are_stored_by_content_hash(world, tmp_path):
    """Archive entry names with traversal, absolute paths, backslashes and NUL are shown, never used as paths;
    thumbnails and stored images are named by sha256 inside DATA_DIR."""
    engine, root = world["engine"], world["root"]
    archive = tmp_path / "names.zip"
    names = ["../../../evil.jpg", str(world["outside"] / "abs.jpg"), "..\\..\\win.jpg", "dir/./../x.jpg",
             "sub/%2e%2e%2fencoded.jpg"]
    with zipfile.ZipFile(archive, "w") as zf:
        for i, name in enumerate(names):
            zf.writestr(name, jpeg(8000 + i))
    data_dir = engine.settings.data_dir
    before = tree_snapshot(root, tmp_path, skip=(data_dir, archive))
    result = engine.predict([archive], thumbnails=True)
    assert tree_snapshot(root, tmp_path, skip=(data_dir, archive)) == before
    assert len(result["results"]) == len(names) and result["errors"] == []
    assert {r["file"] for r in result["results"]} == {"evil.jpg", "abs.jpg", "win.jpg", "x.jpg",
                                                       "%2e%2e%2fencoded.jpg"}
    thumbs = (data_dir / "thumbs").resolve()
    for row in result["results"]:
        thumb = Path(row["thumbnail"]).resolve()
        assert thumbs in thumb.parents and thumb.name == f"{row['sha256']}.jpg"


def test_labels_become_safe_folder_names_on_export(world, tmp_path):
    """Labels that look like paths are refused; odd but valid ones are encoded so each export folder stays
    inside the export directory and reads back as the label."""
    engine = world["engine"]
    rows = engine.predict([jpeg(9000 + i) for i in range(5)])["results"]
    for label in ("../../outside", "a/b", "..", ".hidden", "back\\slash"):
        with pytest.raises(PlatformError):
            engine.save_labels([{"sha256": rows[0]["sha256"], "label": label}])
    odd = ["%2e%2e", "C:", "~root", "$HOME", "trailing dot."]
    engine.save_labels([{"sha256": r["sha256"], "label": label} for r, label in zip(rows, odd)])
    out = tmp_path / "export"
    counts = engine.store().export(out)
    created = [p for p in out.rglob("*")]
    assert created and all(out.resolve() in p.resolve().parents for p in created)
    from labeling.labels import dirname_to_label
    folders = {dirname_to_label(p.name) for p in out.iterdir() if p.is_dir()}
    assert set(odd) <= folders and counts


def test_unsafe_paths_in_a_training_zip_are_skipped(tmp_path):
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("circles/a.jpg", jpeg(1))
        zf.writestr("squares/b.jpg", jpeg(2))
        zf.writestr("../../escape/c.jpg", jpeg(3))
        zf.writestr("/abs/d.jpg", jpeg(4))
        zf.writestr("circles/../../up/e.jpg", jpeg(5))
    loaded = load_zip(archive)
    assert sorted((s.label, s.name) for s in loaded.samples) == [("circles", "a.jpg"), ("squares", "b.jpg")]
    assert loaded.skipped == {"unsafe path in archive": 3}
    assert sorted(os.listdir(tmp_path)) == ["train.zip"]
