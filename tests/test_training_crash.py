"""A training process killed mid-run (power cut, OOM killer) leaves the registry as it was."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from classifier.live import LiveModel
from classifier.registry import LocalRegistry
from training.config import TrainConfig
from training.data import load_samples
from training.run import train_version

REPO = Path(__file__).resolve().parents[1]
STEP = re.compile(rb"step \d+/\d+ \S+ loss \d")


def _drain(stream, sink: bytearray) -> None:
    for chunk in iter(lambda: stream.read1(4096), b""):
        sink.extend(chunk)


def test_sigkill_during_training_leaves_the_active_version_and_no_half_version(settings, dataset_dir):
    registry = LocalRegistry(settings.models_dir)
    samples = load_samples(dataset_dir).samples
    assert train_version(samples, TrainConfig(mode="head", epochs=20), settings, registry)["version"] == "v1"
    before = [(v.version, v.info["weights_sha256"]) for v in registry.versions()]

    env = dict(os.environ, DATA_DIR=str(settings.data_dir), HF_HUB_OFFLINE="1")
    env.pop("DATASET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "training", "--data", str(dataset_dir), "--mode", "finetune", "--epochs", "200",
         "--unfreeze_blocks", "-1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = bytearray()
    reader = threading.Thread(target=_drain, args=(proc.stderr, stderr), daemon=True)
    reader.start()
    staging = settings.models_dir / ".staging"
    try:
        deadline = time.monotonic() + 180
        # "step N/M · loss L" is the progress line of an optimiser step: the run is truly training.
        while not STEP.search(stderr) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, f"training ended before it could be killed: {stderr.decode(errors='replace')[-800:]}"
        assert STEP.search(stderr)
        assert staging.is_dir() and len(list(staging.iterdir())) == 1  # the run's checkpoint-in-progress
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)

    after_crash = LocalRegistry(settings.models_dir)
    assert [(v.version, v.info["weights_sha256"]) for v in after_crash.versions()] == before
    assert after_crash.active() == "v1"
    assert after_crash.verify("v1").version == "v1"
    assert LiveModel(after_crash, settings).require().version == "v1"
    assert not [p for p in settings.models_dir.iterdir() if p.name.startswith("v") and p.name != "v1"]

    result = train_version(samples, TrainConfig(mode="head", epochs=20), settings, after_crash)
    assert result["version"] == "v2" and after_crash.active() == "v2"
    assert [v.version for v in after_crash.versions()] == ["v1", "v2"]
    assert after_crash.clean_staging(min_age_s=0) == 1 and list(staging.iterdir()) == []
