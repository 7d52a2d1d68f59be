"""How head mode's default input resolution is chosen: on validation images of the train pool, never the test set.

``python -m bench --only resolution``. A head version is trained at each of ``CANDIDATES`` on the same
train-pool images (the ``accuracy_train`` slice) with the product's own validation split
(``TrainConfig.val_fraction`` = ``VAL_FRACTION``, fixed by each image's sha256, so every resolution is judged
on the same images). The choice is the resolution with the fewest pixels (the least arithmetic per image)
whose validation accuracy is at most ``TOLERANCE`` below 224 px; ``training.config.HEAD_RESOLUTION`` holds
the value this section chose. Every version here is float32 (the resolution is chosen in float32;
``training.config.HEAD_PRECISION`` documents how the arithmetic was chosen on top of it). At the chosen
resolution it also measures all-bfloat16 autocast features under the float32 head (top-1 agreement and accuracy). Speed per resolution is
the backbone's FLOPs per image (exact) and ``predict_batch`` on figure 1's batch with the cache disabled
(timed round-robin; indicative on a busy machine).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from bench.data import image_files
from bench.measure import forward_flops, interleaved
from bench.report import fmt

log = logging.getLogger(__name__)
CANDIDATES = (224, 192, 160, 128)
VAL_FRACTION = 0.5
"""Half of the slice is held out: 3,000 validation images, so a 0.5-point difference is about one standard error
of the paired difference (the same images at every resolution)."""
TOLERANCE = 0.005
"""Largest validation-accuracy loss against 224 px (0–1) that a faster resolution may cost."""


def choose(accuracy: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest resolution (pixels) whose accuracy (0–1) is within ``tolerance`` of the 224 px one."""
    return min(res for res, acc in accuracy.items() if acc >= accuracy[224] - tolerance)


def _train_at(bench, train, resolution: int) -> tuple[dict, object]:
    """A head version at ``resolution`` on prepared features; returns (metrics summary, VersionInfo)."""
    from classifier.registry import LocalRegistry
    from training.config import TrainConfig
    from training.run import train_version
    settings = bench.settings(f"resolution-{resolution}")
    bench.seed_cache(settings.embeddings_dir, train, resolution, "float32")
    registry = LocalRegistry(settings.models_dir)
    result = train_version(train, TrainConfig(mode="head", resolution=resolution, val_fraction=VAL_FRACTION,
                                              precision="float32"),
                           settings, registry, activate=False)
    return result["metrics"], registry.get(result["version"])


def _val_predictions(version, feats: dict, val) -> np.ndarray:
    """Top-1 class index of each validation sample, from features through the version's head."""
    from classifier.predict import Predictor
    from classifier.score import scores_from_embeddings
    predictor = Predictor.load(version.path, version.version, None, 1 << 30)
    scores = scores_from_embeddings(predictor.fm, np.stack([feats[s.sha256] for s in val]))
    return np.array([scores.labels[i] for i in scores.probabilities.argmax(1)])


def _bf16_check(bench, version, val, resolution: int) -> dict:
    """float32 vs bfloat16 autocast on the validation images at ``resolution``: agreement and accuracy (0–1)."""
    from classifier.embeddings import Embedder
    from classifier.images import ImageInput
    fp32 = bench.prepared_features(val, resolution, "float32")
    embedder = Embedder(bench.feature_model(resolution, "float32"), None, 1 << 30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, _ = embedder.embed([ImageInput(s.name, s.read(), s.sha256) for s in val])
    truth = np.array([s.label for s in val])
    a, b = _val_predictions(version, fp32, val), _val_predictions(version, bf16, val)
    return {"top1_agreement": float(np.mean(a == b)), "float32_accuracy": float(np.mean(a == truth)),
            "bfloat16_accuracy": float(np.mean(b == truth)), "cpu_native_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported()}


def _speed(bench, versions: dict, reps: int) -> dict:
    from classifier.predict import Predictor
    files = image_files(bench.slices().batch)
    settings = bench.settings("resolution-speed")
    predictors = {res: Predictor.load(v.path, v.version, None, settings.max_image_pixels) for res, v in versions.items()}
    for p in predictors.values():
        p.fm.warm(wait=True)

    def e2e(p, some):
        return lambda: p.predict_batch(some)
    timings = interleaved({f"{res} px": e2e(p, files) for res, p in predictors.items()}, reps,
                          warmups={f"{res} px": e2e(p, files[:16]) for res, p in predictors.items()})
    flops = {res: forward_flops(p.fm.base, res) for res, p in predictors.items()}
    return {"seconds": {res: timings[f"{res} px"].median for res in versions}, "flops": flops, "images": len(files)}


def run(bench) -> dict:
    from training.config import HEAD_RESOLUTION
    from training.data import load_folder
    from training.evaluation import split
    samples = load_folder(bench.slices().accuracy_train).samples
    metrics, versions = {}, {}
    for res in sorted(CANDIDATES, key=lambda r: (r != 224, r)):  # the cheapest features first after the reference
        metrics[res], versions[res] = _train_at(bench, samples, res)
        log.info("resolution: head at %d px on %d train-pool images: validation accuracy %.4f", res, len(samples),
                 metrics[res]["accuracy"])
    accuracy = {res: m["accuracy"] for res, m in metrics.items()}
    chosen = choose(accuracy)
    val = split(samples, VAL_FRACTION).val
    bf16 = _bf16_check(bench, versions[chosen], val, chosen)
    speed = _speed(bench, versions, max(2, bench.sizes.reps // 2))
    base_s = speed["seconds"][224]
    rows = [[f"{res} px" + (" (chosen)" if res == chosen else ""), f"{accuracy[res]:.4f}",
             f"{100 * (accuracy[res] - accuracy[224]):+.2f}", f"{speed['flops'][res] / 1e9:.3f}",
             fmt(speed["seconds"][res], "s"), f"{base_s / speed['seconds'][res]:.2f}×"] for res in CANDIDATES]
    return {"name": "resolution", "title": "Head mode's default resolution, chosen on validation data",
            "method": (f"A head version per resolution, trained on the same {len(samples)} train-pool images with "
                       f"`val_fraction={VAL_FRACTION}` ({metrics[224]['val_size']} validation images chosen by sha256, "
                       f"the same at every resolution; the test set is not read). Chosen: the fewest pixels within "
                       f"{100 * TOLERANCE:.1f} points of 224 px. `training/config.py` sets HEAD_RESOLUTION = "
                       f"{HEAD_RESOLUTION} px. Time: `predict_batch` on {speed['images']} images, cache disabled, "
                       "round-robin medians. At the chosen resolution, bfloat16 autocast vs float32 on the "
                       f"validation images: same top-1 {bf16['top1_agreement']:.1%}, accuracy "
                       f"{bf16['bfloat16_accuracy']:.4f} vs {bf16['float32_accuracy']:.4f} "
                       f"(CPU with native bfloat16: {bf16['cpu_native_bf16']})."),
            "tables": [{"title": "Validation accuracy and speed by input resolution",
                        "columns": ["resolution", "validation accuracy", "vs 224 px (points)", "GFLOP/image",
                                    "128 images, end to end", "vs 224 px"], "rows": rows}],
            "details": {"validation_accuracy": accuracy, "chosen": chosen, "bf16": bf16, "speed": speed,
                        "val_size": metrics[224]["val_size"], "train_size": metrics[224]["train_size"]}}
