"""Scale-out (issue 15): Ray Data bulk prediction against the in-process engine, resume after a kill, and a
2-rank ``torchrun`` CPU fine-tune against one process at the same global batch size.

Needs ``requirements-scale.txt`` (Ray); without it the section reports that and measures nothing.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import Figure
from bench.workspace import _interleaved_files, _link_slice

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
SIZES = {"full": {"parity": 1000, "resume": 5000, "ddp_train": 600}, "quick": {"parity": 200, "resume": 500, "ddp_train": 150}}
NO_PROGRESS_S = 300
"""The resume run is stopped and reported as failed after this many seconds without a new part file."""
DDP = {"epochs": 1, "global_batch": 32, "resolution": 96, "unfreeze_blocks": 2}


def run(bench) -> dict:
    """The bulk jobs run eagerly here, as ``python -m classifier predict --out`` and its Ray actors do (only the app
    compiles the backbone graph): this process compiled it for the earlier sections."""
    import os

    from settings import get_settings
    before = os.environ.get("COMPILE_BACKBONE")
    os.environ["COMPILE_BACKBONE"] = "0"
    get_settings.cache_clear()
    try:
        return _run(bench)
    finally:
        if before is None:
            os.environ.pop("COMPILE_BACKBONE", None)
        else:
            os.environ["COMPILE_BACKBONE"] = before
        get_settings.cache_clear()


def _run(bench) -> dict:
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"name": "scale", "title": "Scale-out", "failed": True,
                "error": "Ray is not installed: pip install -r requirements-scale.txt"}
    from scale import ray_engine

    sizes = SIZES["quick" if bench.quick else "full"]
    settings = bench.settings("scale")
    resolution = bench.head_version(settings).info.get("resolution", "?")
    pool = _interleaved_files(bench.slices().retrain_base)
    parity_dir = _link_slice(bench.run_dir / "scale-images" / "parity", pool[:sizes["parity"]])
    resume_dir = _link_slice(bench.run_dir / "scale-images" / "resume", pool[:sizes["resume"]])
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-bench-"))  # short: Ray's socket paths must fit in 107 bytes
    started = time.perf_counter()
    ray_engine.connect(None, ray_dir)
    cluster_start = time.perf_counter() - started
    try:
        parity = _parity(bench, settings, parity_dir)
        resume = _resume(bench, settings, resume_dir)
    finally:
        import ray
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
    ddp = _ddp(bench, pool[:sizes["ddp_train"]])
    figures = parity["figures"] + resume["figures"] + ddp["figures"]
    return {"name": "scale", "title": "Scale-out: Ray Data bulk prediction, resume, torchrun DDP",
            "method": (f"Fashion-MNIST (150×150 JPEG) through the active head version (bundled MobileNetV2, {resolution} px). "
                       f"Parity/overhead: the same {sizes['parity']} images with `--engine local` (in-process "
                       "Predictor.predict_batch, no cache) then `--engine ray` (local 2-CPU Ray cluster, 1 scoring "
                       "actor that reads, decodes and scores its batches: the CPU layout), then `--engine ray --decode "
                       "tasks` (read/decode CPU tasks feeding the actor: the GPU layout, shown for the model). "
                       f"The cluster start ({cluster_start:.1f} s) is not counted; the target is judged "
                       "on the rate from the moment the actor had loaded the model to the last row, and the rate including actor "
                       "start and model load is shown beside it. "
                       f"Resume: `python -m classifier predict --engine ray` on {sizes['resume']} images as a "
                       "subprocess driver on that cluster, SIGKILLed once half the rows were written, then rerun; "
                       f"every path counted over all part files. DDP: `torchrun --standalone --nproc_per_node 2 -m "
                       f"training --mode finetune` (gloo) on {sizes['ddp_train']} images, {DDP['epochs']} epoch, "
                       f"{DDP['resolution']} px, last {DDP['unfreeze_blocks']} blocks, global batch "
                       f"{DDP['global_batch']} (16 per rank), against one process with batch {DDP['global_batch']}; "
                       "accuracy on the same validation split (20 %)."),
            "figures": figures, "tables": [ddp["table"]],
            "details": {"cluster_start_s": round(cluster_start, 2), "parity": parity["details"],
                        "resume": resume["details"], "ddp": ddp["details"]}}


def _bulk(settings, source: Path, out: Path, engine: str, decode: str = "auto") -> dict:
    from scale.bulk import BulkJob, run_bulk
    return run_bulk(BulkJob(str(source), out, engine=engine, decode=decode, batch_size=64, part_rows=500,
                            progress=False), settings)


def _parity(bench, settings, images: Path) -> dict:
    from scale.output import read_output
    work = bench.fresh_dir("scale-parity")
    local = _bulk(settings, images, work / "local.parquet", "local")
    remote = _bulk(settings, images, work / "ray.parquet", "ray")
    in_tasks = _bulk(settings, images, work / "ray-tasks.parquet", "ray", decode="tasks")
    a = {r["path"]: r for r in read_output(work / "local.parquet").to_pylist()}
    b = {r["path"]: r for r in read_output(work / "ray.parquet").to_pylist()}
    same = sum(1 for p in a if p in b and a[p]["label"] == b[p]["label"])
    diffs = [abs(x["score"] - y["score"]) for p in a if p in b
             for x, y in zip(sorted(a[p]["top_k"], key=lambda t: t["label"]), sorted(b[p]["top_k"], key=lambda t: t["label"]))]
    agreement, worst = same / max(len(a), 1), max(diffs, default=float("nan"))
    # Actor start and model load are a fixed cost per job, like the cluster start: the target is judged on the
    # pipeline's rate from the moment the actor could score to the last row; the whole rate is shown beside it.
    steady = remote["images_per_s_after_ready"]
    ratio, whole = steady / local["images_per_s"], remote["images_per_s"] / local["images_per_s"]
    figures = [
        Figure(f"parity: top-1 agreement, ray vs local, {len(a)} images", "%", 100 * agreement, 100.0, "local engine",
               higher_is_better=True, target="100 %", met=agreement == 1.0 and len(a) == len(b),
               note=f"largest probability difference {worst:.2e} (target ≤ 1e-5: {'met' if worst <= 1e-5 else 'not met'})"),
        Figure("overhead: ray throughput once its actor is up", "img/s", steady, local["images_per_s"],
               "in-process engine", higher_is_better=True, target="≥ 0.8× in-process", met=ratio >= 0.8,
               distance=f"{ratio:.2f}×", note="from the actor's model being loaded to the last row written"),
        Figure("overhead: ray throughput including actor start and model load", "img/s", remote["images_per_s"],
               local["images_per_s"], "in-process engine", higher_is_better=True, distance=f"{whole:.2f}×",
               note=f"{remote['actors_ready_seconds']:.1f} s of actor start and model load; a fixed cost per job"),
        Figure("overhead: ray with decode in CPU tasks (the GPU layout), once its actor is up", "img/s",
               in_tasks["images_per_s_after_ready"], local["images_per_s"], "in-process engine", higher_is_better=True,
               distance=f"{in_tasks['images_per_s_after_ready'] / local['images_per_s']:.2f}×",
               note="`--decode tasks`: every image crosses the object store as a uint8 crop"),
    ]
    return {"figures": figures, "details": {"local": local, "ray": remote, "ray_decode_in_tasks": in_tasks,
                                            "agreement": agreement,
                                            "max_probability_difference": worst, "ray_steady_img_s": round(steady, 2)}}


def _resume(bench, settings, images: Path) -> dict:
    import ray

    from scale.output import part_files
    out = bench.fresh_dir("scale-resume") / "out.parquet"
    total = len(list(images.rglob("*.jpg")))
    env = dict(os.environ, DATA_DIR=str(settings.data_dir), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "classifier", "predict", str(images), "--engine", "ray", "--out", str(out),
           "--address", ray.get_runtime_context().gcs_address, "--part-rows", "250", "--batch-size", "64", "--no-progress"]
    log_path = out.parent / "first-run.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        last_parts, last_change = 0, time.monotonic()
        # Only list the parts while the job runs: opening a PartWriter would delete the part it is writing.
        while proc.poll() is None and 250 * len(part_files(out)) < total // 2:
            parts = len(part_files(out))
            if parts != last_parts:
                last_parts, last_change = parts, time.monotonic()
            elif time.monotonic() - last_change > NO_PROGRESS_S:
                proc.kill()
                raise RuntimeError(f"the first run made no progress for {NO_PROGRESS_S} s; its log ends: "
                                   f"{log_path.read_text(errors='replace')[-1500:]}")
            time.sleep(0.2)
    first_exit = proc.poll()  # None: still running, as it should be when it is killed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if first_exit is not None:
        raise RuntimeError(f"the first run ended by itself ({first_exit}) before half its rows; its log ends: "
                           f"{log_path.read_text(errors='replace')[-1500:]}")
    killed_at = len(set(_written_paths(out)))
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if rerun.returncode not in (0, 1):
        raise RuntimeError(f"the rerun failed ({rerun.returncode}): {rerun.stderr[-1500:]}")
    summary = json.loads(rerun.stdout.splitlines()[-1]) if rerun.returncode in (0, 1) else {}
    paths = _written_paths(out)
    exactly_once = len(paths) == len(set(paths)) == total
    figures = [Figure(f"resume: {total}-image ray job killed at {killed_at} rows, rerun", "inputs missing or doubled",
                      float(total - len(set(paths)) + len(paths) - len(set(paths))), target="0 (every input exactly once)",
                      met=exactly_once and 0 < killed_at < total,
                      note=f"rerun skipped {summary.get('skipped')} and scored {summary.get('scored')}")]
    return {"figures": figures, "details": {"images": total, "rows_at_kill": killed_at, "rerun": summary,
                                            "rows_on_disk": len(paths), "distinct_paths": len(set(paths))}}


def _written_paths(out: Path) -> list[str]:
    """Every path in every part of ``out``, repeats included."""
    import pyarrow.parquet as pq

    from scale.output import part_files
    return [p for part in part_files(out) for p in pq.read_table(part, columns=["path"]).column("path").to_pylist()]


def _ddp(bench, files) -> dict:
    data = _link_slice(bench.run_dir / "scale-images" / "ddp", files)
    runs = {}
    for name, launcher, per_rank in (("1 process", [sys.executable, "-m", "training"], DDP["global_batch"]),
                                     ("2 ranks (torchrun, gloo)", [sys.executable, "-m", "torch.distributed.run",
                                      "--standalone", "--nproc_per_node", "2", "-m", "training"], DDP["global_batch"] // 2)):
        settings = bench.settings(f"scale-ddp-{len(runs)}")
        args = ["--mode", "finetune", "--data", str(data), "--epochs", str(DDP["epochs"]), "--batch_size", str(per_rank),
                "--resolution", str(DDP["resolution"]), "--unfreeze_blocks", str(DDP["unfreeze_blocks"])]
        env = dict(os.environ, DATA_DIR=str(settings.data_dir), BACKBONE=str(bench.backbone_dir()), PYTHONPATH=str(ROOT))
        started = time.perf_counter()
        done = subprocess.run(launcher + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed: {done.stderr[-1500:]}")
        results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        runs[name] = {"seconds": round(seconds, 1), "results": results}
    single = runs["1 process"]["results"][0]["metrics"]
    ranks = runs["2 ranks (torchrun, gloo)"]["results"]
    digests = {r.get("weights_digest") for r in ranks}
    accuracy = ranks[0]["metrics"]["accuracy"] if ranks[0].get("version") else ranks[-1]["metrics"]["accuracy"]
    n_val = single["val_size"]
    noise = 2 * math.sqrt(max(single["accuracy"] * (1 - single["accuracy"]), 1e-9) / max(n_val, 1))
    figures = [
        Figure("DDP: ranks ending with the same parameter digest", "of 2", float(len(ranks) if len(digests) == 1 else 1),
               target="2 of 2", met=len(ranks) == 2 and len(digests) == 1 and None not in digests,
               note=f"digest {sorted(d or '' for d in digests)}"),
        Figure("DDP: validation accuracy, 2 ranks vs 1 process (same global batch)", "accuracy", accuracy,
               single["accuracy"], "1 process", higher_is_better=True,
               target=f"within noise (±{noise:.3f}: 2 binomial standard errors on {n_val} images)",
               met=abs(accuracy - single["accuracy"]) <= noise),
    ]
    table = {"title": "DDP fine-tune, side by side", "columns": ["run", "wall s", "accuracy", "macro F1", "version"],
             "rows": [[name, r["seconds"], r["results"][0]["metrics"]["accuracy"], r["results"][0]["metrics"]["macro_f1"],
                       ", ".join(str(x.get("version")) for x in r["results"])] for name, r in runs.items()]}
    return {"figures": figures, "table": table, "details": runs}
