"""``python -m training`` and ``python -m classifier`` as a user runs them: separate processes, real model."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.registry import LocalRegistry
from conftest import CLASS_STYLES, make_image

REPO = Path(__file__).resolve().parents[1]
RESULT_FIELDS = {"file", "sha256", "label", "confidence", "top_k", "model_version"}


def run(module: str, *args: str, data_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATASET", "BACKBONE", "MONGODB_URI", "HF_TOKEN")}
    env.update(DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The ``error: …`` messages in stderr (a progress bar may share their line: it redraws without newlines)."""
    lines = [part for line in stderr.splitlines() for part in line.split("\r")]
    return [line[line.index("error:"):] for line in lines if "error:" in line]


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and fragment in errors[0], result.stderr[-2000:]


@pytest.fixture(scope="module")
def cli_data(head_version, tmp_path_factory):
    """A DATA_DIR (a copy of the session one) holding the trained, active head version v1."""
    return shutil.copytree(head_version.data_dir, tmp_path_factory.mktemp("cli") / "data")


def test_training_cli_prints_the_version_and_metrics_as_its_last_line(backbone_dir, dataset_dir, tmp_path):
    backbone_copy = shutil.copytree(backbone_dir, tmp_path / "my-backbone")
    data_dir = tmp_path / "data"
    result = run("training", "--data", str(dataset_dir), "--mode", "head", "--epochs", "40",
                 "--backbone", str(backbone_copy), data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["version"] == "v1"
    metrics = summary["metrics"]
    assert metrics["accuracy"] >= 0.8 and metrics["train_size"] + metrics["val_size"] == 30
    assert metrics["labels"] == sorted(CLASS_STYLES)
    registry = LocalRegistry(data_dir / "models")
    assert registry.active() == "v1" and registry.get("v1").info["backbone"] == str(backbone_copy)
    assert not (data_dir / "backbones").exists()  # the given backbone was used, the bundled one never built


def test_predict_cli_prints_one_json_line_per_image(cli_data, tmp_path):
    data_dir = cli_data
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    expected = {}
    for i, (name, (color, kind)) in enumerate(sorted(CLASS_STYLES.items())):
        path = folder / ("sub" if i == 2 else "") / f"new_{name}.png"
        make_image(kind, color, seed=880 + i).save(path)
        expected[str(path)] = (name, hashlib.sha256(path.read_bytes()).hexdigest())
    # the same file name in two folders: told apart by the path as given on the command line
    for sub, (name, (color, kind)) in zip(("a", "b"), sorted(CLASS_STYLES.items())):
        path = folder / sub / "img_001.png"
        path.parent.mkdir()
        make_image(kind, color, seed=890 + len(expected)).save(path)
        expected[str(path)] = (name, hashlib.sha256(path.read_bytes()).hexdigest())
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    result = run("classifier", "predict", str(folder), "--top-k", "2", data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 5 and {r["file"] for r in rows} == set(expected)
    for row in rows:
        assert set(row) == RESULT_FIELDS and row["model_version"] == "v1" and len(row["top_k"]) == 2
        label, digest = expected[row["file"]]
        assert row["sha256"] == digest and row["label"] == label
        assert row["confidence"] == row["top_k"][0]["score"]


def test_predict_cli_reports_bad_images_and_exits_1(cli_data, tmp_path):
    data_dir = cli_data
    good = tmp_path / "good.jpg"
    make_image("ellipse", CLASS_STYLES["circles"][0], seed=3).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    result = run("classifier", "predict", str(good), str(bad), data_dir=data_dir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["file"] == str(good) and rows[0]["label"] == "circles"
    assert rows[1]["file"] == str(bad) and "not a readable image" in rows[1]["error"]


def test_versions_and_activate_commands(cli_data, tmp_path):
    data_dir = cli_data
    listed = run("classifier", "versions", data_dir=data_dir)
    assert listed.returncode == 0
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["version"], r["active"], r["mode"]) for r in rows] == [("v1", True, "head")]
    assert_one_line_error(run("classifier", "activate", "v9", data_dir=data_dir), "no model version v9")
    assert LocalRegistry(data_dir / "models").active() == "v1"


@pytest.mark.parametrize("args,fragment", [
    (["--epochs", "0"], "epochs must be between 1 and 1000, got 0"),
    (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--backbone", "/nowhere/backbone"], "Backbone folder /nowhere/backbone does not exist"),
])
def test_training_cli_bad_parameters_exit_2_with_one_line(dataset_dir, tmp_path, args, fragment):
    data_dir = tmp_path / "data"
    result = run("training", "--data", str(dataset_dir), *args, data_dir=data_dir)
    assert_one_line_error(result, fragment)
    assert result.stdout.strip() == ""
    models = data_dir / "models"
    assert not models.exists() or (LocalRegistry(models).versions() == []
                                   and not any((models / ".staging").glob("*")))


def test_training_cli_missing_data_exits_2(tmp_path):
    assert_one_line_error(run("training", "--data", str(tmp_path / "nowhere"), data_dir=tmp_path / "data"),
                          "not found")
    assert_one_line_error(run("training", data_dir=tmp_path / "data"), "No training data")


def test_predict_cli_errors_exit_2(tmp_path):
    image = tmp_path / "a.png"
    make_image("ellipse", CLASS_STYLES["circles"][0], seed=1).save(image)
    assert_one_line_error(run("classifier", "predict", str(image), data_dir=tmp_path / "empty"),
                          "No model has been trained yet")
    assert_one_line_error(run("classifier", "predict", str(tmp_path / "missing.png"), data_dir=tmp_path / "empty"),
                          "missing.png: no such file or folder")


@pytest.mark.parametrize("module,expected", [
    ("training", ["--data", "--mode", "--epochs", "--unfreeze_blocks", "--filter_size", "--backbone"]),
    ("classifier", ["predict", "versions", "activate"]),
])
def test_help(module, expected, tmp_path):
    result = run(module, "--help", data_dir=tmp_path / "data")
    assert result.returncode == 0 and result.stderr.count("Traceback") == 0
    assert result.stdout.startswith("usage: python -m " + module)
    assert all(option in result.stdout for option in expected)
