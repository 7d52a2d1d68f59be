"""Issue 'Hub versioning': train → push → a second engine with an EMPTY data directory serves that
version and holds every label saved by the first, all through the Hub stand-in and the real client."""
from __future__ import annotations

import time

import pytest

from engine import Engine
from settings import load_settings
from tests.conftest import make_image, CLASS_STYLES
from tests.hub_standin import running_standin

TOKEN = "hf_lead_0123456789abcdefSECRET"
MODEL_REPO, DATASET_REPO = "alice/scenes", "alice/scene-labels"


@pytest.fixture
def hub(tmp_path, monkeypatch, caplog):
    with running_standin(monkeypatch, tmp_path, caplog, {TOKEN: "alice"}, secrets=[TOKEN]) as standin:
        yield standin


def hub_settings(data_dir, hub, dataset=None):
    env = {"DATA_DIR": str(data_dir), "HUB_MODEL_ID": MODEL_REPO, "HUB_DATASET_ID": DATASET_REPO,
           "HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.endpoint}
    if dataset:
        env["DATASET"] = str(dataset)
    return load_settings(env)


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def new_images(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        color, kind = list(CLASS_STYLES.values())[i % 3]
        path = folder / f"new_{i}.png"
        make_image(kind, color, seed=90_000 + i).save(path)
        paths.append(path)
    return paths


def test_second_engine_with_empty_data_dir_serves_pushed_version_and_labels(hub, settings, dataset_dir, tmp_path):
    first = Engine(hub_settings(settings.data_dir, hub, dataset_dir))
    first.start()
    assert first.status()["hub_error"] is None
    trained = first.retrain({"mode": "head"})
    assert trained["version"] == "v1"
    predicted = first.predict(new_images(tmp_path / "incoming"))
    shas = [r["sha256"] for r in predicted["results"]]
    labels = {shas[0]: "circles", shas[1]: "glacier", shas[2]: "squares"}
    first.save_labels([{"sha256": s, "label": lab} for s, lab in labels.items()], user="alice")
    assert first.set_label(shas[1], None, user="bob", expected_revision=1)["status"] == "saved"  # an undo in the grid
    del labels[shas[1]]
    assert first.journal.flush(60), "label journal did not reach the Hub"
    assert first.publisher.queue.wait(60)
    assert first.publisher.statuses()["v1"]["state"] == "pushed"
    model_repo = hub.repo(MODEL_REPO)
    assert wait_for(lambda: "active.json" in model_repo.files("main")), "active version was not recorded on the Hub"
    assert "v1" in {name for name in model_repo.tags}
    card = model_repo.files("v1")["README.md"].decode()
    assert "pipeline_tag: image-classification" in card and "model-index" in card
    assert "dataset revision" in card.lower() or "Labels from dataset revision" in card or DATASET_REPO in card
    first.close()

    empty = tmp_path / "second-data"
    second = Engine(hub_settings(empty, hub))
    second.start()
    try:
        status = second.status()
        assert status["active_version"] == "v1"
        assert second.store().current_labels() == labels
        again = second.predict(new_images(tmp_path / "incoming2", n=2))
        assert {r["model_version"] for r in again["results"]} == {"v1"}
        history_users = {row.get("user") for row in second.store().history(limit=50)}
        assert history_users == {"alice", "bob"}
        assert [(h["label"], h["user"]) for h in second.store().history(shas[1])] == [(None, "bob"), ("glacier", "alice")]
    finally:
        second.close()


def test_hub_down_at_start_keeps_serving_local_model(hub, settings, dataset_dir):
    engine = Engine(hub_settings(settings.data_dir, hub, dataset_dir))
    engine.start()
    engine.retrain({"mode": "head"})
    engine.publisher.queue.wait(60)
    engine.close()
    hub.down = True
    restarted = Engine(hub_settings(settings.data_dir, hub, dataset_dir))
    restarted.start()
    try:
        status = restarted.status()
        assert status["active_version"] == "v1"
        assert status["hub_error"] and "unreachable" in status["hub_error"].lower()
        assert TOKEN not in status["hub_error"]
        rows = restarted.predict([dataset_dir / "circles" / "circles_0.jpg"])["results"]
        assert rows[0]["model_version"] == "v1"
    finally:
        hub.down = False
        restarted.close()


def test_training_cli_pushes_the_new_version(hub, settings, dataset_dir):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, DATA_DIR=str(settings.data_dir), HUB_MODEL_ID=MODEL_REPO, HF_TOKEN=TOKEN,
               HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(settings.data_dir.parent / "hf_home"))
    run = subprocess.run([sys.executable, "-m", "training", "--data", str(dataset_dir)], env=env,
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["version"] == "v1" and result["hub"]["state"] == "pushed"
    repo = hub.repo(MODEL_REPO)
    assert "v1" in repo.tags and json.loads(repo.files("main")["active.json"])["version"] == "v1"
    assert TOKEN not in run.stdout + run.stderr


def test_start_up_sync_leaves_a_newer_local_rollback_alone(hub, settings, dataset_dir):
    """The newest activation wins: a rollback made locally (the CLI) after the Hub's activation is kept at the
    next start, and recorded on the Hub, instead of being undone by the Hub's older active.json."""
    from classifier.registry import LocalRegistry

    first = Engine(hub_settings(settings.data_dir, hub, dataset_dir))
    first.start()
    v1 = first.retrain({"mode": "head"})["version"]
    v2 = first.retrain({"mode": "head", "seed": 1})["version"]
    assert first.active_version() == v2, "the second head run should pass the gate"
    assert first.wait_for_hub(v2, timeout=60)["state"] == "pushed"
    repo = hub.repo(MODEL_REPO)
    assert wait_for(lambda: json_file(repo, "active.json").get("version") == v2)
    first.close()

    LocalRegistry(settings.models_dir).set_active(v1)  # what `python -m classifier activate v1` does offline
    restarted = Engine(hub_settings(settings.data_dir, hub, dataset_dir))
    restarted.start()
    try:
        assert restarted.active_version() == v1 == restarted.status()["active_version"]
        restarted.wait_for_hub(v1, timeout=60)  # v1 was pushed by the first engine; this one records it active
        assert wait_for(lambda: json_file(repo, "active.json").get("version") == v1), "the Hub still names the older activation"
    finally:
        restarted.close()


def json_file(repo, name):
    import json
    data = repo.files("main").get(name)
    return json.loads(data) if data else {}
