"""Levers: what each knob of the product's image path buys, measured side by side in this run.

End-to-end levers time ``predict_batch`` on the figure-1 batch with the cache disabled (every call
decodes and embeds); forward-only levers time the backbone on the same preprocessed batch; the
resolution lever also trains a head at each resolution and reports its Fashion-MNIST test accuracy.
Variants of one lever run round-robin, so a load change on the machine hits them all alike.
"""
from __future__ import annotations

import copy
import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.accuracy import head_accuracy
from bench.data import image_files
from bench.measure import BusyCore, interleaved
from bench.report import fmt

log = logging.getLogger(__name__)
RESOLUTIONS = (224, 192, 160, 128)


def _row(lever: str, timings: dict, default: str, unit_images: int, extra: dict | None = None) -> list[list]:
    base = timings[default].median
    rows = []
    for name, t in timings.items():
        rows.append([lever, name + (" (default)" if name == default else ""), fmt(t.median, "s"),
                     f"{unit_images / t.median:.1f}", f"{base / t.median:.2f}×", (extra or {}).get(name, "")])
    return rows


def _predictors(version, settings, **variants):
    from classifier.predict import Predictor
    out = {}
    for name, attrs in variants.items():
        predictor = Predictor.load(version.path, version.version, None, settings.max_image_pixels)
        predictor.fm.warm(wait=True)
        for key, value in attrs.items():
            setattr(predictor.embedder, key, value)
        out[name] = predictor
    return out


def _threads(fn, n: int):
    def call():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return call


class _Pooled(torch.nn.Module):
    """Backbone → pooled features as one tensor-in, tensor-out module (what tracing and compiling need)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, pixel_values):
        return self.base(pixel_values=pixel_values).pooler_output.flatten(1)


def _scripted(base, example):
    """TorchScript trace → freeze → optimize_for_inference (folds BatchNorm, prepacks oneDNN weights)."""
    import warnings
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the torch.jit API is deprecated in favour of torch.compile
        traced = torch.jit.trace(_Pooled(copy.deepcopy(base)).eval(), example)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def _compiled(base, example, cache_dir):
    """torch.compile (inductor) with weight freezing; its on-disk cache lives under bench/_work."""
    import os
    import torch._inductor.config as inductor
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
    with inductor.patch(freezing=True):
        module = torch.compile(_Pooled(copy.deepcopy(base)).eval())
        with torch.inference_mode():
            module(example)
    return module


DEFAULT = "fp32, channels_last, BatchNorm folded (default)"


def _forward_levers(fm, batch: torch.Tensor, reps: int, cache_dir, size: int) -> tuple[list[list], dict]:
    """channels_last, BatchNorm folding, TorchScript, torch.compile and bfloat16 on the backbone forward alone,
    in batches of ``size`` (the Embedder's).

    The default is what :class:`FeatureModel` runs: BatchNorm folded into the convolutions, channels_last."""
    import time
    first = batch[:size].contiguous(memory_format=torch.channels_last)
    prep = {}
    start = time.perf_counter()
    scripted = _scripted(fm.base, first)
    prep["TorchScript freeze + optimize_for_inference"] = time.perf_counter() - start
    start = time.perf_counter()
    try:
        compiled = _compiled(fm.base, first, cache_dir)
        prep["torch.compile (inductor, freezing)"] = time.perf_counter() - start
    except Exception as exc:  # no C++ compiler, or an inductor failure: report, do not stop the section
        compiled = None
        log.warning("torch.compile lever skipped: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    # The product's FeatureModel already folds batch norm (fm.base); the unfolded model is the variant.
    plain = copy.deepcopy(fm.base).to(memory_format=torch.contiguous_format)
    unfolded = _Pooled(copy.deepcopy(fm.model.base_model).eval().to(memory_format=torch.channels_last))
    default = _Pooled(fm.base)

    def run(model, channels_last=True, bf16=False):
        def call():
            outs = []
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for i in range(0, len(batch), size):
                    x = batch[i:i + size]
                    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
                    outs.append(model(x).float())
            return torch.cat(outs)
        return call
    variants = {DEFAULT: run(default), "fp32, contiguous (NCHW), BatchNorm folded": run(_Pooled(plain), False),
                "BatchNorm not folded (the model as saved)": run(unfolded),
                "TorchScript freeze + optimize_for_inference": run(scripted),
                "bfloat16 autocast": run(default, bf16=True)}
    if compiled is not None:
        variants["torch.compile (inductor, freezing)"] = run(compiled)
    reference = variants[DEFAULT]()
    quality = {}
    for name, fn in variants.items():
        feats = fn()
        cos = torch.nn.functional.cosine_similarity(feats, reference).min().item()
        same = (fm.logits(feats).argmax(1) == fm.logits(reference).argmax(1)).float().mean().item()
        extra = f"; one-time preparation {prep[name]:.1f} s" if name in prep else ""
        quality[name] = f"min cosine to default {cos:.4f}; same top-1 {same:.1%}{extra}"
    timings = interleaved(variants, reps, warmups={})  # the quality pass above was the warm-up
    rows = [["backbone forward", name, fmt(t.median, "s"), f"{len(batch) / t.median:.1f}",
             f"{timings[DEFAULT].median / t.median:.2f}×", quality[name]]
            for name, t in timings.items()]
    return rows, {"timings": {k: v.to_dict() for k, v in timings.items()}, "preparation_s": prep}


def _draft_rows(files, resolution: int, reps: int) -> list[list]:
    """JPEG draft mode: decode time with and without it, on the data's JPEGs and on 4× larger ones."""
    from classifier.images import ImageInput, decode
    small = [ImageInput.from_bytes(f.read_bytes(), f.name) for f in files]
    large = []
    for img in small:
        buf = io.BytesIO()
        Image.open(io.BytesIO(img.data)).convert("RGB").resize((600, 600)).save(buf, format="JPEG", quality=90)
        large.append(ImageInput.from_bytes(buf.getvalue(), img.name))
    rows = []
    for label, inputs in (("150 px JPEGs (the data)", small), ("600 px JPEGs (same images, 4× larger)", large)):
        fns = {"draft on (default)": lambda i=inputs: [decode(x, 1 << 30, draft_size=resolution) for x in i],
               "draft off": lambda i=inputs: [decode(x, 1 << 30) for x in i]}
        t = interleaved(fns, reps)
        base = t["draft on (default)"].median
        rows += [[f"JPEG draft, decode only, {label}", name, fmt(v.median, "s"), f"{len(inputs) / v.median:.1f}",
                  f"{base / v.median:.2f}×", ""] for name, v in t.items()]
    return rows


def _e2e(predictor, files):
    def call():
        results, errors = predictor.predict_batch(files)
        if errors:
            raise RuntimeError(f"{len(errors)} images failed")
    return call


def run(bench) -> dict:
    from classifier.images import decode, read_input, to_array
    from training.config import HEAD_RESOLUTION
    from training.data import load_folder
    settings, reps = bench.settings("levers"), max(2, bench.sizes.reps // 2)
    version = bench.head_version(settings)
    files = image_files(bench.slices().batch)
    n, few = len(files), files[:8]
    default = _predictors(version, settings, default={})["default"]
    fm = default.fm
    rows, details = [], {}

    log.info("levers: threads, decode threads, batch size (end to end, %d images, %d reps)", n, reps)
    threads = torch.get_num_threads()
    t = interleaved({f"{threads} threads": _e2e(default, files), "1 thread": _threads(_e2e(default, files), 1)}, reps,
                    warmups={"n": _e2e(default, few), "1": _threads(_e2e(default, few), 1)})
    rows += _row("torch threads, end to end", t, f"{threads} threads", n)
    details["threads"] = {k: v.to_dict() for k, v in t.items()}
    alloc_rows, details["allocator"] = _allocator_rows(version, files, reps)
    rows += alloc_rows
    busy_rows, details["threads_one_core_busy"] = _threads_under_load(default, files, reps)
    rows += busy_rows
    preds = _predictors(version, settings, **{f"{k} decode threads": {"decode_threads": k} for k in (1, 2, 4)})
    t = interleaved({k: _e2e(p, files) for k, p in preds.items()}, reps, warmups={k: _e2e(p, few) for k, p in preds.items()})
    rows += _row("decode threads, end to end", t, f"{default.embedder.decode_threads} decode threads", n)
    details["decode_threads"] = {k: v.to_dict() for k, v in t.items()}
    preds = _predictors(version, settings, **{f"batch {k}": {"batch_size": k} for k in (1, 8, 16, 32, 64)})
    t = interleaved({k: _e2e(p, files) for k, p in preds.items()}, reps, warmups={k: _e2e(p, files[:p.embedder.batch_size]) for k, p in preds.items()})
    rows += _row("Embedder batch size, end to end", t, f"batch {default.embedder.batch_size}", n)
    details["batch_size"] = {k: v.to_dict() for k, v in t.items()}

    log.info("levers: forward-only variants and JPEG draft")
    arrays = [to_array(decode(read_input(f), settings.max_image_pixels, fm.resolution), fm.resolution, fm.mean, fm.std)
              for f in files]
    forward_rows, details["forward"] = _forward_levers(fm, torch.from_numpy(np.stack(arrays)), reps,
                                                       bench.work / "inductor", default.embedder.batch_size)
    rows += forward_rows
    rows += _draft_rows(files, fm.resolution, reps)

    log.info("levers: resolution (speed end to end + head accuracy on %d/%d images)", bench.sizes.lever_train,
             bench.sizes.lever_test)
    train = load_folder(bench.slices().lever_train).samples
    test = load_folder(bench.slices().lever_test).samples
    by_res, acc = {}, {}
    for res in RESOLUTIONS:
        out = head_accuracy(bench, settings, train, test, res)
        by_res[f"{res} px"] = _predictors(out["version"], settings, p={})["p"]
        acc[f"{res} px"] = f"head test accuracy {out['accuracy']:.4f} (train {len(train)}, test {len(test)})"
    t = interleaved({k: _e2e(p, files) for k, p in by_res.items()}, reps, warmups={k: _e2e(p, few) for k, p in by_res.items()})
    rows += _row("input resolution, end to end", t, f"{HEAD_RESOLUTION} px", n, acc)
    details["resolution"] = {k: v.to_dict() for k, v in t.items()}
    details["resolution_accuracy"] = acc
    head_rows, details["head_fit_threads"] = _head_fit_threads(bench, train, reps)
    rows += head_rows
    return {"name": "levers", "title": "Levers",
            "method": (f"Each lever's variants timed round-robin, median of {reps} after a warm-up, on the figure-1 "
                       f"batch of {n} images with the embedding cache disabled; 'vs default' is default time ÷ variant "
                       "time (>1 = the variant is faster). The allocator rows run in fresh processes (allocator "
                       "state depends on a process's history); the others in this process, after the sections "
                       "before them. Resolution accuracy: a head trained at that resolution on "
                       f"{len(train)} Fashion-MNIST training images, tested on {len(test)} test images."),
            "tables": [{"title": "Levers", "columns": ["lever", "setting", "time", "images/s", "vs default", "effect"],
                        "rows": rows}],
            "details": details}


_ALLOCATOR_PROBE = """
import json, sys, time
from classifier.predict import Predictor
path, version, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sys.argv[4:]
predictor = Predictor.load(path, version, None, 1 << 30)
predictor.predict_batch(files)
times = []
for _ in range(reps):
    start = time.perf_counter()
    predictor.predict_batch(files)
    times.append(time.perf_counter() - start)
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(json.dumps({"times": times, "vm_hwm_mb": round(hwm / 1024, 1)}))
"""


def _allocator_rows(version, files, reps: int) -> tuple[list[list], dict]:
    """The allocator setting of classifier/memory.py against glibc as shipped (``TUNE_MALLOC=0``, every
    large tensor mmap'd and page-faulted afresh), each in a fresh process (allocator state depends on a
    process's history)."""
    import json
    import os
    import subprocess
    import sys
    from bench.measure import Timing
    repo = Path(__file__).resolve().parent.parent
    out = {}
    for name, extra in (("freed memory kept for reuse (default, fresh process)", {}),
                        ("glibc as shipped: TUNE_MALLOC=0 (fresh process)", {"TUNE_MALLOC": "0"})):
        env = dict(os.environ, PYTHONPATH=str(repo), **extra)
        done = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, str(version.path), version.version,
                               str(max(3, reps))] + [str(f) for f in files],
                              env=env, capture_output=True, text=True, check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = Timing(next(iter(out.values()))["times"]).median  # the default's
    rows = []
    for name, result in out.items():
        t = Timing(result["times"])
        rows.append(["memory allocator, end to end", name, fmt(t.median, "s"), f"{len(files) / t.median:.1f}",
                     f"{base / t.median:.2f}×", f"peak RSS of the process {result['vm_hwm_mb']} MB"])
    return rows, out


def _head_fit_threads(bench, train, reps: int):
    """Head fitting (60 epochs of softmax regression on cached features) at 1 and all torch threads, on an idle
    machine and with another process keeping one core busy."""
    from training.head import train_linear_head
    feats = bench.prepared_features(train)
    labels = sorted({s.label for s in train})
    x = np.stack([feats[s.sha256] for s in train])
    y = np.array([labels.index(s.label) for s in train])

    def fit():
        train_linear_head(x, y, len(labels), lr=3e-3, batch_size=256, epochs=60, weight_decay=1e-4,
                          label_smoothing=0.0, seed=0)
    threads = torch.get_num_threads()
    variants = {f"{threads} threads": fit, "1 thread": _threads(fit, 1)}
    idle = interleaved(variants, reps)
    with BusyCore():
        busy = interleaved(variants, reps, warmups={})
    lever = f"torch threads, head fit ({len(train)} vectors, 60 epochs)"
    rows = _row(lever, idle, f"{threads} threads", len(train)) + \
        _row(lever + ", one core busy with another process", busy, f"{threads} threads", len(train))
    return rows, {"idle": {k: v.to_dict() for k, v in idle.items()}, "one_core_busy": {k: v.to_dict() for k, v in busy.items()}}


def _threads_under_load(default, files, reps: int):
    """End-to-end batch at 1 and all torch threads while another process keeps one core busy."""
    threads = torch.get_num_threads()
    with BusyCore():
        t = interleaved({f"{threads} threads": _e2e(default, files), "1 thread": _threads(_e2e(default, files), 1)},
                        reps, warmups={})
    return _row("torch threads, end to end, one core busy with another process", t, f"{threads} threads", len(files)), \
        {k: v.to_dict() for k, v in t.items()}
