"""Trustworthy training and versions (engine.py, training/evaluation.py, training/jobs.py): the promotion
gate refuses a worse run and accepts a better one on the same held-out images; a run can be stopped and
registers nothing; a second run is refused naming who trains; a running app follows a CLI activation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import Engine
from settings import PlatformError, load_settings
from training.evaluation import in_evaluation_split, split
from training.data import load_samples

REPO = Path(__file__).resolve().parent.parent
# A tiny CNN from scratch after one optimiser step: about chance on the three shapes.
BARELY_TRAINED = {"mode": "scratch", "epochs": 1, "resolution": 32, "filters": 4, "depth": 2}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, backbone_dir, dataset_dir):
    root = tmp_path_factory.mktemp("gate")
    data = root / "data"
    (data / "backbones").mkdir(parents=True)
    os.symlink(backbone_dir, data / "backbones" / backbone_dir.name)
    engine = Engine(load_settings({"DATA_DIR": str(data), "DATASET": str(dataset_dir)}))
    yield engine
    engine.close()


def test_split_is_fixed_by_sha256_and_keeps_a_training_image_per_class(dataset_dir):
    samples = load_samples(dataset_dir).samples
    parts = split(samples, 0.2)
    assert {s.sha256 for s in parts.val} == {s.sha256 for s in samples if in_evaluation_split(s.sha256, 0.2)} - set(parts.kept_for_training)
    assert split(list(reversed(samples)), 0.2).val == parts.val  # order of arrival changes nothing
    lonely = [samples[0], samples[0].__class__("f" * 64, "rare", "rare.jpg", samples[0].read)]
    few = split(lonely, 0.5)
    assert [s.label for s in few.train] == [samples[0].label, "rare"] or "rare" in {s.label for s in few.train}
    assert any("'rare'" in w and "not measured" in w for w in few.warnings)


def test_gate_refuses_a_worse_run_and_accepts_a_better_one(engine):
    first = engine.retrain(BARELY_TRAINED, user="alice")
    assert first["promoted"] and first["started_by"] == "alice" and engine.active_version() == first["version"]

    better = engine.retrain({"mode": "head"}, user="bob")
    assert better["promoted"], better["reason"]
    assert engine.active_version() == better["version"] and better["compared_on"] > 0
    assert f"same {better['compared_on']} evaluation images" in better["reason"]

    worse = engine.retrain(BARELY_TRAINED, user="carol")
    assert not worse["promoted"] and engine.active_version() == better["version"]
    assert better["version"] in worse["reason"] and "stays active" in worse["reason"]
    rows = {m["version"]: m for m in engine.models()}
    assert rows[worse["version"]]["promotion"]["promoted"] is False and not rows[worse["version"]]["active"]
    assert rows[worse["version"]]["trained_by"] == "carol"

    compared = engine.compare_versions(worse["version"], better["version"])
    assert compared["images"] == better["compared_on"] and compared[worse["version"]] < compared[better["version"]]
    f1 = {v: compared["scores"][v] for v in (worse["version"], better["version"])}  # F1 on the same images too
    assert all(s["images"] == compared["images"] and s["per_class"] for s in f1.values())
    assert f1[worse["version"]]["macro_f1"] < f1[better["version"]]["macro_f1"]

    engine.activate(worse["version"])  # "activate anyway"
    assert engine.active_version() == worse["version"] == engine.status()["active_version"]
    engine.activate(better["version"])


def test_stop_registers_nothing_and_a_second_run_is_refused_naming_who(engine):
    before = [m["version"] for m in engine.models()]
    active = engine.active_version()
    job = engine.start_training({"mode": "finetune", "epochs": 200, "unfreeze_blocks": -1}, user="dora")
    deadline = time.monotonic() + 120
    while "step" not in (engine.training_status()["message"] or "") and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(PlatformError, match=r"dora's finetune run, \d+% done"):
        engine.start_training({"mode": "head"}, user="erin")
    assert engine.status()["training_by"] == "dora"
    engine.cancel_training(user="frank")
    snap = engine.wait_for_training(timeout=120)
    assert snap["id"] == job.id and snap["state"] == "cancelled" and "frank" in snap["error"]
    assert snap["losses"] and all(set(e) == {"step", "epoch", "loss"} for e in snap["losses"])
    assert [m["version"] for m in engine.models()] == before and engine.active_version() == active
    assert not any((engine.settings.models_dir / ".staging").iterdir())
    with pytest.raises(PlatformError, match="No training run is going on"):
        engine.cancel_training(user="frank")


def test_running_app_follows_an_activation_made_by_the_cli(engine):
    versions = [m["version"] for m in engine.models()]
    target = next(v for v in versions if v != engine.active_version())
    env = dict(os.environ, DATA_DIR=str(engine.settings.data_dir))
    env.pop("DATASET", None)
    done = subprocess.run([sys.executable, "-m", "classifier", "activate", target], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and json.loads(done.stdout)["active"] == target, done.stderr[-1500:]
    assert engine.active_version() == target == engine.status()["active_version"]
    assert [m["version"] for m in engine.models() if m["active"]] == [target]
