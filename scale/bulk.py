"""One bulk job: list a source, skip what the output already holds, score the rest with an engine, write parts.

``local`` scores in this process through :meth:`classifier.predict.Predictor.predict_batch` (the app's path);
``ray`` runs :mod:`scale.ray_engine` on a Ray cluster. Both write the same rows, so either can resume the
other's output. Embeddings optionally fill the version's embedding cache (the cache training reads for
a version's backbone), and predictions are optionally recorded in the labelling store.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from classifier.embeddings import EmbeddingCache
from classifier.images import ImageInput
from classifier.predict import Predictor
from classifier.score import PixelSpec
from scale.output import PartWriter
from scale.sources import Source, resolve_source
from settings import PlatformError, Settings

log = logging.getLogger(__name__)
ENGINES = ("local", "ray")


@dataclass
class BulkJob:
    """What to score and how; sizes are in images, CPU/GPU counts in Ray's logical units."""

    source: str
    out: Path
    engine: str = "local"
    version: str | None = None
    top_k: int = 3
    batch_size: int = 64
    part_rows: int = 1000
    address: str | None = None
    actors: int | None = None
    actor_cpus: float | None = None
    read_cpus: float | None = None
    decode: str = "auto"
    """Where ``ray`` decodes: ``actors`` (the scoring actors, as in-process), ``tasks`` (Ray CPU tasks feeding
    the actors), ``auto``: actors on CPU clusters, tasks where the cluster has GPUs."""
    fill_cache: bool = False
    record: bool = False
    ray_temp_dir: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise PlatformError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.decode not in ("auto", "actors", "tasks"):
            raise PlatformError(f"--decode must be auto, actors or tasks, got {self.decode!r}")
        if self.batch_size < 1 or self.part_rows < 1 or self.top_k < 1:
            raise PlatformError("--batch-size, --part-rows and --top-k must be at least 1")


def run_bulk(job: BulkJob, settings: Settings) -> dict:
    """Run ``job``; returns a summary: ``model_version``, ``listed``, ``skipped`` (already in the output),
    ``scored``, ``errors``, ``seconds`` (scoring only, not cluster start) and ``images_per_s``; for ``ray``
    also ``actors_ready_seconds`` (until the first actor had loaded its model, by the nodes' wall clocks) and
    ``images_per_s_after_ready`` (the pipeline's rate from then on)."""
    from classifier.registry import LocalRegistry

    source = resolve_source(job.source)
    keys = list(dict.fromkeys(source.keys()))
    if not keys:
        raise PlatformError(f"{job.source}: no images found")
    writer = PartWriter(job.out)
    done = writer.done_paths()
    todo = [k for k in keys if k not in done]
    registry = LocalRegistry(settings.models_dir)
    version = job.version or registry.active()
    if not version:
        raise PlatformError("No model has been trained yet: train one first (python -m training)")
    folder = registry.verify(version).path
    predictor = Predictor.load(folder, version, settings.embeddings_dir if job.fill_cache else None,
                               settings.max_image_pixels)
    sink = _Sink(writer, job, source, settings, predictor)
    if job.record:
        sink.record_pending()
    started = ready = None
    if todo:
        rows, started = _engine_rows(job, source, todo, folder, predictor, settings)
        started_wall = time.time() - (time.monotonic() - started)
        bar = tqdm(total=len(todo), file=sys.stderr, unit="img", disable=not job.progress)
        try:
            for batch_rows, embeddings, ready_at in rows:
                ready = min(ready or ready_at, ready_at) if ready_at else ready
                sink.add(batch_rows, embeddings)
                bar.update(len(batch_rows))
            sink.flush()
        finally:
            bar.close()
    seconds = time.monotonic() - started if started else 0.0
    after_ready = (started_wall + seconds - ready) if ready else None
    return {"model_version": version, "listed": len(keys), "skipped": len(keys) - len(todo), "scored": sink.scored,
            "errors": sink.errors, "seconds": round(seconds, 3),
            "actors_ready_seconds": round(ready - started_wall, 3) if ready else None,
            "images_per_s_after_ready": round(sink.scored / after_ready, 2) if after_ready else None,
            "images_per_s": round(sink.scored / seconds, 2) if seconds else None, "out": str(job.out)}


def _engine_rows(job, source, todo, folder, predictor, settings):
    """The engine's row stream and when scoring started (None = at the first row)."""
    if job.engine == "local":
        return _local_rows(job, source, todo, predictor), time.monotonic()
    from scale import ray_engine

    ray = ray_engine.connect(job.address or settings_ray_address(), job.ray_temp_dir)
    resources = ray.cluster_resources()
    plan = ray_engine.plan_resources(resources.get("CPU", 0), resources.get("GPU", 0), job.actors, job.actor_cpus,
                                     job.read_cpus, job.decode)
    log.info("Ray plan: %s", plan)
    started = time.monotonic()  # after the cluster is up: actor start and model load count as scoring time
    batches = ray_engine.stream_scores(todo, source, folder, predictor.version, PixelSpec.of(predictor.fm),
                                       settings.max_image_pixels, job.top_k, plan, job.batch_size, job.fill_cache)
    return (_ray_rows(b, predictor.version) for b in batches), started


def settings_ray_address() -> str | None:
    """``RAY_ADDRESS`` (Ray's own variable, read by Ray's CLI too); None starts a local cluster."""
    return os.environ.get("RAY_ADDRESS") or None


def _local_rows(job: BulkJob, source: Source, todo: list[str], predictor: Predictor) -> Iterator[tuple[list[dict], dict]]:
    for start in range(0, len(todo), job.batch_size):
        keys = todo[start:start + job.batch_size]
        inputs, rows = [], []
        for key, data in zip(keys, source.read(keys)):
            if isinstance(data, str):
                rows.append({"path": key, "error": data})
            else:
                inputs.append(ImageInput.from_bytes(data, key))
        results, errors = predictor.predict_batch(inputs, top_k=job.top_k)
        rows += [dict(r, path=r.pop("file")) for r in results]
        by_name = {i.name: i.sha256 for i in inputs}
        rows += [{"path": e["file"], "sha256": by_name.get(e["file"]), "error": e["error"]} for e in errors]
        yield rows, {}, None  # the local engine's Predictor fills the cache itself when fill_cache is on


def _ray_rows(batch: dict, version: str) -> tuple[list[dict], dict, float | None]:
    rows, embeddings = [], {}
    for i, path in enumerate(batch["path"]):
        if batch["error"][i]:
            rows.append({"path": str(path), "sha256": batch["sha256"][i] or None, "error": str(batch["error"][i])})
            continue
        rows.append({"path": str(path), "sha256": str(batch["sha256"][i]), "label": str(batch["label"][i]),
                     "confidence": float(batch["confidence"][i]), "top_k": json.loads(batch["top_k"][i]),
                     "model_version": version})
        if "embedding" in batch:
            embeddings[str(batch["sha256"][i])] = batch["embedding"][i]
    ready_at = batch.get("actor_ready_at")
    return rows, embeddings, (float(np.min(ready_at)) if ready_at is not None and len(ready_at) else None)


class _Sink:
    """Buffers rows into parts of ``part_rows``; with each part: cache the embeddings, record in the store."""

    def __init__(self, writer: PartWriter, job: BulkJob, source: Source, settings: Settings, predictor: Predictor):
        self.writer, self.job, self.source, self.settings = writer, job, source, settings
        self.cache = EmbeddingCache.open(settings.embeddings_dir, predictor.fm.cache_key) if job.fill_cache else None
        self.rows: list[dict] = []
        self.embeddings: dict[str, np.ndarray] = {}
        self.scored = self.errors = 0

    def add(self, rows: list[dict], embeddings: dict) -> None:
        self.rows += rows
        self.embeddings.update(embeddings)
        self.scored += sum(1 for r in rows if not r.get("error"))
        self.errors += sum(1 for r in rows if r.get("error"))
        while len(self.rows) >= self.job.part_rows:
            self._write(self.rows[:self.job.part_rows])
            self.rows = self.rows[self.job.part_rows:]

    def flush(self) -> None:
        self._write(self.rows)
        self.rows = []

    def _write(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.cache is not None and self.embeddings:
            # Cache before the part: a kill in between re-scores the rows, never leaves them uncached.
            shas = [r["sha256"] for r in rows if r.get("sha256") in self.embeddings]
            self.cache.put_many(shas, np.stack([self.embeddings.pop(s) for s in shas]) if shas else np.zeros((0, 1)))
        self.writer.write(rows)
        if self.job.record:
            self.record_pending()

    def record_pending(self) -> None:
        """Record every part not yet recorded in the labelling store (marked by ``part-N.recorded``)."""
        from scale.record import record_part

        for part in self.writer.parts():
            marker = part.with_suffix(".recorded")
            if not marker.exists():
                record_part(part, self.source, self.settings)
                marker.touch()
