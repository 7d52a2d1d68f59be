"""The version registry (classifier/registry.py) and the live model's activation rules (classifier/live.py)."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from classifier.live import LiveModel
from classifier.registry import LocalRegistry, version_number
from conftest import CLASS_STYLES, make_image
from settings import PlatformError, load_settings


def staged_checkpoint(registry: LocalRegistry, weights: bytes = b"weights") -> Path:
    """A staging folder with the files a checkpoint needs (contents are placeholders)."""
    staged = registry.stage()
    (staged / "config.json").write_text("{}")
    (staged / "preprocessor_config.json").write_text("{}")
    (staged / "model.safetensors").write_bytes(weights)
    return staged


def listed(registry: LocalRegistry) -> list[str]:
    return [v.version for v in registry.versions()]


def test_versions_are_numbered_in_order_and_staging_is_consumed(tmp_path):
    registry = LocalRegistry(tmp_path / "models")
    names = [registry.register(staged_checkpoint(registry, bytes([i])), {"mode": "head"}) for i in range(3)]
    assert names == ["v1", "v2", "v3"] == listed(registry)
    assert list((registry.root / ".staging").iterdir()) == []
    info = registry.get("v2").info
    assert info["version"] == "v2" and info["mode"] == "head" and len(info["weights_sha256"]) == 64
    assert (registry.root / "v2" / "model.safetensors").read_bytes() == bytes([1])


def test_numbering_continues_after_the_highest_even_with_gaps(tmp_path):
    registry = LocalRegistry(tmp_path / "models")
    registry.register(staged_checkpoint(registry), {})
    registry.register(staged_checkpoint(registry), {})
    shutil.rmtree(registry.root / "v1")
    assert registry.register(staged_checkpoint(registry), {}) == "v3"
    assert listed(registry) == ["v2", "v3"]
    assert [v.version for v in LocalRegistry(tmp_path / "models").versions()] == ["v2", "v3"]


def test_incomplete_checkpoint_is_not_registered(tmp_path):
    registry = LocalRegistry(tmp_path / "models")
    staged = staged_checkpoint(registry)
    (staged / "model.safetensors").unlink()
    with pytest.raises(PlatformError, match="missing model.safetensors"):
        registry.register(staged, {})
    assert listed(registry) == []


def test_a_failing_finalize_step_registers_nothing(tmp_path):
    registry = LocalRegistry(tmp_path / "models")

    def broken_card(folder, version):
        raise OSError("disk full")
    with pytest.raises(OSError):
        registry.register(staged_checkpoint(registry), {}, finalize=broken_card)
    assert listed(registry) == [] and not (registry.root / "v1").exists()
    assert registry.register(staged_checkpoint(registry), {}, finalize=lambda f, v: (f / "README.md").write_text(v)) == "v1"
    assert (registry.root / "v1" / "README.md").read_text() == "v1"


def test_half_written_folders_are_never_listed(tmp_path):
    registry = LocalRegistry(tmp_path / "models")
    staging = staged_checkpoint(registry)  # a run that crashed before register
    (registry.root / "v7").mkdir()  # a folder without version.json
    assert listed(registry) == [] and registry.active() is None
    assert registry.clean_staging() == 0 and staging.exists()  # fresh: it may be a run still going elsewhere
    assert registry.clean_staging(min_age_s=0) == 1 and not staging.exists()
    assert registry.register(staged_checkpoint(registry), {}) == "v8"  # never reuses a name on disk


def test_concurrent_registers_get_distinct_names(tmp_path):
    registry = LocalRegistry(tmp_path / "models")
    staged = [staged_checkpoint(registry, bytes([i])) for i in range(8)]
    names: list[str] = []
    threads = [threading.Thread(target=lambda s=s: names.append(LocalRegistry(registry.root).register(s, {})))
               for s in staged]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(names, key=version_number) == [f"v{i}" for i in range(1, 9)]
    contents = {(registry.root / n / "model.safetensors").read_bytes() for n in names}
    assert contents == {bytes([i]) for i in range(8)}


def test_activate_and_roll_back(tmp_path):
    registry = LocalRegistry(tmp_path / "models")
    for _ in range(2):
        registry.register(staged_checkpoint(registry), {})
    assert registry.active() is None
    registry.set_active("v2")
    assert registry.active() == "v2"
    registry.set_active("v1")
    assert LocalRegistry(tmp_path / "models").active() == "v1"
    with pytest.raises(PlatformError, match=r"no model version v9 \(versions: v1, v2\)"):
        registry.set_active("v9")
    with pytest.raises(PlatformError, match="not a version name"):
        registry.set_active("../v1")
    assert registry.active() == "v1"


def test_active_pointing_at_a_deleted_version_reads_as_none(tmp_path):
    registry = LocalRegistry(tmp_path / "models")
    registry.register(staged_checkpoint(registry), {})
    registry.set_active("v1")
    shutil.rmtree(registry.root / "v1")
    assert registry.active() is None


def test_verify_detects_deleted_and_corrupted_weights(tmp_path):
    registry = LocalRegistry(tmp_path / "models")
    for _ in range(2):
        registry.register(staged_checkpoint(registry, b"\x00" * 4096), {})
    assert registry.verify("v1").version == "v1"
    (registry.root / "v1" / "model.safetensors").unlink()
    with pytest.raises(PlatformError, match="Model version v1 is damaged: missing model.safetensors"):
        registry.verify("v1")
    weights = registry.root / "v2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[2000:2004] = b"\xff\xff\xff\xff"
    weights.write_bytes(bytes(data))
    with pytest.raises(PlatformError, match="Model version v2 is damaged: its weights do not match their checksum"):
        registry.verify("v2")


@pytest.fixture
def two_real_versions(head_version, tmp_path):
    """A copy of the session DATA_DIR with v1 (head) and v2 (the same weights registered again), v1 active."""
    data = tmp_path / "data"
    shutil.copytree(head_version.data_dir, data)
    settings = load_settings({"DATA_DIR": str(data)})
    registry = LocalRegistry(settings.models_dir)
    staged = registry.stage()
    shutil.copytree(registry.root / "v1", staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns("version.json"))
    assert registry.register(staged, dict(registry.get("v1").info)) == "v2"
    assert registry.active() == "v1"
    return settings, registry


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def test_live_model_refuses_a_damaged_version_and_keeps_serving(two_real_versions):
    settings, registry = two_real_versions
    live = LiveModel(registry, settings)
    assert live.require().version == "v1"
    _corrupt(registry.root / "v2" / "model.safetensors")
    with pytest.raises(PlatformError, match="v2 is damaged"):
        live.activate("v2")
    assert live.current().version == "v1" and registry.active() == "v1"
    (registry.root / "v1" / "model.safetensors").rename(registry.root / "v1" / "moved.bin")
    live2 = LiveModel(registry, settings)
    assert live2.current() is None  # v1 is gone and v2 is damaged: nothing is served rather than bad weights
    assert "damaged" in live2.warning
    with pytest.raises(PlatformError, match="No model version can be served: .*damaged"):
        live2.require()


def test_live_model_falls_back_to_a_good_version_when_the_active_one_is_damaged(two_real_versions):
    settings, registry = two_real_versions
    live = LiveModel(registry, settings)
    live.activate("v2")
    assert registry.active() == "v2" and live.current().version == "v2"
    _corrupt(registry.root / "v2" / "model.safetensors")
    restarted = LiveModel(registry, settings)
    assert restarted.require().version == "v1"
    assert "v2 is damaged" in restarted.warning and "Serving v1 instead" in restarted.warning
    restarted.activate("v1")
    assert registry.active() == "v1" and restarted.warning is None


def test_activation_swaps_the_predictor_that_answers(two_real_versions):
    settings, registry = two_real_versions
    image = make_image("ellipse", CLASS_STYLES["circles"][0], seed=4)
    live = LiveModel(registry, settings)
    before = live.require()
    after = live.activate("v2")
    assert live.current() is after
    assert json.loads((registry.root / "active.json").read_text())["version"] == "v2"
    assert after.predict_batch([image])[0][0]["model_version"] == "v2"
    assert before.predict_batch([image])[0][0]["model_version"] == "v1"  # a request holding v1 finishes on v1
    live.activate("v1")
    assert live.current().predict_batch([image])[0][0]["model_version"] == "v1"
