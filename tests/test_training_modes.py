"""The three training modes (training/run.py) end to end: each leaves a complete, loadable version
folder; a new class and a rollback work across two head runs."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from classifier.embeddings import EmbeddingCache
from classifier.live import LiveModel
from classifier.registry import LocalRegistry
from conftest import CLASS_STYLES, make_image, write_dataset
from settings import load_settings
from test_classifier_pipeline import assert_pipeline_agrees, probe_images
from training.config import TrainConfig
from training.data import load_samples
from training.evaluation import in_evaluation_split
from training.run import train_version

CLASSES = ["circles", "squares", "stripes"]
MODES = {
    "head": {"mode": "head"},
    "finetune": {"mode": "finetune", "epochs": 1, "unfreeze_blocks": 1},
    "scratch": {"mode": "scratch", "filters": 8, "depth": 2, "resolution": 32, "epochs": 1},
}
METRIC_KEYS = {"accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "loss_curve", "train_size",
               "val_size", "wall_time_s", "skipped", "labels"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, backbone_dir, dataset_dir):
    """One DATA_DIR in which head → v1, finetune → v2, scratch → v3 were trained on the three-class
    dataset plus one truncated JPEG; returns (settings, {mode: (version, result)})."""
    root = tmp_path_factory.mktemp("modes")
    data = shutil.copytree(dataset_dir, root / "dataset")
    (data / "squares" / "cut.jpg").write_bytes((data / "squares" / "squares_3.jpg").read_bytes()[:250])
    shutil.copytree(backbone_dir, root / "data" / "backbones" / backbone_dir.name)
    settings = load_settings({"DATA_DIR": str(root / "data")})
    registry = LocalRegistry(settings.models_dir)
    loaded = load_samples(data)
    results = {}
    for mode, params in MODES.items():
        result = train_version(loaded.samples, TrainConfig(**params), settings, registry, dataset_name=str(data))
        results[mode] = (result["version"], result)
    return settings, results


def test_versions_are_registered_in_order_and_the_last_is_active(trained):
    settings, results = trained
    assert [results[m][0] for m in MODES] == ["v1", "v2", "v3"]
    registry = LocalRegistry(settings.models_dir)
    assert [v.version for v in registry.versions()] == ["v1", "v2", "v3"] and registry.active() == "v3"
    assert [v.info["mode"] for v in registry.versions()] == list(MODES)
    assert list((settings.models_dir / ".staging").iterdir()) == []


def settings_dataset(settings):
    return settings.data_dir.parent / "dataset"


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_writes_a_complete_version_folder(trained, mode):
    settings, results = trained
    version, result = results[mode]
    folder = settings.models_dir / version
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json",
                                                   "metrics.json", "README.md", "params.json", "version.json"}
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "circles", "1": "squares", "2": "stripes"}
    assert config["label2id"] == {"circles": 0, "squares": 1, "stripes": 2}

    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    # The validation split is every readable image whose sha256 falls below val_fraction (0.2), minus any a
    # class needs to keep a training image: the same images in every mode.
    readable = [s for s in load_samples(settings_dataset(settings)).samples if s.name != "cut.jpg"]
    held_out = [s for s in readable if in_evaluation_split(s.sha256, 0.2)]
    assert metrics["train_size"] + metrics["val_size"] == len(readable)
    assert metrics["val_size"] == len(held_out) - len(metrics["eval_kept_for_training"]) > 0
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["val_size"]
    assert set(metrics["per_class"]) == set(CLASSES)
    assert sum(row["support"] for row in metrics["per_class"].values()) == metrics["val_size"]
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["ece"] <= 1 and metrics["wall_time_s"] > 0
    assert metrics["loss_curve"] and all(point["loss"] >= 0 for point in metrics["loss_curve"])
    assert result["metrics"]["accuracy"] == metrics["accuracy"]

    params = json.loads((folder / "params.json").read_text())
    assert params == TrainConfig(**MODES[mode]).to_dict()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: image-classification" in card
    assert f"# Image classifier {version}" in card and f"**{mode}** mode" in card
    assert all(f"| {name} |" in card for name in CLASSES)
    assert f"value: {metrics['accuracy']}" in card


@pytest.mark.parametrize("mode", ["head", "finetune"])
def test_undecodable_images_are_counted_not_fatal(trained, mode):
    _, results = trained
    metrics = results[mode][1]["metrics"]
    assert metrics["skipped"] == {"undecodable image": 1}
    assert metrics["train_size"] + metrics["val_size"] == 30


def test_head_mode_learns_the_distinct_classes(trained):
    settings, results = trained
    metrics = json.loads((settings.models_dir / results["head"][0] / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "validation"
    assert metrics["accuracy"] >= 0.8 and metrics["macro_f1"] >= 0.8
    curve = [point["loss"] for point in metrics["loss_curve"]]
    assert len(curve) == 60 and curve[-1] < curve[0] / 2


def test_finetune_trains_only_the_last_block(trained, backbone_dir):
    settings, results = trained
    tuned = load_file(settings.models_dir / results["finetune"][0] / "model.safetensors")
    original = load_file(backbone_dir / "model.safetensors")
    frozen = [k for k in original if k.startswith("mobilenet_v2.conv_stem.") or k.startswith("mobilenet_v2.layer.0.")]
    last = [k for k in original if k.startswith("mobilenet_v2.layer.15.") and k.endswith(".weight")
            and "normalization" not in k]
    assert frozen and last
    assert all((tuned[k] == original[k]).all() for k in frozen)
    assert any(not (tuned[k] == original[k]).all() for k in last)
    assert tuned["classifier.weight"].shape == (3, 1280)


def test_scratch_model_follows_its_parameters(trained):
    settings, results = trained
    folder = settings.models_dir / results["scratch"][0]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "scratch_cnn" and config["image_size"] == 32
    assert (config["filters"], config["filter_size"], config["depth"]) == (8, 3, 2)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32}
    assert LocalRegistry(settings.models_dir).get(results["scratch"][0]).info["backbone"].startswith("scratch (8 filters")


@pytest.mark.parametrize("mode", ["finetune", "scratch"])
def test_finetuned_and_scratch_versions_load_in_a_plain_pipeline(trained, mode):
    settings, results = trained
    version = results[mode][0]
    assert_pipeline_agrees(settings.models_dir / version, version, probe_images())


def test_new_class_then_rollback(settings, tmp_path):
    data = write_dataset(tmp_path / "dataset", per_class=10, classes=["circles", "squares"])
    registry = LocalRegistry(settings.models_dir)
    first = train_version(load_samples(data).samples, TrainConfig(mode="head"), settings, registry)
    write_dataset(data, per_class=10, classes=["stripes"])  # a class labelled since v1
    second = train_version(load_samples(data).samples, TrainConfig(mode="head"), settings, registry)
    assert (first["version"], second["version"]) == ("v1", "v2") and registry.active() == "v2"

    def id2label(version):
        return json.loads((settings.models_dir / version / "config.json").read_text())["id2label"]
    assert sorted(id2label("v1").values()) == ["circles", "squares"]
    assert sorted(id2label("v2").values()) == CLASSES
    assert second["metrics"]["accuracy"] >= 0.8
    # The second run embedded only the new class: the cache holds each image once.
    key = LiveModel(registry, settings).require().fm.cache_key
    assert len(EmbeddingCache(settings.embeddings_dir, key)) == 30

    striped = [make_image("stripes", CLASS_STYLES["stripes"][0], seed=700 + i) for i in range(4)]
    live = LiveModel(registry, settings)
    now, _ = live.require().predict_batch(striped)
    assert {r["model_version"] for r in now} == {"v2"} and [r["label"] for r in now].count("stripes") >= 3

    live.activate("v1")
    assert registry.active() == "v1"
    rolled_back, errors = live.require().predict_batch(striped)
    assert errors == [] and len(rolled_back) == 4
    assert {r["model_version"] for r in rolled_back} == {"v1"}
    assert {r["label"] for r in rolled_back} <= {"circles", "squares"}
    assert all({t["label"] for t in r["top_k"]} == {"circles", "squares"} for r in rolled_back)
    assert LiveModel(LocalRegistry(settings.models_dir), settings).require().version == "v1"  # survives a restart


def test_finetune_keeps_its_warm_started_head(trained):
    """The head fitted on cached features is finetune's starting point; a 0.8 classifier dropout (transformers'
    MobileNetV2 default) or Adam's first full-size steps used to throw it away."""
    settings, results = trained
    config = json.loads((settings.models_dir / results["finetune"][0] / "config.json").read_text())
    assert config["classifier_dropout_prob"] <= 0.2
    assert results["finetune"][1]["metrics"]["accuracy"] >= 0.8
