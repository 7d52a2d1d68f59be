"""``--engine ray`` on a local Ray cluster: same rows as the in-process engine, resume, cache fill.

Skipped when Ray is absent (``pip install -r requirements-scale.txt``; CI installs it). Ray's session
files and logs go under the test session's tmp dir; each test fails after 60 s without finishing.
"""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -r requirements-scale.txt to run the Ray tests")

from scale.bulk import BulkJob, run_bulk  # noqa: E402
from scale.output import PartWriter, read_output  # noqa: E402
from settings import load_settings  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60, func_only=True)]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local 2-CPU Ray cluster for this module, its temp dir under pytest's (short: socket paths ≤ 107 chars)."""
    from scale.ray_engine import connect

    connect(None, tmp_path_factory.mktemp("ray"))
    yield ray
    ray.shutdown()


@pytest.fixture
def job_settings(head_version, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(head_version.data_dir, data)
    return load_settings({"DATA_DIR": str(data)})


def _rows(folder):
    return {r["path"]: r for r in read_output(folder).to_pylist()}


def test_ray_engine_writes_the_rows_the_local_engine_writes(ray_cluster, job_settings, dataset_dir, tmp_path):
    local = run_bulk(BulkJob(str(dataset_dir), tmp_path / "local.parquet", progress=False), job_settings)
    remote = run_bulk(BulkJob(str(dataset_dir), tmp_path / "ray.parquet", engine="ray", batch_size=8, part_rows=8,
                              fill_cache=True, progress=False), job_settings)
    assert local["scored"] == remote["scored"] == 30 and remote["errors"] == 0
    a, b = _rows(tmp_path / "local.parquet"), _rows(tmp_path / "ray.parquet")
    assert a.keys() == b.keys()
    for path, row in a.items():
        assert (b[path]["label"], b[path]["sha256"], b[path]["model_version"]) == (row["label"], row["sha256"], "v1")
        assert [t["label"] for t in b[path]["top_k"]] == [t["label"] for t in row["top_k"]]
        assert np.allclose([t["score"] for t in b[path]["top_k"]], [t["score"] for t in row["top_k"]], atol=1e-5)
    # the embeddings went into the version's cache, equal to what the in-process embedder computes
    from classifier.embeddings import EmbeddingCache
    from classifier.live import LiveModel
    from classifier.registry import LocalRegistry
    from classifier.images import ImageInput

    predictor = LiveModel(LocalRegistry(job_settings.models_dir), job_settings).require()
    from classifier.backbone import resolve_backbone
    from training.config import TrainConfig
    from training.run import head_features

    # the head version's cache is the one the next head training on its backbone reads
    backbone = resolve_backbone(None, job_settings.backbones_dir)
    training_key = head_features(TrainConfig(), backbone).cache_key
    assert predictor.fm.cache_key == training_key
    cache = EmbeddingCache(job_settings.embeddings_dir, training_key)
    some = sorted(a)[:4]
    cached = cache.get_many([a[p]["sha256"] for p in some])
    assert len(cached) == 4
    predictor.embedder.cache = None
    fresh, _ = predictor.embedder.embed([ImageInput.from_bytes(open(p, "rb").read(), p) for p in some])
    for sha, vec in cached.items():
        assert np.allclose(vec, fresh[sha], atol=1e-5)


def test_ray_engine_decoding_in_tasks_writes_the_same_rows(ray_cluster, job_settings, dataset_dir, tmp_path):
    """The GPU layout (read/decode CPU tasks feeding the actors), run on CPU: the same rows as in-process."""
    local = run_bulk(BulkJob(str(dataset_dir), tmp_path / "local.parquet", progress=False), job_settings)
    remote = run_bulk(BulkJob(str(dataset_dir), tmp_path / "ray.parquet", engine="ray", decode="tasks", batch_size=8,
                              progress=False), job_settings)
    assert local["scored"] == remote["scored"] == 30 and remote["errors"] == 0
    a, b = _rows(tmp_path / "local.parquet"), _rows(tmp_path / "ray.parquet")
    assert a.keys() == b.keys()
    for path, row in a.items():
        assert (b[path]["label"], b[path]["sha256"]) == (row["label"], row["sha256"])
        assert np.allclose([t["score"] for t in b[path]["top_k"]], [t["score"] for t in row["top_k"]], atol=1e-5)


def test_ray_rerun_scores_only_what_the_output_lacks(ray_cluster, job_settings, dataset_dir, tmp_path):
    out = tmp_path / "ray.parquet"
    first = run_bulk(BulkJob(str(dataset_dir), out, engine="ray", batch_size=8, part_rows=8, progress=False), job_settings)
    parts = PartWriter(out).parts()
    assert first["scored"] == 30 and len(parts) == 4
    parts[-1].unlink()  # as if killed before the last part was renamed into place
    (out / "part-000009.tmp").write_bytes(b"torn")
    kept = len(PartWriter(out).done_paths())
    again = run_bulk(BulkJob(str(dataset_dir), out, engine="ray", batch_size=8, part_rows=8, progress=False), job_settings)
    assert again["skipped"] == kept and again["scored"] == 30 - kept
    paths = [r["path"] for r in read_output(out).to_pylist()]
    raw = [p for part in PartWriter(out).parts() for p in pq.read_table(part).column("path").to_pylist()]
    assert len(raw) == len(set(raw)) == len(paths) == 30
