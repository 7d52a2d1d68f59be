"""One training run, top to bottom: split → train (head / finetune / scratch) → metrics → register → activate."""
from __future__ import annotations

import copy
import dataclasses
import errno
import functools
import hashlib
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from classifier import runtime
from classifier.backbone import DEFAULT_BACKBONE, load_model_and_processor, resolve_backbone
from classifier.embeddings import Embedder, EmbeddingCache, FeatureModel
from classifier.images import ImageInput, decode
from classifier.priority import PREDICTIONS
from classifier.registry import LocalRegistry
from settings import PlatformError, Settings
from training import distributed, trainer
from training.checkpoint import card_writer, write_run_files
from training.config import HEAD_PRECISION, HEAD_RESOLUTION, TrainConfig
from training.data import Sample
from training.evaluation import split
from training.head import final_linear, train_linear_head
from training.health import health_for_run
from training.metrics import classification_metrics
from training.progress import Cancelled, ProgressEvent, Report, ignore, part_of

log = logging.getLogger(__name__)
_EMBED_CHUNK = 512


def weights_digest(module: torch.nn.Module) -> str:
    """Short sha256 over a module's tensors: names a set of backbone weights for the embedding cache."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def _backbone(name_or_path: str, resolution: int | None, precision: str = runtime.FLOAT32) -> FeatureModel:
    """The frozen backbone as a FeatureModel, loaded once per process (read-only)."""
    model, processor = load_model_and_processor(name_or_path)
    _set_resolution(processor, resolution)
    return FeatureModel(model, processor, f"{Path(name_or_path).name}-{weights_digest(model.base_model)}", precision)


def head_features(config: TrainConfig, backbone: str) -> FeatureModel:
    """The backbone as head versions of ``config`` compute their features: at :func:`head_resolution`, in
    :func:`head_precision`. The audit, the review queue and the data-health card read the same cache."""
    return _backbone(backbone, head_resolution(config, backbone), head_precision(config, backbone))


def cached_embedder(fm: FeatureModel, settings: Settings) -> Embedder:
    """An Embedder for ``fm`` through the platform's embedding cache (the process's one instance per key)."""
    return Embedder(fm, EmbeddingCache.open(settings.embeddings_dir, fm.cache_key), settings.max_image_pixels)


def _set_resolution(processor, resolution: int | None) -> None:
    """Make ``processor`` resize to ``resolution`` pixels the way it did at its own size: shorter edge then centre
    crop, or straight to a square. (transformers 5 holds ``size`` as a SizeDict, not a dict.)"""
    if resolution:
        size = getattr(processor, "size", None)
        if (size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)):
            processor.size = {"shortest_edge": resolution}
        else:
            processor.size = {"height": resolution, "width": resolution}
        if getattr(processor, "crop_size", None):
            processor.crop_size = {"height": resolution, "width": resolution}


def embed_samples(embedder: Embedder, samples: list[Sample], report: Report | None = None,
                  should_stop: Callable[[], bool] | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Features for samples, reading image bytes only for those not yet in the cache, chunk by chunk;
    raises Cancelled between chunks once ``should_stop()`` is true."""
    cached = embedder.cache.get_many([s.sha256 for s in samples]) if embedder.cache is not None else {}
    missing = list({s.sha256: s for s in samples if s.sha256 not in cached}.values())
    errors: dict[str, str] = {}
    for start in range(0, len(missing), _EMBED_CHUNK):
        stop_if_asked(should_stop)
        chunk = missing[start:start + _EMBED_CHUNK]
        inputs = []
        for s in chunk:
            try:
                inputs.append(ImageInput(s.name, s.read(), s.sha256))
            except OSError as exc:
                errors[s.sha256] = f"{s.name}: cannot read ({exc})"
        feats, failed = embedder.embed(inputs, _stop_check(should_stop))
        cached.update(feats)
        errors.update(failed)
        if report:
            report(ProgressEvent(min(1.0, (start + len(chunk)) / len(missing)),
                                 f"embedded {start + len(chunk)}/{len(missing)} new images"))
    return cached, errors


def _stop_check(should_stop: Callable[[], bool] | None):
    """A per-batch progress callback for :meth:`Embedder.embed` that stops the run as soon as asked and lets a
    waiting prediction have the cores before the next batch (classifier/priority.py)."""
    def check(fraction: float, message: str) -> None:
        stop_if_asked(should_stop)
        PREDICTIONS.yield_to_predictions()
    return check


def stop_if_asked(should_stop: Callable[[], bool] | None) -> None:
    """Raise Cancelled when the run was asked to stop (checked between the stages of a run)."""
    if should_stop is not None and should_stop():
        raise Cancelled()


def check_classes(samples: list[Sample], skipped: dict[str, int] | None = None) -> list[str]:
    labels = sorted({s.label for s in samples})
    if len(samples) < 2 or len(labels) < 2:
        why = f" Left out: {'; '.join(f'{reason} ({n})' for reason, n in skipped.items())}." if skipped else ""
        raise PlatformError(
            f"Training needs at least two classes with images; found {len(labels)} class(es) and "
            f"{len(samples)} usable image(s).{why} Label some images with a second class first.")
    return labels


def drop_unreadable(samples: list[Sample], readable: set[str]) -> tuple[list[Sample], dict[str, int]]:
    """The samples whose image could be read, and what was left out (reason → count); a class that lost
    every image is named, so the user learns why the new version lacks it."""
    usable = [s for s in samples if s.sha256 in readable]
    bad = {s.sha256 for s in samples} - readable
    skipped = {"undecodable image": len(bad)} if bad else {}
    for name in sorted({s.label for s in samples} - {s.label for s in usable}):
        skipped[f"class {name!r} left out: none of its images could be read"] = sum(s.label == name for s in samples)
    return usable, skipped


def _readable(sample: Sample, max_pixels: int) -> bool:
    try:
        decode(ImageInput(sample.name, sample.read(), sample.sha256), max_pixels, draft_size=64)
        return True
    except (PlatformError, OSError):
        return False


def _probs(fm: FeatureModel, feats: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(fm.logits(torch.from_numpy(feats)).float(), -1).numpy()


def _set_head(model, labels: list[str], weight: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    """Give ``model`` a fresh linear classifier for ``labels`` (optionally with given weights)."""
    old = final_linear(model.classifier)
    new = torch.nn.Linear(old.in_features, len(labels))
    if weight is not None:
        with torch.no_grad():
            new.weight.copy_(weight)
            new.bias.copy_(bias)
    if model.classifier is old:
        model.classifier = new
    else:
        parent = next(m for m in model.classifier.modules() if any(c is old for c in m.children()))
        name = next(n for n, c in parent.named_children() if c is old)
        setattr(parent, name, new)
    model.config.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    return model


def train_version(samples: list[Sample], config: TrainConfig, settings: Settings, registry: LocalRegistry, *,
                  report: Report | None = None, should_stop: Callable[[], bool] | None = None,
                  activate: bool = True, dataset_name: str | None = None, skipped: dict | None = None,
                  extra_info: dict | None = None) -> dict:
    """Train on ``samples``, register the result as the next version, activate it; returns
    ``{"version", "metrics"}`` (metrics summary). Nothing is registered if anything fails or if
    ``should_stop()`` turns true before the version is registered (then Cancelled is raised)."""
    report = report or ignore
    started = time.monotonic()
    check_classes(samples)
    distributed.check_distributed(config)
    staged = None
    try:
        staged = registry.stage()
        info, metrics = _MODES[config.mode](samples, config, settings, staged, report, should_stop)
        stop_if_asked(should_stop)
        if distributed.world_size() > 1:  # torchrun: only rank 0 registers; every rank reports its weights
            info["ranks"], digest = distributed.world_size(), info.get("weights_digest")
            if not distributed.is_main_process():
                registry.discard(staged)
                return {"version": None, "rank": distributed.rank(), "weights_digest": digest,
                        "train_steps": info.get("train_steps"), "metrics": summary(metrics)}
        metrics["data_health"] = health_for_run(samples, config, settings, registry)
        metrics.update(wall_time_s=round(time.monotonic() - started, 2), skipped=dict(skipped or {}, **metrics.get("skipped", {})))
        info.update(extra_info or {}, mode=config.mode, dataset=dataset_name, classes=metrics["labels"])
        params = config.to_dict()
        write_run_files(staged, metrics, params)
        report(ProgressEvent(0.99, "registering the new version"))
        version = registry.register(staged, info, finalize=card_writer(info, metrics, params))
    except BaseException as exc:
        if staged is not None:
            registry.discard(staged)
        if _out_of_space(exc):
            raise PlatformError("The data directory ran out of disk space while saving the model; "
                                "nothing was registered and the previous version stays active") from None
        raise
    if activate:
        registry.set_active(version)
    if distributed.world_size() > 1:
        return {"version": version, "rank": 0, "weights_digest": digest, "train_steps": info.get("train_steps"),
                "metrics": summary(metrics)}
    return {"version": version, "metrics": summary(metrics)}


def _out_of_space(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, as an OSError or wrapped by a writer with its own error type (safetensors' SafetensorError)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


def summary(metrics: dict) -> dict:
    keys = ("accuracy", "macro_f1", "ece", "train_size", "val_size", "evaluated_on", "wall_time_s", "labels", "skipped",
            "warnings")
    return {k: metrics.get(k) for k in keys}


def _embedded_split(samples, config, settings, report, fm, should_stop):
    """Embed through the cache, drop undecodable images, split; shared by head and finetune."""
    embedder = cached_embedder(fm, settings)
    report(ProgressEvent(0.05, f"embedding {len(samples)} images (cached ones are reused)"))
    feats, _ = embed_samples(embedder, samples, part_of(report, 0.05, 0.45), should_stop)
    stop_if_asked(should_stop)
    usable, skipped = drop_unreadable(samples, set(feats))
    labels = check_classes(usable, skipped)
    parts = split(usable, config.val_fraction)
    index = {name: i for i, name in enumerate(labels)}
    return feats, parts, labels, index, skipped


def _evaluate(fm: FeatureModel, feats, parts, index, labels) -> dict:
    evaluated = parts.val or parts.train
    x = np.stack([feats[s.sha256] for s in evaluated])
    metrics = classification_metrics(np.array([index[s.label] for s in evaluated]), _probs(fm, x), labels)
    metrics.update(train_size=len(parts.train), val_size=len(parts.val),
                   evaluated_on="validation" if parts.val else "train", eval_kept_for_training=parts.kept_for_training,
                   warnings=list(parts.warnings) + ([] if parts.val else
                                                    ["no validation images: the metrics are on the training images"]))
    return metrics


def _fit_head(feats, train, index, labels, config, report, should_stop):
    x = np.stack([feats[s.sha256] for s in train])
    y = np.array([index[s.label] for s in train])
    return train_linear_head(x, y, len(labels), lr=config.lr if config.mode == "head" else 3e-3,
                             batch_size=config.batch_size if config.mode == "head" else 256,
                             epochs=config.epochs if config.mode == "head" else 60,
                             weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
                             seed=config.seed, report=report, should_stop=should_stop,
                             max_seconds=config.max_seconds)


def head_resolution(config: TrainConfig, backbone: str) -> int | None:
    """Input size in pixels a head version is trained and served at: the config's; else, for the bundled
    backbone, ``HEAD_RESOLUTION`` (chosen on validation data, see training/config.py); else None (the
    backbone's own, as its processor says: other backbones were not measured, and some need their own)."""
    if config.resolution:
        return config.resolution
    return HEAD_RESOLUTION if Path(backbone).name == DEFAULT_BACKBONE else None


def head_precision(config: TrainConfig, backbone: str) -> str:
    """The arithmetic a head version computes its features in: the config's; else, for the bundled backbone on
    a CPU with native bfloat16, ``HEAD_PRECISION`` (chosen on validation data, see training/config.py); else
    float32 (bfloat16 emulated is slower than float32, and other backbones were not measured)."""
    if config.precision:
        return config.precision
    if Path(backbone).name == DEFAULT_BACKBONE and runtime.bfloat16_native():
        return HEAD_PRECISION
    return runtime.FLOAT32


def _train_head(samples, config, settings, staged, report, should_stop):
    backbone = resolve_backbone(config.backbone or settings.backbone, settings.backbones_dir)
    resolution = head_resolution(config, backbone)
    fm = head_features(config, backbone)
    feats, parts, labels, index, skipped = _embedded_split(samples, config, settings, report, fm, should_stop)
    weight, bias, curve = _fit_head(feats, parts.train, index, labels, config, part_of(report, 0.5, 0.45), should_stop)
    stop_if_asked(should_stop)
    model = _set_head(copy.deepcopy(fm.model), labels, weight, bias)
    head_fm = FeatureModel(model, None, fm.backbone_id)
    head_fm.resolution, head_fm.mean, head_fm.std = fm.resolution, fm.mean, fm.std
    metrics = _evaluate(head_fm, feats, parts, index, labels)
    metrics.update(loss_curve=curve, skipped=skipped)
    model.save_pretrained(staged)
    _processor_for(backbone, resolution).save_pretrained(staged)
    return {"backbone": config.backbone or settings.backbone or "bundled", "backbone_id": fm.backbone_id,
            **fm.inference_choice()}, metrics


def _processor_for(backbone: str, resolution: int | None):
    from transformers import AutoImageProcessor
    processor = AutoImageProcessor.from_pretrained(backbone)
    _set_resolution(processor, resolution)
    return processor


def _train_finetune(samples, config, settings, staged, report, should_stop):
    backbone = resolve_backbone(config.backbone or settings.backbone, settings.backbones_dir)
    fm = _backbone(backbone, config.resolution)
    feats, parts, labels, index, skipped = _embedded_split(samples, config, settings, report, fm, should_stop)
    train = parts.train
    weight, bias, _ = _fit_head(feats, train, index, labels, config, None, should_stop)  # warm start
    stop_if_asked(should_stop)
    model, _ = load_model_and_processor(backbone)
    model = _set_head(model, labels, weight, bias)
    trainer.cap_head_dropout(model, trainer.HEAD_DROPOUT)
    trainable = trainer.freeze_all_but_last(model, config.unfreeze_blocks)
    log.info("finetune: %d trainable parameters", trainable)
    dataset = trainer.ImageDataset(train, [index[s.label] for s in train], fm.resolution, fm.mean, fm.std,
                                   config.augment, settings.max_image_pixels, config.seed, config.min_crop)
    curve, steps = trainer.fit(model, dataset, config, part_of(report, 0.5, 0.45), should_stop)
    stop_if_asked(should_stop)
    return _save_and_evaluate(model, _processor_for(backbone, config.resolution), staged, parts, labels, index,
                              settings, curve, skipped,
                              {"backbone": config.backbone or settings.backbone or "bundled", "train_steps": steps})


def _train_scratch(samples, config, settings, staged, report, should_stop):
    unique = {s.sha256: s for s in samples}.values()
    samples, skipped = drop_unreadable(samples, {s.sha256 for s in unique if _readable(s, settings.max_image_pixels)})
    labels = check_classes(samples, skipped)
    parts = split(samples, config.val_fraction)
    train = parts.train
    index = {name: i for i, name in enumerate(labels)}
    model, processor = trainer.build_scratch_model(config, labels)
    dataset = trainer.ImageDataset(train, [index[s.label] for s in train], config.resolution, processor.image_mean,
                                   processor.image_std, config.augment, settings.max_image_pixels, config.seed,
                                   config.min_crop)
    curve, steps = trainer.fit(model, dataset, config, part_of(report, 0.05, 0.9), should_stop)
    stop_if_asked(should_stop)
    return _save_and_evaluate(model, processor, staged, parts, labels, index, settings, curve, skipped,
                              {"backbone": f"scratch ({config.filters} filters, {config.filter_size}px kernels, depth {config.depth})",
                               "train_steps": steps})


def _save_and_evaluate(model, processor, staged, parts, labels, index, settings, curve, skipped, info):
    model.eval()
    model.save_pretrained(staged)
    processor.save_pretrained(staged)
    fm = FeatureModel(model, processor, f"w{weights_digest(model.base_model)}")
    embedder = cached_embedder(fm, settings)
    feats, errors = embed_samples(embedder, parts.val)
    val_ok = [s for s in parts.val if s.sha256 in feats]
    if not val_ok:  # tiny data: no validation split, so report on the training images (labelled as such)
        feats, errors = embed_samples(embedder, parts.train)
    train_ok = [s for s in parts.train if s.sha256 in feats] if not val_ok else parts.train
    if not val_ok and not train_ok:
        raise PlatformError("None of the images could be decoded; nothing to evaluate")
    metrics = _evaluate(fm, feats, dataclasses.replace(parts, train=train_ok, val=val_ok), index, labels)
    if errors:
        skipped = dict(skipped, **{"undecodable image": len(errors)})
    metrics.update(loss_curve=curve, skipped=skipped, train_size=len(parts.train))
    if distributed.world_size() > 1:  # every rank's trained weights, compared across ranks (DDP keeps them equal)
        info = dict(info, weights_digest=weights_digest(model))
    return dict(info, backbone_id=fm.backbone_id, **fm.inference_choice()), metrics


_MODES = {"head": _train_head, "finetune": _train_finetune, "scratch": _train_scratch}
