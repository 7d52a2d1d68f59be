"""One place for configuration: every environment variable the platform reads.

Read once with :func:`get_settings`; modules take a :class:`Settings` (or call
``get_settings()``) instead of reading ``os.environ`` themselves.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


GLIBC_MALLOC_VARS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                     "MALLOC_TOP_PAD_")
"""glibc's own allocator settings: when any is set, the platform leaves the allocator alone."""


class PlatformError(Exception):
    """An error whose message a user can act on (bad input, bad state, outage).

    Handlers turn it into ``gr.Error`` / a JSON error; CLIs print the message and exit non-zero.
    The message never holds a secret or a traceback.
    """


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    """Root of everything the platform writes: models, embeddings, embedded database."""
    mongodb_uri: str | None = None
    """External MongoDB URI; None starts the embedded server under ``data_dir/db``."""
    dataset: str | None = None
    """Base training dataset: a class-per-folder directory, a .zip of one, or a Hub dataset id."""
    backbone: str | None = None
    """Backbone for new runs: None = bundled ImageNet MobileNetV2; else a Hub id or local folder."""
    hub_model_id: str | None = None
    hub_dataset_id: str | None = None
    hf_token: str | None = field(default=None, repr=False)
    hub_endpoint: str | None = None
    """``HF_ENDPOINT``: the Hub's address (None = huggingface.co); tests point it at a local stand-in."""
    max_batch: int = 128
    """Most images one prediction request may hold."""
    max_image_pixels: int = 40_000_000
    """Decoded-size cap per image (width × height), against decompression bombs."""
    max_upload_mb: int = 50
    """Largest single image file (MB) a request may carry, uploaded or inside an archive (``MAX_UPLOAD_MB``)."""
    max_archive_mb: int = 1024
    """Largest .zip (MB), and the most its images may unpack to, in one request (``MAX_ARCHIVE_MB``); sized for
    128 phone photos (12 MP JPEGs of 2–4 MB each). Gradio's own transport limit is the larger of the two."""
    app_users: dict[str, str] = field(default_factory=dict, repr=False)
    """user → password; when non-empty, writes require login."""
    space_id: str | None = None
    """Set by Hugging Face Spaces."""
    sample_roots: tuple[Path, ...] = ()
    """Server-side folders the UI may sample images from."""
    oauth_allowed: tuple[str, ...] = ()
    """On a Space: Hugging Face user or organisation names allowed to write."""
    promotion_tolerance: float = 0.01
    """How much lower (accuracy, 0–1) a new version may score than the active one on the shared evaluation
    images and still go live by itself (``PROMOTION_TOLERANCE``)."""
    tune_malloc: bool = True
    """Let :mod:`classifier.memory` keep freed memory for reuse (``TUNE_MALLOC=0`` turns it off; so does
    setting glibc's own ``MALLOC_*`` variables or ``GLIBC_TUNABLES``, which are then left to rule)."""
    prefetch_uploads: bool = True
    """Embed uploaded images while the rest of their batch is still arriving, so the prediction that follows
    reads them from the embedding cache (``engine/prefetch.py``; ``PREFETCH_UPLOADS=0`` turns it off)."""
    compile_backbone: bool = True
    """Let the app build a faster graph of the backbone in the background when it loads a version: ``torch.compile``
    for ``bfloat16-mixed`` where a C++ compiler is found, ONNX Runtime for float32; each is used only where it ran
    faster than eager here (``COMPILE_BACKBONE=0`` runs it eagerly: the same arithmetic, 1.3-2× slower, no build
    seconds). See classifier/runtime.py."""

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def embeddings_dir(self) -> Path:
        return self.data_dir / "embeddings"

    @property
    def db_dir(self) -> Path:
        return self.data_dir / "db"

    @property
    def backbones_dir(self) -> Path:
        return self.data_dir / "backbones"

    @property
    def auth_required(self) -> bool:
        return bool(self.app_users) or bool(self.space_id and self.oauth_allowed)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PlatformError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise PlatformError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PlatformError(f"{name} must be a number between 0 and 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise PlatformError(f"{name} must be between 0 and 1, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    """An on/off variable, on unless set to 0 / false / no / off."""
    return env.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def _users(raw: str | None) -> dict[str, str]:
    """Parse ``APP_USERS="alice:secret,bob:pw2"``."""
    users: dict[str, str] = {}
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, password = item.partition(":")
        if not sep or not name.strip() or not password:
            raise PlatformError("APP_USERS must look like 'user:password,user2:password2'")
        users[name.strip()] = password
    return users


def _opt(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from an environment mapping (``os.environ`` by default), validating each value."""
    env = os.environ if env is None else env
    data_dir = Path(env.get("DATA_DIR") or "data").expanduser().resolve()
    roots = tuple(Path(p).expanduser().resolve() for p in (env.get("SAMPLE_ROOTS") or "").split(os.pathsep) if p.strip())
    dataset = _opt(env, "DATASET")
    if dataset and not roots and Path(dataset).expanduser().is_dir():
        roots = (Path(dataset).expanduser().resolve(),)
    return Settings(
        data_dir=data_dir,
        mongodb_uri=_opt(env, "MONGODB_URI"),
        dataset=dataset,
        backbone=_opt(env, "BACKBONE"),
        hub_model_id=_opt(env, "HUB_MODEL_ID"),
        hub_dataset_id=_opt(env, "HUB_DATASET_ID"),
        hf_token=_opt(env, "HF_TOKEN"),
        hub_endpoint=_opt(env, "HF_ENDPOINT"),
        max_batch=_int(env, "MAX_BATCH", 128, 1, 4096),
        max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 40_000_000, 1, 1_000_000_000),
        max_upload_mb=_int(env, "MAX_UPLOAD_MB", 50, 1, 10_000),
        max_archive_mb=_int(env, "MAX_ARCHIVE_MB", 1024, 1, 100_000),
        app_users=_users(env.get("APP_USERS")),
        space_id=_opt(env, "SPACE_ID"),
        sample_roots=roots,
        oauth_allowed=tuple(x.strip() for x in (env.get("HF_ALLOWED_USERS") or "").split(",") if x.strip()),
        promotion_tolerance=_fraction(env, "PROMOTION_TOLERANCE", 0.01),
        compile_backbone=_flag(env, "COMPILE_BACKBONE"),
        prefetch_uploads=_flag(env, "PREFETCH_UPLOADS"),
        tune_malloc=(_flag(env, "TUNE_MALLOC")
                     and not any(k in env for k in GLIBC_MALLOC_VARS)
                     and "malloc" not in env.get("GLIBC_TUNABLES", "")),
    )


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return load_settings()
