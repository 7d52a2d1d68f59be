"""``python -m labeling`` as a user runs it: a separate process, real database."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from PIL import Image

from labeling.connection import PUBLISHED_FILE
from labeling.store import open_store
from settings import load_settings

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # every test here launches a process


class Upload:
    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name, self.sha256 = data, name, hashlib.sha256(data).hexdigest()


def _png(i: int) -> Upload:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (250 - i * 50, i * 50, 128)).save(buffer, "PNG")
    return Upload(buffer.getvalue(), f"cli{i}.png")


def run_cli(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "HF_TOKEN", "HUB_DATASET_ID")}
    environment.update(DATA_DIR=str(data_dir), **env)
    return subprocess.run(
        [sys.executable, "-m", "labeling", *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def open_app_store(tmp_path):
    """A store held open by this process, as the running app would hold it."""
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    store = open_store(settings)
    images = [_png(i) for i in range(3)]
    store.add_images(images)
    store.save_labels([{"sha256": im.sha256, "label": label} for im, label in zip(images, ["cat", "dog", "cat"])])
    yield store, settings
    store.close()


def test_help_lists_commands(tmp_path):
    result = run_cli("--help", data_dir=tmp_path)
    assert result.returncode == 0
    assert "stats" in result.stdout and "export" in result.stdout


def test_stats_uses_published_server_of_running_process(open_app_store):
    store, settings = open_app_store
    published_before = (settings.data_dir / PUBLISHED_FILE).read_text()
    result = run_cli("stats", data_dir=settings.data_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["per_class"] == {"cat": 2, "dog": 1}
    assert (settings.data_dir / PUBLISHED_FILE).read_text() == published_before
    assert json.loads(published_before)["pid"] == os.getpid()
    store.ping()  # the CLI closing its client must not stop our server


def test_export_via_cli_while_app_runs(open_app_store, tmp_path):
    _, settings = open_app_store
    out = tmp_path / "exported"
    result = run_cli("export", "--format", "imagefolder", str(out), data_dir=settings.data_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["classes"] == {"cat": 2, "dog": 1}
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"), split="train")
    assert loaded.num_rows == 3


def test_stats_without_running_app_starts_own_server(tmp_path):
    result = run_cli("stats", data_dir=tmp_path / "fresh")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["labelled_images"] == 0
    assert not (tmp_path / "fresh" / PUBLISHED_FILE).exists(), "the CLI unpublishes its server on exit"


def test_concurrent_clis_on_fresh_data_dir_both_succeed(tmp_path):
    """The start lock lets one process start the server; the other borrows or reopens it."""
    environment = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    environment["DATA_DIR"] = str(tmp_path / "shared")
    procs = [
        subprocess.Popen([sys.executable, "-m", "labeling", "stats"], cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    assert all(json.loads(out)["images"] == 0 for out, _ in outputs)


def test_unreachable_database_is_one_line_exit_2_without_secret(tmp_path):
    result = run_cli("stats", data_dir=tmp_path, MONGODB_URI="mongodb://user:s3cret@127.0.0.1:1/")
    assert result.returncode == 2
    assert "127.0.0.1:1" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_push_without_hub_settings_is_refused(tmp_path):
    result = run_cli("export", "--push", str(tmp_path / "out"), data_dir=tmp_path)
    assert result.returncode == 2
    assert "HUB_DATASET_ID" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
