"""The benchmark's working area: sizes, data slices, one fresh ``DATA_DIR`` per section, prepared features.

Layout under ``bench/_work/`` (gitignored):

* ``data/`` — JPEG class folders, written once per slice and reused (see :mod:`bench.data`);
* ``backbones/`` — the bundled backbone converted once (what ``python app.py`` finds prepared);
* ``features/`` — an embedding cache used only where a figure is *not* an embedding time: the
  precondition "embeddings already cached" of the retrain figure and the test-set features that the
  head's accuracy is computed from. Timed "cold" paths never see it;
* ``runs/<stamp>/<section>/`` — each section's own ``DATA_DIR`` (registry, cache), deleted at the end.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import data as fmnist

log = logging.getLogger(__name__)
WORK_DIR = Path(__file__).resolve().parent / "_work"
_TEST_DIRS = ("seg_test", "test", "testing", "val", "validation")


@dataclass(frozen=True)
class Sizes:
    """How many images each part uses, and how many timed repetitions (after one warm-up)."""

    batch: int = 128
    retrain_base: int = 14_000
    corrections: int = 128
    accuracy_train: int = 6_000
    test: int = 10_000
    test_trained: int = 2_000
    version_train: int = 300
    reps: int = 5
    baseline_reps: int = 3
    retrain_reps: int = 3
    load_batch: int = 128
    load_single: int = 3
    load_rounds: int = 2
    load_zip: int = 3
    phones: int = 128
    """12-MP phone photos per request in the large-photo figures (two sets: as files, as one .zip)."""
    cold_starts: int = 3
    lever_train: int = 2_000
    lever_test: int = 2_000

    @property
    def load_pool(self) -> int:
        """Distinct images the load test sends: a warm-up request, the single-client requests, 4 per round, the
        requests sent as one .zip each."""
        return self.load_batch * (1 + self.load_single + 4 * self.load_rounds + self.load_zip)


FULL = Sizes()
QUICK = Sizes(retrain_base=500, accuracy_train=500, test=500, test_trained=200, version_train=100, reps=3,
              baseline_reps=1, retrain_reps=2, load_batch=32, load_single=1, load_rounds=1, load_zip=1, phones=4, cold_starts=1,
              lever_train=500, lever_test=500)


@dataclass
class Slices:
    """Folders of labelled images for each use; all but ``test``/``test_trained`` come from one train pool."""

    retrain_base: Path
    corrections: Path
    accuracy_train: Path
    version_train: Path
    batch: Path
    load_pool: Path
    test: Path
    test_trained: Path
    lever_train: Path
    lever_test: Path
    source: str


@dataclass
class Bench:
    """One benchmark run: its sizes, data, folders, and values sections hand to each other."""

    sizes: Sizes
    quick: bool
    data_arg: Path | None = None
    work: Path = WORK_DIR
    run_dir: Path = field(init=False)
    shared: dict = field(default_factory=dict)
    """Figures one section measured that another uses as its baseline (same run)."""
    preparation_s: float = 0.0
    """Untimed set-up spent in this run that later runs reuse: writing data, computing stored features."""
    _slices: Slices | None = field(default=None, init=False)
    _stores: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.run_dir = self.work / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.run_dir.mkdir(parents=True, exist_ok=True)

    # --- folders and settings --------------------------------------------------------------------
    def backbone_dir(self) -> Path:
        from classifier.backbone import ensure_bundled_backbone
        return ensure_bundled_backbone(self.work / "backbones")

    def settings(self, section: str, fresh: bool = True):
        """Settings for a section's own ``DATA_DIR`` (emptied first when ``fresh``), on the prepared backbone."""
        from settings import load_settings
        data_dir = self.run_dir / section
        if fresh:
            shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        return load_settings({"DATA_DIR": str(data_dir), "BACKBONE": str(self.backbone_dir())})

    def fresh_dir(self, name: str) -> Path:
        path = self.run_dir / "scratch" / f"{name}-{time.perf_counter_ns()}"
        path.mkdir(parents=True)
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- data ------------------------------------------------------------------------------------
    def slices(self) -> Slices:
        if self._slices is None:
            started = time.perf_counter()
            self._slices = self._folder_slices() if self.data_arg else self._fmnist_slices()
            self.preparation_s += time.perf_counter() - started
            log.info("data ready in %.1f s (%s)", time.perf_counter() - started, self._slices.source)
        return self._slices

    def _ranges(self, pool_size: int) -> dict[str, tuple[int, int]]:
        """Disjoint (start, count) ranges of the train pool."""
        s = self.sizes
        fixed = s.corrections + s.batch + s.load_pool
        base = max(0, min(s.retrain_base, pool_size - fixed))
        if base < 2 * len(fmnist.CLASSES):
            raise ValueError(f"The data has {pool_size} training images; the benchmark needs at least {fixed + 20}")
        return {"retrain_base": (0, base), "corrections": (base, s.corrections),
                "batch": (base + s.corrections, s.batch), "load_pool": (base + s.corrections + s.batch, s.load_pool)}

    def _with_prefixes(self, folders: dict[str, Path], source: str) -> Slices:
        """Add the slices that are the first n images of a bigger one (links, nothing re-encoded)."""
        s, root = self.sizes, self.run_dir / "data"
        for name, parent, count in (("accuracy_train", "retrain_base", s.accuracy_train),
                                    ("version_train", "retrain_base", s.version_train),
                                    ("lever_train", "retrain_base", s.lever_train),
                                    ("test_trained", "test", s.test_trained), ("lever_test", "test", s.lever_test)):
            folders[name] = _link_slice(root / name, _interleaved_files(folders[parent])[:count])
        return Slices(**folders, source=source)

    def _fmnist_slices(self) -> Slices:
        root = self.work / "data"
        folders = {name: fmnist.write_subset(root, "train", start, count)
                   for name, (start, count) in self._ranges(60_000).items()}
        folders["test"] = fmnist.write_subset(root, "test", 0, self.sizes.test)
        return self._with_prefixes(folders, "Fashion-MNIST, upscaled to 150×150 RGB JPEG")

    def _folder_slices(self) -> Slices:
        """Slices of a user's class-per-folder tree, as folders of symbolic links (class-interleaved order)."""
        from training.data import find_class_root
        train_root = find_class_root(self.data_arg)
        test_root = next((p for name in _TEST_DIRS for p in [self.data_arg / name, self.data_arg / name / name]
                          if p.is_dir() and p.resolve() != train_root.resolve()), None)
        pool = _interleaved_files(train_root)
        test_pool = _interleaved_files(find_class_root(test_root)) if test_root else []
        if not test_pool:  # no test split: hold out the tail of the pool
            held = min(self.sizes.test, len(pool) // 5)
            pool, test_pool = pool[:len(pool) - held], pool[len(pool) - held:]
        root = self.run_dir / "data"
        folders = {name: _link_slice(root / name, pool[start:start + count])
                   for name, (start, count) in self._ranges(len(pool)).items()}
        folders["test"] = _link_slice(root / "test", test_pool[:self.sizes.test])
        return self._with_prefixes(folders, f"class folders under {self.data_arg}")

    # --- prepared (untimed) features -------------------------------------------------------------
    def feature_model(self, resolution: int | None = None, precision: str | None = None):
        """The frozen backbone as the training code loads it (once per process) for a head version at
        ``resolution`` pixels in ``precision``; by default at the resolution and precision a head version trains
        at (``training.run.head_features``)."""
        from training.config import TrainConfig
        from training.run import head_features
        fm = head_features(TrainConfig(resolution=resolution, precision=precision), str(self.backbone_dir()))
        fm.warm(wait=True)  # compiled (where it compiles) before anything is timed, as in a running app
        return fm

    def _store(self, resolution: int | None = None, precision: str | None = None):
        """The prepared-feature store for the backbone at ``resolution``: one cache object per run, so the
        (large) store is read from disk once, not once per use."""
        from classifier.embeddings import EmbeddingCache
        key = self.feature_model(resolution, precision).cache_key
        if key not in self._stores:
            self._stores[key] = EmbeddingCache(self.work / "features", key)
        return self._stores[key]

    def prepared_features(self, samples, resolution: int | None = None, precision: str | None = None) -> dict:
        """Backbone features of ``samples`` by sha256, computed once into ``_work/features`` (never timed)."""
        from classifier.embeddings import Embedder
        from training.run import embed_samples
        fm, store = self.feature_model(resolution, precision), self._store(resolution, precision)
        missing = len({s.sha256 for s in samples}) - len(store.get_many([s.sha256 for s in samples]))
        if missing:
            log.info("preparing %d features at %d px into bench/_work/features (not timed, kept for later runs)",
                     missing, fm.resolution)
        started = time.perf_counter()
        feats, _ = embed_samples(Embedder(fm, store, 1 << 30), samples)
        if missing:
            self.preparation_s += time.perf_counter() - started
        return feats

    def keep_features(self, feats: dict, resolution: int | None = None, precision: str | None = None) -> None:
        """Add features computed by a timed pass to the prepared store (after its timing), for later sections."""
        import numpy as np
        if feats:
            shas = sorted(feats)
            self._store(resolution, precision).put_many(shas, np.stack([feats[s] for s in shas]))

    def seed_cache(self, embeddings_root: Path, samples, resolution: int | None = None,
                   precision: str | None = None) -> int:
        """Put the samples' prepared features into an embedding-cache root (a section's
        ``settings.embeddings_dir`` or a predictor's ``cache_root``); returns how many vectors."""
        from classifier.embeddings import EmbeddingCache
        import numpy as np
        feats = self.prepared_features(samples, resolution, precision)
        shas = sorted({s.sha256 for s in samples if s.sha256 in feats})
        cache = EmbeddingCache(Path(embeddings_root), self.feature_model(resolution, precision).cache_key)
        cache.put_many(shas, np.stack([feats[s] for s in shas]))
        return len(shas)

    def head_version(self, settings):
        """A head-mode version trained on the small ``version_train`` slice and made active; its
        features come from the prepared store, so this costs seconds. Returns the registry's VersionInfo."""
        from classifier.registry import LocalRegistry
        from training.config import TrainConfig
        from training.data import load_folder
        from training.run import train_version
        samples = load_folder(self.slices().version_train).samples
        self.seed_cache(settings.embeddings_dir, samples)
        registry = LocalRegistry(settings.models_dir)
        result = train_version(samples, TrainConfig(mode="head"), settings, registry, activate=True,
                               dataset_name="benchmark version_train slice")
        return registry.get(result["version"])

    def with_sizes(self, **changes) -> "Bench":
        self.sizes = replace(self.sizes, **changes)
        return self


def _interleaved_files(root: Path) -> list[tuple[Path, str]]:
    """(file, class folder) pairs, one image of each class in turn, in sorted order within each class."""
    from classifier.images import list_image_files
    per_class = [[(p, d.name) for p in list_image_files(d)]
                 for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    out = []
    for i in range(max((len(c) for c in per_class), default=0)):
        out += [c[i] for c in per_class if i < len(c)]
    return out


def _link_slice(dest: Path, files: list[tuple[Path, str]]) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    for i, (path, label) in enumerate(files):
        target = dest / label / f"{i:06d}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())
    return dest
