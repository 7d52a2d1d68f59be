"""Pooled backbone features, cached on disk by (image sha256, backbone id, resolution).

A model is split into ``features`` (backbone + pooling) and ``head`` (its final classifier), so a
``head``-mode version predicts from cached features, and an image is never embedded twice by the
same backbone at the same resolution.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import tempfile
import threading
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from classifier import runtime
from classifier.images import ImageInput, crop, decode
from settings import PlatformError

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]


def file_digest(path: Path, length: int = 16) -> str:
    """Short sha256 hex of a file's bytes (identifies a set of weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def fold_batch_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every ``convolution`` → ``normalization`` (Conv2d → BatchNorm2d) pair of an eval-mode model into
    one convolution, as transformers' conv layers (MobileNetV2, ResNet-style, …) name them. Other layers
    are left as they are. Returns ``module``, changed in place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for layer in module.modules():
        conv, norm = getattr(layer, "convolution", None), getattr(layer, "normalization", None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
            layer.convolution = fuse_conv_bn_eval(conv, norm)
            layer.normalization = torch.nn.Identity()
    return module


def inplace_activations(module: torch.nn.Module) -> torch.nn.Module:
    """Make the activation of every convolution layer (a module with ``convolution`` and a ReLU / ReLU6
    ``activation``, transformers' conv-layer pattern) work in place: it only ever sees the fresh output of
    its own convolution, so the result is bit-for-bit the same, without allocating and writing a second
    activation tensor (ReLU6 was about a quarter of MobileNetV2's CPU time in a profile). For inference
    copies only (autograd needs the inputs). Returns ``module``, changed in place."""
    for layer in module.modules():
        act = getattr(layer, "activation", None)
        if isinstance(getattr(layer, "convolution", None), torch.nn.Conv2d) and isinstance(act, (torch.nn.ReLU, torch.nn.ReLU6)):
            layer.activation = type(act)(inplace=True)
    return module


INFERENCE_GRAPH = "eager, BatchNorm folded into the convolutions, in-place ReLU6, channels_last"
"""What runs a float32 backbone eagerly: in short-lived processes, and in the app until its ONNX Runtime graph is
ready or where that graph is not the faster. TorchScript and torch.compile were measured as levers
(bench/levers.py), and a compiled float32 graph in the app: on an AVX2 CPU it ran a batch of 16 1.2-1.4× faster
than eager, but a whole 128-image prediction no faster (1.52 s against 1.45 s, median of 5 interleaved; its threads
compete with the JPEG decoding that overlaps the forward). ONNX Runtime made the same prediction 1.45× faster
(medians 1.51 s against 2.22 s, 8 interleaved pairs over two runs), see classifier/runtime.py."""
ONNX_GRAPH = "ONNX Runtime session of the float32 graph, BatchNorm folded"
COMPILED_GRAPH = "torch.compile (inductor, frozen weights) of the bfloat16-mixed graph, BatchNorm folded"
EAGER_MIXED_GRAPH = "eager bfloat16-mixed graph, BatchNorm folded, in-place ReLU6, channels_last"


class FeatureModel:
    """An image-classification model seen as features → head, with its input size and normalisation."""

    def __init__(self, model: torch.nn.Module, processor, backbone_id: str, precision: str = runtime.FLOAT32):
        self.model = model.eval()
        self.backbone_id = backbone_id
        crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
        self.resolution = int(crop.get("height") or crop.get("shortest_edge") or 224)
        self.mean = list(getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5])
        self.std = list(getattr(processor, "image_std", None) or [0.5, 0.5, 0.5])
        self.head = model.classifier
        self.model.to(memory_format=torch.channels_last)
        # Inference runs on a copy with batch norm folded into the convolutions (same outputs, about 2×
        # faster on CPU, see bench/RESULTS.md); ``model`` itself stays as saved, for training and saving.
        self.base = inplace_activations(fold_batch_norms(copy.deepcopy(model.base_model).eval()))
        if precision not in (runtime.FLOAT32, runtime.MIXED):
            raise PlatformError(f"Unknown inference precision {precision!r}")
        if precision == runtime.MIXED and not runtime.supports_mixed(self.base):
            raise PlatformError(f"{runtime.MIXED} needs a MobileNetV2-style backbone; {backbone_id} is not one")
        self.precision = precision
        forward = runtime.MixedForward if precision == runtime.MIXED else runtime.Float32Forward
        self._forward = forward(self.base, self.mean, self.std).eval()
        """uint8 crops → pooled features as one module: what the app's faster graph is built from."""

    def inference_choice(self) -> dict:
        """How this model computes features, as a version records it and ``/status`` reports it: ``resolution``
        (input side, pixels), ``precision`` and ``graph``."""
        built = runtime.compiled_already(self.cache_key)
        if self.precision == runtime.FLOAT32:
            graph = ONNX_GRAPH if built else INFERENCE_GRAPH
        else:
            graph = COMPILED_GRAPH if built else EAGER_MIXED_GRAPH
        return {"resolution": self.resolution, "precision": self.precision, "graph": graph}

    @property
    def cache_key(self) -> str:
        suffix = "" if self.precision == runtime.FLOAT32 else f"-{self.precision}"
        return f"{self.backbone_id}-{self.resolution}px{suffix}"

    def to(self, device) -> "FeatureModel":
        """Move the inference copies (and the head) to ``device``, e.g. a bulk worker's GPU."""
        for module in (self.base, self.head, self._forward):
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def _compiled(self, start: bool = False, wait: bool = False):
        """The built graph, or None (run eagerly): building starts only through :meth:`warm` (the app does it when
        it serves a version); short-lived processes (the CLI, bulk jobs, training runs) run eagerly."""
        from settings import get_settings
        if self.device.type != "cpu" or not get_settings().compile_backbone:
            return None
        if not start and not runtime.started(self.cache_key):
            return None
        return runtime.compiled(self.cache_key, self._forward, self.resolution, wait)

    @property
    def compiling(self) -> bool:
        """Whether this model's graph is being built in the background (requests run it eagerly meanwhile)."""
        return runtime.compiling(self.cache_key)

    def warm(self, wait: bool = False) -> None:
        """Start building the backbone's faster graph (seconds, on a background thread, once per process and cache
        key: ONNX Runtime for float32, torch.compile for bfloat16-mixed; until it is ready the same arithmetic runs
        eagerly); ``wait`` until it is done."""
        self._compiled(start=True, wait=wait)

    def padded_batch(self) -> int:
        """The batch size a forward pass costs at least: the torch.compile graph's fixed batch once it runs
        (:data:`~classifier.runtime.COMPILED_BATCH`, smaller batches are padded to it), else 1."""
        compiled = self._compiled()
        return runtime.COMPILED_BATCH if compiled is not None and not isinstance(compiled, runtime.OnnxGraph) else 1

    def features_of_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Pooled features (n, d) of uint8 crops (n, resolution, resolution, 3), as the Embedder, the bulk
        scorers and every version's predictions compute them: the one place the model's input arithmetic
        lives. float32: ``(x / 255 - mean) / std`` (bit for bit :func:`classifier.images.normalise_pixels`),
        then the folded backbone (in the app, its ONNX Runtime graph once built and faster: within 1e-5);
        ``bfloat16-mixed``: the graph of :mod:`classifier.runtime`."""
        with torch.inference_mode():  # the compiled graph's frozen weights are inference-only
            return self._features_of_crops(crops.to(self.device).permute(0, 3, 1, 2))  # channels_last, no copy

    def _features_of_crops(self, pixels: torch.Tensor) -> torch.Tensor:
        compiled, n = self._compiled(), len(pixels)
        if compiled is None:
            return self._forward(pixels)  # float32: bit for bit the numpy arithmetic
        if isinstance(compiled, runtime.OnnxGraph):  # any batch size: a prefetched chunk of 1 costs one image
            return compiled(pixels)
        pixels = pixels.contiguous(memory_format=torch.channels_last)  # the compiled layout: no recompiling
        if not pixels.is_inference():  # made outside inference_mode: a copy that is one, no recompiling either
            pixels = pixels.clone()
        out = []
        for start in range(0, n, runtime.COMPILED_BATCH):
            part = pixels[start:start + runtime.COMPILED_BATCH]
            if len(part) < runtime.COMPILED_BATCH:  # the graph's one batch size: pad, never recompile
                pad = part.new_zeros((runtime.COMPILED_BATCH - len(part), *part.shape[1:]))
                part = torch.cat([part, pad]).contiguous(memory_format=torch.channels_last)
            out.append(compiled(part)[:min(runtime.COMPILED_BATCH, n - start)])
        return torch.cat(out)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled features, shape (n, d), of normalised float32 pixels in this model's float32 arithmetic
        (finetuning and the levers; predictions go through :meth:`features_of_crops`)."""
        return runtime.pooled(self.base(pixel_values=pixel_values.contiguous(memory_format=torch.channels_last)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


class EmbeddingCache:
    """Feature vectors by image sha256 for one cache key, persisted as append-only ``.npz`` shards.

    Use :meth:`open` for the process's one instance per folder: each instance reads every shard once and then
    keeps the vectors in memory, so separate instances on one folder would each read it again (the review
    queue did, on every prediction: 0.5 s of a 128-image request) and miss what the others added since."""

    _COMPACT_AFTER = 64
    _shared: dict = {}
    _shared_lock = threading.Lock()

    @classmethod
    def open(cls, root: Path, key: str) -> "EmbeddingCache":
        """The process's shared instance for ``root`` / ``key``."""
        cache = cls(root, key)
        with cls._shared_lock:
            return cls._shared.setdefault(str(cache.dir.resolve()), cache)

    def __init__(self, root: Path, key: str):
        self.dir = root / re.sub(r"[^A-Za-z0-9_.@-]", "_", key)
        self._lock = threading.Lock()
        self._vectors: dict[str, np.ndarray] = {}
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        shards = sorted(self.dir.glob("*.npz")) if self.dir.is_dir() else []
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    for sha, vec in zip(data["sha"], data["vec"]):
                        self._vectors[str(sha)] = vec
            except (OSError, ValueError, KeyError) as exc:
                log.warning("Skipping unreadable embedding shard %s: %s", shard.name, exc)
        self._loaded = True
        if len(shards) > self._COMPACT_AFTER:
            self._write(list(self._vectors), np.stack(list(self._vectors.values())), replace=shards)

    def __len__(self) -> int:
        with self._lock:
            self._load()
            return len(self._vectors)

    def get_many(self, shas: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            self._load()
            return {s: self._vectors[s] for s in shas if s in self._vectors}

    def put_many(self, shas: list[str], vectors: np.ndarray) -> None:
        if not shas:
            return
        with self._lock:
            self._load()
            fresh = [(s, v) for s, v in zip(shas, vectors) if s not in self._vectors]
            if not fresh:
                return
            for s, v in fresh:
                self._vectors[s] = v
            try:
                self._write([s for s, _ in fresh], np.stack([v for _, v in fresh]))
            except OSError as exc:  # a full disk loses cache entries, never results
                log.warning("Could not persist %d embeddings: %s", len(fresh), exc)

    def _write(self, shas: list[str], vectors: np.ndarray, replace: list[Path] = ()) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, sha=np.array(shas), vec=vectors.astype(np.float32))
        os.replace(tmp, self.dir / f"{uuid.uuid4().hex}.npz")
        for old in replace:
            old.unlink(missing_ok=True)


class Embedder:
    """Embeds batches of images with a :class:`FeatureModel`, through the cache, decoding in parallel."""

    def __init__(self, feature_model: FeatureModel, cache: EmbeddingCache | None, max_pixels: int,
                 batch_size: int = 16, decode_threads: int = 2):
        self.fm = feature_model
        self.cache = cache
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.decode_threads = decode_threads

    def _prepare(self, image: ImageInput) -> np.ndarray | str:
        try:
            return crop(decode(image, self.max_pixels, draft_size=self.fm.resolution), self.fm.resolution)
        except PlatformError as exc:
            return str(exc)

    def missing(self, images: list[ImageInput]) -> list[ImageInput]:
        """The images (one per sha256) whose features are not in the cache yet."""
        cached = self.cache.get_many([i.sha256 for i in images]) if self.cache is not None else {}
        return list({i.sha256: i for i in images if i.sha256 not in cached}.values())

    def embed(self, images: list[ImageInput], progress: ProgressFn | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Features by sha256 for every decodable image, and an error message by sha256 for the rest."""
        cached = self.cache.get_many([i.sha256 for i in images]) if self.cache is not None else {}
        todo = list({i.sha256: i for i in images if i.sha256 not in cached}.values())
        errors: dict[str, str] = {}
        done = len(images) - len(todo)
        chunks = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        with ThreadPoolExecutor(self.decode_threads) as pool, torch.inference_mode():
            # Decode at most two chunks ahead of the forward pass: overlap without holding a dataset in RAM.
            ahead: deque = deque()
            submitted = 0
            for chunk in chunks:
                while submitted < len(chunks) and len(ahead) < 2:
                    ahead.append([pool.submit(self._prepare, i) for i in chunks[submitted]])
                    submitted += 1
                arrays = [f.result() for f in ahead.popleft()]
                good = [(img, a) for img, a in zip(chunk, arrays) if not isinstance(a, str)]
                errors.update({img.sha256: a for img, a in zip(chunk, arrays) if isinstance(a, str)})
                if good:
                    feats = self.fm.features_of_crops(torch.from_numpy(np.stack([a for _, a in good]))).float().numpy()
                    shas = [img.sha256 for img, _ in good]
                    cached.update(zip(shas, feats))
                    if self.cache is not None:  # an empty cache is falsy (__len__)
                        self.cache.put_many(shas, feats)
                done += len(chunk)
                if progress:
                    progress(done / max(len(images), 1), f"embedded {done}/{len(images)} images")
        return cached, errors
