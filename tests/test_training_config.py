"""Training parameters (training/config.py) fail before any work; so does data a run cannot learn from."""
from __future__ import annotations

import math

import pytest
import torch

from classifier.registry import LocalRegistry
from conftest import write_dataset
from settings import PlatformError
from training.config import TrainConfig
from training.data import load_samples
from training.run import train_version

BAD = [
    ({"epochs": -1}, "epochs must be between 1 and 1000"),
    ({"epochs": 0}, "epochs must be between 1 and 1000"),
    ({"epochs": 10**9}, "epochs must be between 1 and 1000"),
    ({"lr": 0}, "lr must be between"),
    ({"lr": -0.01}, "lr must be between"),
    ({"lr": math.nan}, "lr must be a finite number"),
    ({"lr": math.inf}, "lr must be a finite number"),
    ({"lr": "fast"}, "lr must be a finite number"),
    ({"batch_size": 0}, "batch_size must be between 1 and 4096"),
    ({"batch_size": 10**7}, "batch_size must be between 1 and 4096"),
    ({"batch_size": True}, "batch_size must be a finite number"),
    ({"val_fraction": 0.9}, "val_fraction must be between 0 and 0.5"),
    ({"val_fraction": -math.inf}, "val_fraction must be a finite number"),
    ({"mode": "scratch", "filter_size": 4}, "filter_size must be odd"),
    ({"mode": "scratch", "filter_size": 21, "resolution": 16}, "filter_size 21 px is larger than the 16 px input"),
    ({"mode": "scratch", "filters": 0}, "filters must be between"),
    ({"mode": "scratch", "depth": 99}, "depth must be between"),
    ({"resolution": 8}, "resolution must be between 16 and 1024"),
    ({"mode": "turbo"}, "mode must be one of head, finetune, scratch, got 'turbo'"),
    ({"max_seconds": 0}, "max_seconds must be between"),
    ({"seed": -5}, "seed must be between"),
    ({"mode": "finetune", "min_crop": 0.0}, "min_crop must be between 0.1 and 1"),
]


@pytest.mark.parametrize("values,message", BAD, ids=[str(v) for v, _ in BAD])
def test_bad_values_are_refused_with_the_reason(values, message):
    with pytest.raises(PlatformError) as err:
        TrainConfig(**values)
    assert str(err.value).startswith("Bad training parameters: ") and message in str(err.value)


def test_every_problem_is_listed_at_once():
    with pytest.raises(PlatformError) as err:
        TrainConfig(epochs=0, lr=math.nan, batch_size=-3)
    message = str(err.value)
    assert "epochs" in message and "lr" in message and "batch_size" in message


@pytest.mark.parametrize("values,message", [
    ({"epochs": "ten"}, "epochs must be a number, got 'ten'"),
    ({"epochs": "2.5"}, "epochs must be a number"),
    ({"epochs": "inf"}, "epochs must be a number"),
    ({"batch_size": "1e7"}, "batch_size must be between 1 and 4096"),
    ({"lr": "nan"}, "lr must be a finite number"),
    ({"lr": "-inf"}, "lr must be a finite number"),
    ({"lr": [0.1]}, "lr must be a number"),
    ({"learning_rate": 0.1}, "Unknown training parameter 'learning_rate'"),
])
def test_loosely_typed_values_from_ui_or_json(values, message):
    with pytest.raises(PlatformError) as err:
        TrainConfig.from_mapping(values)
    assert message in str(err.value)


def test_from_mapping_accepts_numbers_as_text_and_fills_mode_defaults():
    config = TrainConfig.from_mapping({"mode": "finetune", "epochs": "2", "lr": "1e-4", "batch_size": "", "augment": "no"})
    assert (config.epochs, config.lr, config.batch_size, config.augment) == (2, 1e-4, 32, False)
    scratch = TrainConfig(mode="scratch")
    assert (scratch.resolution, scratch.epochs, scratch.batch_size, scratch.depth, scratch.min_crop) == (64, 10, 64, 4, 1.0)
    head = TrainConfig()
    assert (head.mode, head.epochs, head.lr, head.resolution) == ("head", 60, 3e-3, None)


@pytest.fixture
def registry_with_v1(settings, dataset_dir):
    registry = LocalRegistry(settings.models_dir)
    train_version(load_samples(dataset_dir).samples, TrainConfig(mode="head", epochs=20), settings, registry)
    return registry


def _state(registry: LocalRegistry):
    staging = registry.root / ".staging"
    return ([v.version for v in registry.versions()], registry.active(),
            sorted(p.name for p in staging.iterdir()) if staging.is_dir() else [])


def test_bad_parameters_fail_before_any_work(registry_with_v1, settings, dataset_dir):
    before = _state(registry_with_v1)
    assert before == (["v1"], "v1", [])
    samples = load_samples(dataset_dir).samples
    for values, _ in BAD[:6]:
        with pytest.raises(PlatformError, match="Bad training parameters"):
            train_version(samples, TrainConfig.from_mapping(values), settings, registry_with_v1)
    assert _state(registry_with_v1) == before


def test_one_class_or_one_image_is_a_clear_error_and_changes_nothing(registry_with_v1, settings, tmp_path):
    before = _state(registry_with_v1)
    one_class = load_samples(write_dataset(tmp_path / "one-class", per_class=5, classes=["circles"])).samples
    one_image = load_samples(write_dataset(tmp_path / "one-image", per_class=1, classes=["squares"])).samples
    for samples, found in ((one_class, "found 1 class(es) and 5 usable image(s)"),
                           (one_image, "found 1 class(es) and 1 usable image(s)"),
                           ([], "found 0 class(es) and 0 usable image(s)")):
        for mode in ("head", "scratch"):
            with pytest.raises(PlatformError) as err:
                train_version(samples, TrainConfig(mode=mode), settings, registry_with_v1)
            assert "at least two classes" in str(err.value) and found in str(err.value)
    assert _state(registry_with_v1) == before


def test_finetune_caps_only_the_classifier_dropout():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    from training.trainer import cap_head_dropout
    model = MobileNetV2ForImageClassification(MobileNetV2Config(depth_multiplier=0.35, num_labels=3,
                                                                classifier_dropout_prob=0.8))
    inner = torch.nn.Dropout(0.5)
    model.mobilenet_v2.add_module("extra_dropout", inner)  # a backbone layer: not the classifier's
    assert cap_head_dropout(model, 0.2) == [0.8]
    assert model.dropout.p == 0.2 and model.config.classifier_dropout_prob == 0.2 and inner.p == 0.5
    assert cap_head_dropout(model, 0.2) == []  # already capped


def test_min_crop_of_one_keeps_the_whole_image_and_only_flips():
    import io

    import numpy as np
    from PIL import Image

    from training.data import Sample
    from training.trainer import ImageDataset
    pixels = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    sample = Sample("0" * 64, "a", "a.png", lambda: buf.getvalue())
    plain = ImageDataset([sample], [0], 32, [0.5] * 3, [0.5] * 3, False, 10**8, 0)[0]["pixel_values"]
    for min_crop, whole in ((1.0, True), (0.3, False)):
        data = ImageDataset([sample], [0], 32, [0.5] * 3, [0.5] * 3, True, 10**8, 0, min_crop=min_crop)
        seen = [data[0]["pixel_values"] for _ in range(12)]
        same = [torch.equal(x, plain) or torch.equal(x, plain.flip(-1)) for x in seen]
        assert all(same) if whole else not all(same)
