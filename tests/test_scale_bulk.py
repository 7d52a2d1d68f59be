"""Bulk prediction without Ray: sources, the parquet part folder, resume after a real kill, store recording,
and the refusal of actor plans that would starve Ray Data's read tasks."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from scale.output import PartWriter, read_output
from scale.sources import resolve_source
from settings import PlatformError

ROOT = Path(__file__).resolve().parent.parent


def test_every_source_kind_lists_and_reads_the_same_images(dataset_dir, tmp_path):
    import datasets

    files = sorted(dataset_dir.rglob("*.jpg"))
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, f"{f.parent.name}/{f.name}")
        zf.writestr("notes.txt", "not an image")
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": [f.parent.name for f in files]}).cast_column(
        "image", datasets.Image()).save_to_disk(str(saved))
    wanted = sorted(f.read_bytes() for f in files)
    for raw in (str(dataset_dir), str(dataset_dir / "*" / "*.jpg"), str(archive), str(saved)):
        source = resolve_source(raw)
        keys = source.keys()
        assert len(keys) == len(files), raw
        assert sorted(source.read(keys)) == wanted, raw
    assert resolve_source("someone/some-dataset").kind == "dataset"  # a Hub id: loaded by `datasets` when run
    with pytest.raises(PlatformError, match="no such file"):
        resolve_source(str(tmp_path / "missing"))


def test_parts_are_atomic_and_a_path_counts_once(tmp_path):
    writer = PartWriter(tmp_path / "out.parquet")
    writer.write([{"path": "a", "sha256": "1", "label": "x", "confidence": 0.9, "top_k": [{"label": "x", "score": 0.9}],
                   "model_version": "v1"}])
    (writer.folder / "part-000001.tmp").write_bytes(b"half a part, killed mid-write")
    # reading the output (as a monitor does while a job runs) leaves the part being written alone
    assert len(read_output(writer.folder)) == 1 and (writer.folder / "part-000001.tmp").exists()
    writer.write([{"path": "a", "sha256": "1", "label": "y", "confidence": 0.5, "top_k": [], "model_version": "v1"},
                  {"path": "b", "error": "b: not a readable image"}])
    again = PartWriter(writer.folder)
    assert not list(again.folder.glob("*.tmp")) and again.done_paths() == {"a", "b"}
    table = read_output(writer.folder).to_pylist()
    assert [(r["path"], r["label"]) for r in table] == [("a", "x"), ("b", None)]


def test_actor_plans_that_leave_no_cpu_for_reading_are_refused():
    from scale.ray_engine import plan_resources

    with pytest.raises(PlatformError, match="44687"):
        plan_resources(total_cpus=2, total_gpus=0, actors=2, actor_cpus=1)
    with pytest.raises(PlatformError, match="44687"):
        plan_resources(total_cpus=4, total_gpus=0, actors=1, actor_cpus=1, read_cpus=4)
    plan = plan_resources(total_cpus=2, total_gpus=0)
    assert (plan.actors, plan.actor_cpus, plan.read_cpus, plan.actor_gpus) == (1, 1.0, 1.0, 0.0)
    fractional = plan_resources(total_cpus=2, total_gpus=0, actors=2, actor_cpus=0.5)
    assert fractional.read_cpus == 1.0
    gpu = plan_resources(total_cpus=8, total_gpus=2)
    assert (gpu.actors, gpu.actor_gpus) == (2, 1.0)
    # CPU clusters decode in the actors by default, GPU clusters in CPU tasks; actors never decode beside a GPU
    assert plan.decode_in_actors and not gpu.decode_in_actors
    assert not plan_resources(total_cpus=2, total_gpus=0, decode="tasks").decode_in_actors
    with pytest.raises(PlatformError, match="CPU clusters"):
        plan_resources(total_cpus=8, total_gpus=2, decode="actors")


def _copy_version(head_version, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(head_version.data_dir, data)
    return data


@pytest.mark.slow
def test_local_bulk_job_killed_half_way_resumes_with_every_image_once(head_version, tmp_path):
    from conftest import write_dataset

    images = write_dataset(tmp_path / "many", per_class=40)  # 120 images
    data = _copy_version(head_version, tmp_path)
    out = tmp_path / "out.parquet"
    env = dict(os.environ, DATA_DIR=str(data), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "classifier", "predict", str(images), "--out", str(out), "--batch-size", "8",
           "--part-rows", "8", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = len(PartWriter(out).done_paths())
    assert 0 < first < 120, f"the kill should land half-way, {first} rows were written"
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["skipped"] == first and summary["scored"] == 120 - first
    paths = [r["path"] for part in PartWriter(out).parts()
             for r in pq.read_table(part, columns=["path"]).to_pylist()]
    assert sorted(paths) == sorted(str(p) for p in images.rglob("*.jpg"))  # every image exactly once


@pytest.mark.slow
def test_bulk_predictions_are_recorded_in_the_store(head_version, dataset_dir, tmp_path):
    from labeling.store import open_store
    from scale.bulk import BulkJob, run_bulk
    from settings import load_settings

    settings = load_settings({"DATA_DIR": str(_copy_version(head_version, tmp_path))})
    summary = run_bulk(BulkJob(str(dataset_dir), tmp_path / "out.parquet", record=True, progress=False), settings)
    assert summary["scored"] == 30
    assert all(p.with_suffix(".recorded").exists() for p in PartWriter(tmp_path / "out.parquet").parts())
    store = open_store(settings)
    try:
        shas = {r["sha256"] for r in read_output(tmp_path / "out.parquet").to_pylist()}
        assert store.known_images(list(shas)) == shas
        assert store.count_labels() == 0  # predictions are not labels
    finally:
        store.close()


def test_score_batch_is_what_predict_batch_serves(head_version, dataset_dir):
    from classifier.images import ImageInput
    from classifier.live import LiveModel
    from classifier.registry import LocalRegistry
    from classifier.score import score_batch, top_k_rows

    predictor = LiveModel(LocalRegistry(head_version.models_dir), head_version).load("v1")
    predictor.embedder.cache = None  # compute, do not read the session's cached features
    images = [ImageInput.from_bytes(p.read_bytes(), p.name) for p in sorted(dataset_dir.rglob("*.jpg"))[:6]]
    images.append(ImageInput.from_bytes(b"not an image", "junk.jpg"))
    scores, good, errors = score_batch(predictor.fm, images, head_version.max_image_pixels)
    served, failed = predictor.predict_batch(images)
    assert scores.probabilities.shape == (6, 3) and scores.embeddings.shape[0] == 6
    assert [g.name for g in good] == [r["file"] for r in served] and list(errors) == [images[-1].sha256]
    assert [r["file"] for r in failed] == ["junk.jpg"]
    for row, ours in zip(served, top_k_rows(scores, 3)):
        assert row["label"] == ours["label"] and abs(row["confidence"] - ours["confidence"]) <= 1e-5


def test_read_tasks_ship_the_embedders_uint8_crops(dataset_dir):
    """The read tasks ship uint8 crops, a quarter of float32's bytes; the actors score them with the version's
    own arithmetic (FeatureModel.features_of_crops), so the crops must be the Embedder's own."""
    from classifier.images import ImageInput, crop, decode
    from classifier.score import PixelSpec, crop_pixels

    spec = PixelSpec(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    images = [ImageInput.from_bytes(p.read_bytes(), p.name) for p in sorted(dataset_dir.rglob("*.jpg"))[:4]]
    crops = np.stack([crop_pixels(i, spec, 10**8) for i in images])
    assert crops.dtype == np.uint8 and crops.shape == (4, 224, 224, 3)
    assert np.array_equal(crops, np.stack([crop(decode(i, 10**8, draft_size=224), 224) for i in images]))


def test_cli_asks_for_an_output_folder_before_starting_ray(dataset_dir, tmp_path, monkeypatch, capsys):
    from classifier.__main__ import main
    from settings import get_settings

    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()  # the CLI reads settings once per process: read this test's DATA_DIR
    try:
        assert main(["predict", str(dataset_dir), "--engine", "ray"]) == 2
    finally:
        get_settings.cache_clear()
    assert "--out" in capsys.readouterr().err
