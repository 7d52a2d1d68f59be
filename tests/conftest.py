"""Shared fixtures: tiny real image datasets, per-test data directories, the real bundled backbone."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from settings import Settings, load_settings  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"

# Three visually distinct classes: each image is a shape drawn with jitter, so the task is learnable
# from real pixels by a frozen ImageNet backbone.
CLASS_STYLES = {
    "circles": ((220, 60, 40), "ellipse"),
    "squares": ((40, 160, 60), "rectangle"),
    "stripes": ((50, 70, 200), "stripes"),
}


def make_image(kind: str, color, seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    background = tuple(int(c) for c in rng.integers(200, 255, 3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    jitter = [int(v) for v in rng.integers(-6, 7, 4)]
    fill = tuple(int(np.clip(c + rng.integers(-30, 30), 0, 255)) for c in color)
    box = (12 + jitter[0], 12 + jitter[1], size - 12 + jitter[2], size - 12 + jitter[3])
    if kind == "ellipse":
        draw.ellipse(box, fill=fill)
    elif kind == "rectangle":
        draw.rectangle(box, fill=fill)
    else:
        for x in range(0, size, 12):
            draw.rectangle((x + jitter[0] % 4, 0, x + 5 + jitter[0] % 4, size), fill=fill)
    return img


def write_dataset(root: Path, per_class: int = 10, classes=None, offset: int = 0) -> Path:
    """Write a class-per-folder JPEG dataset; returns ``root``."""
    for c_index, name in enumerate(classes or CLASS_STYLES):
        color, kind = CLASS_STYLES.get(name, ((120, 120, 120), "ellipse"))
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(kind, color, seed=1000 * c_index + i + offset).save(folder / f"{name}_{i + offset}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory) -> Path:
    """The real bundled backbone, converted once per test session."""
    from classifier.backbone import ensure_bundled_backbone
    return ensure_bundled_backbone(tmp_path_factory.mktemp("backbones"))


@pytest.fixture
def settings(tmp_path, backbone_dir) -> Settings:
    """Settings with a fresh DATA_DIR under tmp_path, holding a copy of the prepared backbone."""
    data = tmp_path / "data"
    shutil.copytree(backbone_dir, data / "backbones" / backbone_dir.name)
    return load_settings({"DATA_DIR": str(data)})


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """30 labelled images in three class folders (read-only: copy before changing)."""
    return write_dataset(tmp_path_factory.mktemp("dataset") / "train", per_class=10)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def head_version(tmp_path_factory, backbone_dir, dataset_dir) -> Settings:
    """Settings of a session DATA_DIR holding one trained, active ``head`` version ``v1`` of the
    three-class dataset (read-only: copy ``data_dir`` before changing anything)."""
    from classifier.registry import LocalRegistry
    from training.config import TrainConfig
    from training.data import load_samples
    from training.run import train_version

    data = tmp_path_factory.mktemp("head-version") / "data"
    shutil.copytree(backbone_dir, data / "backbones" / backbone_dir.name)
    trained = load_settings({"DATA_DIR": str(data)})
    result = train_version(load_samples(dataset_dir).samples, TrainConfig(mode="head"), trained,
                           LocalRegistry(trained.models_dir))
    assert result["version"] == "v1"
    return trained
