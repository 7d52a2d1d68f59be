"""The Ray Data engine: an actor pool scores batches of paths, rows streamed back to the driver.

Two layouts, one set of rows. On CPU clusters each actor reads, decodes and scores its batches exactly as the
in-process engine does (:class:`classifier.embeddings.Embedder`: decode threads overlapping the forward pass),
and Ray Data only hands out the paths: a separate decode stage would make every image cross the object store
and split each node's cores between processes. On GPU clusters read/decode CPU tasks run the project's own
decode and resize (:func:`classifier.score.crop_pixels`: uint8, a quarter of float32's bytes through the object
store) while the GPU actors normalise and score (:func:`classifier.score.scores_from_crops`). Never ``ray.data.read_images(size=…)``: its bilinear resize
changes labels. Ray is imported only here.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from classifier.images import ImageInput
from classifier.score import PixelSpec
from settings import PlatformError

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ResourcePlan:
    """How a job uses the cluster: ``actors`` scorers of ``actor_cpus`` CPUs (and ``actor_gpus`` GPUs) each,
    ``read_cpus`` CPUs kept free for read/decode tasks, ``torch_threads`` threads per actor;
    ``decode_in_actors``: the actors decode their own batches (no read/decode tasks)."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    read_cpus: float
    torch_threads: int
    decode_in_actors: bool = False


DECODE_CHOICES = ("auto", "actors", "tasks")


def plan_resources(total_cpus: float, total_gpus: float, actors: int | None = None, actor_cpus: float | None = None,
                   read_cpus: float | None = None, decode: str = "auto") -> ResourcePlan:
    """Choose (or check) the actor pool for a cluster of ``total_cpus`` CPUs and ``total_gpus`` GPUs.

    Defaults: one actor per GPU, else one per two CPUs; 1 CPU per actor; read tasks get the CPUs left.
    ``decode``: ``actors`` (the default without GPUs) or ``tasks`` (the default with GPUs).
    Refuses (PlatformError) a plan whose actors leave less than one CPU to the read tasks: Ray Data then
    never schedules a read and the job hangs (ray-project/ray#44687).
    """
    gpus = int(total_gpus)
    if decode not in DECODE_CHOICES:
        raise PlatformError(f"--decode must be one of {', '.join(DECODE_CHOICES)}, got {decode!r}")
    if decode == "actors" and gpus:
        raise PlatformError("--decode actors is for CPU clusters: with GPUs, CPU tasks decode while the GPUs score "
                            "(use --decode tasks or auto)")
    actor_cpus = 1.0 if actor_cpus is None else actor_cpus
    actors = actors if actors is not None else (gpus or max(1, int(total_cpus // 2)))
    if actors < 1 or actor_cpus <= 0:
        raise PlatformError("--actors must be at least 1 and --actor-cpus above 0")
    left = total_cpus - actors * actor_cpus
    read_cpus = left if read_cpus is None else read_cpus
    if read_cpus < 1 or actors * actor_cpus + read_cpus > total_cpus + 1e-9:
        raise PlatformError(
            f"{actors} actor(s) × {actor_cpus:g} CPU leave {max(left, 0):g} of the cluster's {total_cpus:g} CPUs "
            f"for reading, and the read/decode tasks need at least {max(read_cpus, 1):g}: the job would hang "
            f"(ray-project/ray#44687). Use fewer --actors, a fractional --actor-cpus, or a bigger cluster.")
    if gpus and actors > gpus:
        raise PlatformError(f"{actors} GPU actors asked for, but the cluster has {gpus} GPU(s)")
    # CPU actors may use the cores the (light) decode tasks leave idle; a GPU actor needs few threads.
    threads = max(1, int(actor_cpus)) if gpus else max(1, int(total_cpus // actors))
    decode_in_actors = decode == "actors" or (decode == "auto" and not gpus)
    return ResourcePlan(actors, actor_cpus, 1.0 if gpus else 0.0, read_cpus, threads, decode_in_actors)


def connect(address: str | None, temp_dir: Path | None = None):
    """Join the cluster at ``address`` (``auto``, ``ray://host:10001``, ``host:6379``), or start a local one
    (logs and session files under ``temp_dir`` when given: a short path, as Ray's socket paths under it must
    stay within 107 bytes). Returns the ``ray`` module."""
    # If the driver loses its cluster mid-job, Ray Data would silently ray.init() a fresh local cluster and
    # wait on it (seen once, under a load average of 24 on 2 cores): fail instead, a rerun resumes the job.
    # Ray reads this variable when it is first imported.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    import ray

    if ray.is_initialized():
        return ray
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
    # Workers import this project: where the nodes run the same image (or this machine), its root is the path.
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        if address:
            ray.init(address=address, runtime_env={"env_vars": env}, **quiet)
        else:
            # Ray starts workers 15 nice levels below the command (to keep its own daemons responsive); on a
            # shared node that starves the actors next to other work. A local cluster's workers run at the
            # command's own priority, as the in-process engine does.
            ray.init(address="local", _temp_dir=str(temp_dir) if temp_dir else None,
                     runtime_env={"env_vars": env}, _system_config={"worker_niceness": 0}, **quiet)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        what = f"reach the Ray cluster at {address}" if address else "start a local Ray cluster"
        raise PlatformError(f"Could not {what}: {exc}") from None
    return ray


def prepare_batch(batch: dict, source, spec: PixelSpec, max_pixels: int) -> dict:
    """Read task: bytes → sha256 → project decode + resize to uint8 crops (the actor normalises them: a quarter
    of float32's bytes through the object store). Unreadable rows keep zero pixels and an ``error``."""
    from classifier.score import crop_pixels

    keys = [str(k) for k in batch["path"]]
    pixels = np.zeros((len(keys), spec.resolution, spec.resolution, 3), dtype=np.uint8)
    shas, errors = [""] * len(keys), [""] * len(keys)
    for i, (key, data) in enumerate(zip(keys, source.read(keys))):
        if isinstance(data, str):
            errors[i] = data
            continue
        image = ImageInput.from_bytes(data, key)
        shas[i] = image.sha256
        try:
            pixels[i] = crop_pixels(image, spec, max_pixels)
        except PlatformError as exc:
            errors[i] = str(exc)
    return {"path": np.array(keys, dtype=object), "sha256": np.array(shas, dtype=object),
            "error": np.array(errors, dtype=object), "pixels": pixels}


class ScoreActor:
    """One loaded model version per actor (on its GPU when it has one). Scores batches of prepared pixels, or,
    given a ``source``, batches of paths that it reads and decodes itself, as the in-process engine does."""

    def __init__(self, folder: str, version: str, top_k: int, torch_threads: int, with_embeddings: bool,
                 source=None, max_pixels: int = 1):
        import torch

        from classifier.predict import Predictor

        torch.set_num_threads(torch_threads)
        # Without a source this predictor never decodes (the read tasks do): it only turns pixels into scores.
        self.predictor = Predictor.load(Path(folder), version, None, max_pixels=max_pixels)
        if source is None and torch.cuda.is_available():
            self.predictor.fm.to("cuda")
        self.source, self.top_k, self.with_embeddings = source, top_k, with_embeddings
        self.ready_at = time.time()  # wall clock: when this actor could score (its start is a fixed cost per job)

    def __call__(self, batch: dict) -> dict:
        from classifier.score import scores_from_crops

        if self.source is not None:
            return self._decode_and_score(batch)
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        fm = self.predictor.fm
        scores = scores_from_crops(fm, batch["pixels"][ok]) if ok.any() else None
        return self._rows(batch["path"], batch["sha256"], batch["error"], ok, scores)

    def _decode_and_score(self, batch: dict) -> dict:
        """Read, hash, decode and embed a batch of paths with the in-process engine's Embedder, then score."""
        from classifier.score import scores_from_embeddings

        keys = [str(k) for k in batch["path"]]
        shas, errors, images = [""] * len(keys), [""] * len(keys), []
        for i, (key, data) in enumerate(zip(keys, self.source.read(keys))):
            if isinstance(data, str):
                errors[i] = data
            else:
                images.append(ImageInput.from_bytes(data, key))
                shas[i] = images[-1].sha256
        feats, failed = self.predictor.embedder.embed(images)
        for i, sha in enumerate(shas):
            if sha in failed:
                errors[i] = failed[sha]
        ok = np.array([not e for e in errors], dtype=bool)
        scores = (scores_from_embeddings(self.predictor.fm, np.stack([feats[shas[i]] for i in np.flatnonzero(ok)]))
                  if ok.any() else None)
        return self._rows(np.array(keys, dtype=object), np.array(shas, dtype=object), np.array(errors, dtype=object),
                          ok, scores)

    def _rows(self, paths, shas, errors, ok: np.ndarray, scores) -> dict:
        """The output columns; ``scores`` holds the rows where ``ok`` is True, in order."""
        from classifier.score import top_k_rows

        n = len(ok)
        labels, conf, tops = [""] * n, np.zeros(n), ["[]"] * n
        embeddings = np.zeros((n, scores.embeddings.shape[1] if scores is not None else 1), dtype=np.float32)
        if scores is not None:
            embeddings[ok] = scores.embeddings
            for i, row in zip(np.flatnonzero(ok), top_k_rows(scores, self.top_k)):
                labels[i], conf[i], tops[i] = row["label"], row["confidence"], json.dumps(row["top_k"])
        out = {"path": paths, "sha256": shas, "error": errors, "label": np.array(labels, dtype=object),
               "confidence": conf, "top_k": np.array(tops, dtype=object), "actor_ready_at": np.full(n, self.ready_at)}
        if self.with_embeddings:
            out["embedding"] = embeddings
        return out


def stream_scores(keys: list[str], source, folder: Path, version: str, spec: PixelSpec, max_pixels: int,
                  top_k: int, plan: ResourcePlan, batch_size: int, with_embeddings: bool) -> Iterator[dict]:
    """Run the pipeline over ``keys``; yields scored numpy batches (columns as :meth:`ScoreActor.__call__`)."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws one bar over images, not one per operator
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-run INFO lines would bury the bar
    # Paths as Arrow slices (a 10 M-path list stays a few hundred MB): one batch per block up to 2,000 blocks,
    # so read tasks spread over the cluster and rows stream back steadily.
    import pyarrow as pa

    table = pa.table({"path": pa.array(keys, pa.string())})
    rows_per_block = max(batch_size, -(-len(keys) // 2000))
    dataset = ray.data.from_arrow([table.slice(i, rows_per_block) for i in range(0, len(keys), rows_per_block)])
    actor_kwargs = {"folder": str(folder), "version": version, "top_k": top_k, "torch_threads": plan.torch_threads,
                    "with_embeddings": with_embeddings}
    if plan.decode_in_actors:
        actor_kwargs.update(source=source, max_pixels=max_pixels)
    else:
        # Read tasks: 1 CPU each, at most ``read_cpus`` at once, spread over the nodes. The actors' different
        # scheduling strategy keeps Ray Data from fusing decoding into the actors: the two must overlap.
        dataset = dataset.map_batches(prepare_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                                      compute=ray.data.TaskPoolStrategy(size=max(1, int(plan.read_cpus))),
                                      scheduling_strategy="SPREAD",
                                      fn_kwargs={"source": source, "spec": spec, "max_pixels": max_pixels})
    dataset = dataset.map_batches(
        # One call at a time per actor, on the actor's main thread: Ray Data's default hands each call to a helper
        # thread, where the same decode + forward ran at about half the rate it reaches on the main thread.
        ScoreActor, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors, enable_true_multi_threading=True),
        num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus or None, scheduling_strategy="DEFAULT",
        fn_constructor_kwargs=actor_kwargs)
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
