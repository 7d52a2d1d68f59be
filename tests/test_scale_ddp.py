"""``torchrun --nproc_per_node 2 -m training --mode finetune``: DDP on CPU (gloo) through the stock Trainer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_rank_cpu_finetune_keeps_ranks_in_step_and_registers_once(settings, dataset_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(DATA_DIR=str(settings.data_dir), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["-m", "training", "--mode", "finetune", "--data", str(dataset_dir), "--epochs", "1", "--batch_size", "4",
            "--resolution", "64", "--unfreeze_blocks", "1"]
    done = subprocess.run(torchrun + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
                     key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert results[0]["weights_digest"] == results[1]["weights_digest"]
    assert results[0]["version"] == "v1" and results[1]["version"] is None
    # 24 training images, 2 ranks × 4 per step: 3 steps per rank, not the 6 one process would take
    assert [r["train_steps"] for r in results] == [3, 3]
    registry_dir = settings.models_dir
    assert sorted(p.name for p in registry_dir.iterdir() if p.name.startswith("v")) == ["v1"]
    info = json.loads((registry_dir / "v1" / "version.json").read_text())
    assert info.get("ranks") == 2 and info.get("weights_digest") == results[0]["weights_digest"]
    assert info.get("train_steps") == 3
    staging = registry_dir / ".staging"
    assert not staging.exists() or not any(staging.iterdir()), "rank 1 left its staged copy behind"


def test_time_budget_is_refused_under_torchrun(monkeypatch):
    from settings import PlatformError
    from training.config import TrainConfig
    from training.distributed import check_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PlatformError, match="max_seconds"):
        check_distributed(TrainConfig(mode="finetune", max_seconds=60))
    check_distributed(TrainConfig(mode="finetune"))
