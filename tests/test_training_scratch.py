"""``scratch`` mode learns: a small CNN trained from random weights on real Fashion-MNIST images beats chance
by far, its loss falls, and the saved version loads and predicts in a fresh process through our code."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import data as fmnist
from classifier.registry import LocalRegistry
from training.config import TrainConfig
from training.data import load_folder
from training.run import train_version

ROOT = Path(__file__).resolve().parent.parent
PER_CLASS = 40
SMALL = {"mode": "scratch", "resolution": 32, "filters": 16, "batch_size": 16, "epochs": 8, "seed": 0}
"""A shrunken run (400 images at 32 px, narrower; small batches so 320 training images still give 160 steps:
seconds of CPU) with the default lr, depth, kernel size and augmentation."""


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    """Scratch trained on 400 Fashion-MNIST training images (40 per class); returns (settings, result, test folder)."""
    from settings import load_settings
    root = tmp_path_factory.mktemp("scratch")
    train_dir = fmnist.write_subset(root / "fmnist", "train", 0, 10 * PER_CLASS)
    test_dir = fmnist.write_subset(root / "fmnist", "test", 0, 100)
    settings = load_settings({"DATA_DIR": str(root / "data")})
    result = train_version(load_folder(train_dir).samples, TrainConfig(**SMALL), settings,
                           LocalRegistry(settings.models_dir))
    return settings, result, test_dir


def test_scratch_learns_far_above_chance_with_a_falling_loss(scratch_run):
    settings, result, _ = scratch_run
    metrics = LocalRegistry(settings.models_dir).get(result["version"]).metrics()
    # the validation split: the images whose sha256 falls below 0.2 (about 80 of 400), the same in every run
    assert 60 <= metrics["val_size"] <= 100 and metrics["evaluated_on"] == "validation"
    assert metrics["train_size"] + metrics["val_size"] == 10 * PER_CLASS
    assert metrics["accuracy"] >= 0.5  # 10 classes: chance is 0.1
    curve = [point["loss"] for point in metrics["loss_curve"]]
    assert len(curve) >= 4 and curve[-1] < 0.7 * curve[0]


def test_scratch_version_is_a_plain_hf_folder_that_follows_its_parameters(scratch_run):
    settings, result, _ = scratch_run
    folder = settings.models_dir / result["version"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["filters"], config["filter_size"], config["depth"]) == ("scratch_cnn", 16, 3, 4)
    assert sorted(config["id2label"].values()) == sorted(fmnist.CLASSES)
    assert json.loads((folder / "preprocessor_config.json").read_text())["crop_size"] == {"height": 32, "width": 32}


def test_scratch_version_predicts_in_a_fresh_process(scratch_run):
    """A new interpreter (nothing registered yet) loads the version through ``Predictor.load`` and predicts
    the held-out test images far above chance."""
    settings, result, test_dir = scratch_run
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from classifier.predict import Predictor\n"
        "p = Predictor.load(Path(sys.argv[1]), sys.argv[2], None, 10**8)\n"
        "files = sorted(Path(sys.argv[3]).rglob('*.jpg'))\n"
        "results, errors = p.predict_batch(files, top_k=1)\n"
        "truth = {f.name: f.parent.name for f in files}\n"
        "print(json.dumps({'n': len(results), 'errors': len(errors),"
        " 'correct': sum(r['label'] == truth[r['file']] for r in results)}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(settings.models_dir / result["version"]),
                          result["version"], str(test_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert (counts["n"], counts["errors"]) == (100, 0)
    assert counts["correct"] >= 40  # chance: 10 of 100
