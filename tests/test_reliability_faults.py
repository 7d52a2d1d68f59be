"""Issue 'Reliability and security', faults: nothing acknowledged is lost and no half-made thing is served.

SIGKILL of the app mid-retrain and mid-label-saving, the database down at start and mid-session, a full disk
while a version is saved, and damaged model files. (A SIGKILL of the *training CLI* is covered by
tests/test_training_crash.py; here it is the retrain inside the app that dies with the app.)
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from app import Handlers
from conftest import DatabaseProcess, IsolatedApp, data_dir_with_backbone, make_image
from engine import Engine
from labeling.store import open_store
from settings import PlatformError, load_settings
from ui import review

pytestmark = pytest.mark.slow


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def fresh_images(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        kind = ("ellipse", "rectangle", "stripes")[i % 3]
        make_image(kind, (120 + i % 100, 80, 160), seed=seed + i).save(folder / f"img_{i:03d}.jpg", quality=90)
        paths.append(folder / f"img_{i:03d}.jpg")
    return paths


def version_folders(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "models").iterdir() if p.is_dir() and p.name.startswith("v"))


# --- SIGKILL of the app while it retrains --------------------------------------------------------------------------

def test_app_killed_mid_retrain_restarts_on_the_previous_version_and_retrains(tmp_path, backbone_dir, dataset_dir):
    data = data_dir_with_backbone(tmp_path, backbone_dir)
    app = IsolatedApp(data, tmp_path / "cwd", {"DATASET": str(dataset_dir)})
    try:
        client = app.start().client()
        assert client.predict(mode="head", epochs=20, api_name="/retrain")["version"] == "v1"
        v1_info = json.loads((data / "models" / "v1" / "version.json").read_text())
        # a long run: fine-tuning the whole backbone for 200 epochs; killed once it is past embedding, in the fit
        job = client.submit(mode="finetune", epochs=200, unfreeze_blocks=-1, api_name="/retrain")
        watcher = app.client()
        wait_until(lambda: (watcher.predict(api_name="/status")["training_progress"] or 0) >= 0.5, 240,
                   "the retrain to reach its optimisation steps")
        assert len(list((data / "models" / ".staging").iterdir())) == 1  # the run's version-in-progress
        app.kill()
        assert not job.done() or job.exception() is not None  # the caller never got a version
    finally:
        app.kill()

    restarted = IsolatedApp(data, tmp_path / "cwd2", {"DATASET": str(dataset_dir)})
    try:
        client = restarted.start().client()
        status = client.predict(api_name="/status")
        assert status["active_version"] == "v1" and status["versions"] == 1 and status["model_warning"] is None
        assert [m["version"] for m in client.predict(api_name="/models")] == ["v1"]
        assert version_folders(data) == ["v1"]
        assert json.loads((data / "models" / "v1" / "version.json").read_text()) == v1_info
        image = fresh_images(tmp_path / "probe", 1, seed=51_000)[0]
        assert client.predict([handle_file(str(image))], api_name="/predict")[0]["model_version"] == "v1"
        assert client.predict(mode="head", epochs=20, api_name="/retrain")["version"] == "v2"
        assert client.predict(api_name="/status")["active_version"] == "v2"
        assert version_folders(data) == ["v1", "v2"]
    finally:
        restarted.kill()


# --- SIGKILL of the app while a client saves labels one by one -------------------------------------------------------

def test_every_acknowledged_label_survives_a_sigkill_of_the_app_exactly_once(tmp_path, backbone_dir):
    data = data_dir_with_backbone(tmp_path, backbone_dir)
    app = IsolatedApp(data, tmp_path / "cwd")
    images = fresh_images(tmp_path / "incoming", 30, seed=52_000)
    acknowledged: list[tuple[str, int, str]] = []  # (sha256, revision, label), in order
    failure: list[BaseException] = []
    try:
        client = app.start().client()
        rows = client.predict([handle_file(str(p)) for p in images], api_name="/predict")
        shas = [row["sha256"] for row in rows]
        assert len(set(shas)) == 30 and all(row["label"] is None for row in rows)  # no model yet: stored, unlabelled
        # two passes: every image gets a first label, then a different one (revision 2)
        changes = [(sha, 1, "alpha") for sha in shas] + [(sha, 2, "beta") for sha in shas]

        def save_one_by_one():
            saver = app.client()
            for sha, revision, label in changes:
                try:
                    result = saver.predict([{"sha256": sha, "label": label}], api_name="/save_labels")
                except BaseException as exc:  # the app died under this call: it was not acknowledged
                    failure.append(exc)
                    return
                assert result["saved"] == 1
                acknowledged.append((sha, revision, label))

        loop = threading.Thread(target=save_one_by_one, daemon=True)
        loop.start()
        wait_until(lambda: len(acknowledged) >= 36, 180, "36 acknowledged label saves")
        app.kill()
        loop.join(timeout=120)
        assert not loop.is_alive() and failure, "the save loop should have seen the app die"
    finally:
        app.kill()
    assert 36 <= len(acknowledged) < len(changes)

    restarted = IsolatedApp(data, tmp_path / "cwd2")
    try:
        client = restarted.start().client()
        assert client.predict(api_name="/status")["labelled_images"] == 30
        published = json.loads((data / "db-server.json").read_text())
        assert published["pid"] == restarted.pid  # the restarted app owns the database now
        store = open_store(load_settings({"DATA_DIR": str(data)}))  # borrows the app's published server
        try:
            history = store.history(limit=10_000)
            current = store.current_labels()
        finally:
            store.close()
    finally:
        restarted.kill()
    rows = [(h["sha256"], h["revision"], h["label"]) for h in history]
    assert len(rows) == len(set(rows)), "a label change was recorded twice"
    assert len({(sha, rev) for sha, rev, _ in rows}) == len(rows)
    assert set(acknowledged) <= set(rows), "an acknowledged label change was lost"
    # at most the one call in flight at the kill may have committed without its acknowledgement
    assert len(rows) - len(acknowledged) in (0, 1)
    for sha, _, label in acknowledged:
        last = max(rev for s, rev, _ in acknowledged if s == sha)
        assert current[sha] in ({"alpha", "beta"} if last == 1 else {"beta"})


# --- the database: down at start, then an outage in mid-session ----------------------------------------------------

MONGO_USER, MONGO_PASSWORD = "platform", "Db-Pa55word-never-shown"


def test_database_down_at_start_and_mid_session_keeps_predicting_and_loses_no_edit(tmp_path, backbone_dir, dataset_dir):
    db = DatabaseProcess(tmp_path / "mongo")
    db.start()
    db.create_user(MONGO_USER, MONGO_PASSWORD)
    db.stop()  # closed port from here on, until started again with --auth
    db.auth = True
    uri = f"mongodb://{MONGO_USER}:{MONGO_PASSWORD}@{db.hosts}/platform?authSource=admin"
    data = data_dir_with_backbone(tmp_path, backbone_dir)
    app = IsolatedApp(data, tmp_path / "cwd", {"DATASET": str(dataset_dir), "MONGODB_URI": uri})
    engine = Engine(load_settings({"DATA_DIR": str(tmp_path / "engine-data"), "MONGODB_URI": uri}))
    handlers = Handlers(engine)
    images = fresh_images(tmp_path / "incoming", 4, seed=53_000)
    try:
        client = app.start().client()
        # 1. database unreachable at start: the app serves, trains on DATASET, predicts, and says what is wrong
        status = client.predict(api_name="/status")
        assert db.hosts in status["store_error"] and MONGO_PASSWORD not in json.dumps(status)
        assert client.predict(mode="head", epochs=20, api_name="/retrain")["version"] == "v1"
        rows = client.predict([handle_file(str(p)) for p in images], api_name="/predict")
        assert [r["model_version"] for r in rows] == ["v1"] * 4
        with pytest.raises(AppError) as err:
            client.predict([{"sha256": rows[0]["sha256"], "label": "circles"}], api_name="/save_labels")
        assert db.hosts in str(err.value) and MONGO_PASSWORD not in str(err.value)

        # 2. the database comes up: the next calls connect, nothing to restart
        db.start()
        rows = client.predict([handle_file(str(p)) for p in images], api_name="/predict")  # recorded this time
        assert client.predict([{"sha256": rows[0]["sha256"], "label": "circles"}],
                              api_name="/save_labels") == {"saved": 1, "new_classes": [], "rejected": []}
        shas = [r["sha256"] for r in json.loads(handlers.show_predictions([str(p) for p in images[:3]], 0.6)[0])["rows"]]
        save = next(fn for fn in review.server_functions(engine, handlers.writer, handlers.tokens)
                    if fn.__name__ == "save_edits")
        # the grid's per-edit saves; images[0] was saved through the API already (revision 1)
        results = save({"edits": [{"sha256": s, "label": lab, "revision": rev} for s, lab, rev in
                                  zip(shas, ("circles", "squares", "stripes"), (1, 0, 0))]}, None)
        assert [r["status"] for r in results] == ["unchanged", "saved", "saved"]

        # 3. outage mid-session: predictions go on, saves fail naming host:port; the grid keeps and retries them
        db.stop()
        rows = client.predict([handle_file(str(p)) for p in images], api_name="/predict")
        assert [r["model_version"] for r in rows] == ["v1"] * 4 and all("error" not in r for r in rows)
        with pytest.raises(AppError) as err:
            client.predict([{"sha256": rows[1]["sha256"], "label": "squares"}], api_name="/save_labels")
        assert f"MongoDB at {db.hosts} is unreachable" in str(err.value) and MONGO_PASSWORD not in str(err.value)
        edits = {"edits": [{"sha256": s, "label": lab, "revision": 1} for s, lab in
                           zip(shas, ("stripes", "circles", "squares"))]}
        failed = save(copy.deepcopy(edits), None)
        assert [r["status"] for r in failed] == ["error"] * 3
        assert all(db.hosts in r["error"] and MONGO_PASSWORD not in r["error"] for r in failed)
        status = client.predict(api_name="/status")
        assert status["active_version"] == "v1" and db.hosts in status["store_error"]

        # 4. the database is back on the same port and storage: the same edits save, earlier labels are there
        db.start()
        assert [r["status"] for r in save(edits, None)] == ["saved"] * 3
        assert client.predict([{"sha256": rows[1]["sha256"], "label": "squares"}],
                              api_name="/save_labels") == {"saved": 1, "new_classes": [], "rejected": []}
        labels = engine.store().current_labels()
        assert labels[rows[0]["sha256"]] == "stripes" and labels[rows[1]["sha256"]] == "squares"
        assert client.predict(api_name="/status")["store_error"] is None
    finally:
        app.kill()
        engine.close()
        db.stop()
    assert MONGO_PASSWORD not in app.log()


# --- a full disk while a new version is saved -----------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs mounted for the test (the container runs as root); unmounted afterwards."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount_point)], capture_output=True,
                          text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr}"
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_while_saving_a_version_leaves_the_previous_one_active(small_disk, backbone_dir, dataset_dir):
    data = data_dir_with_backbone(small_disk, backbone_dir)
    engine = Engine(load_settings({"DATA_DIR": str(data), "DATASET": str(dataset_dir)}))
    filler = small_disk / "filler"
    try:
        assert engine.retrain({"mode": "head", "epochs": 20})["version"] == "v1"
        assert engine.status()["labelled_images"] == 0  # the store is open before the disk fills up
        v1_sha = engine.registry.get("v1").info["weights_sha256"]
        stat = os.statvfs(small_disk)
        with open(filler, "wb") as fh:  # leave 256 kB: enough to start the run, not to save a 9 MB model
            fh.write(b"\0" * (stat.f_bavail * stat.f_frsize - 256 * 1024))
        with pytest.raises(PlatformError) as err:
            engine.retrain({"mode": "head", "epochs": 20})
        assert str(err.value) == ("The data directory ran out of disk space while saving the model; "
                                  "nothing was registered and the previous version stays active")
        assert [v.version for v in engine.registry.versions()] == ["v1"] and version_folders(data) == ["v1"]
        assert engine.registry.active() == "v1" and engine.registry.verify("v1").info["weights_sha256"] == v1_sha
        assert list((data / "models" / ".staging").iterdir()) == []
        assert engine.status()["active_version"] == "v1"
        filler.unlink()  # (before predicting: an upload is stored in the database, which lives on this disk too)
        image = dataset_dir / "circles" / "circles_0.jpg"
        assert engine.predict([image])["results"][0]["model_version"] == "v1"
        assert engine.retrain({"mode": "head", "epochs": 20})["version"] == "v2"
    finally:
        filler.unlink(missing_ok=True)
        engine.close()


# --- damaged model files -------------------------------------------------------------------------------------------

def test_damaged_versions_are_refused_and_a_damaged_active_version_falls_back(tmp_path, backbone_dir, dataset_dir):
    data = data_dir_with_backbone(tmp_path, backbone_dir)
    models = data / "models"
    app = IsolatedApp(data, tmp_path / "cwd", {"DATASET": str(dataset_dir)})
    image = dataset_dir / "squares" / "squares_1.jpg"
    try:
        client = app.start().client()
        for expected in ("v1", "v2", "v3", "v4"):
            assert client.predict(mode="head", epochs=10, api_name="/retrain")["version"] == expected
        weights = (models / "v2" / "model.safetensors").read_bytes()
        middle = len(weights) // 2
        (models / "v2" / "model.safetensors").write_bytes(weights[:middle] + bytes([weights[middle] ^ 0xFF])
                                                          + weights[middle + 1:])
        (models / "v3" / "model.safetensors").unlink()
        for version, fragment in (("v2", "Model version v2 is damaged: its weights do not match their checksum"),
                                  ("v3", "Model version v3 is damaged: missing model.safetensors")):
            with pytest.raises(AppError, match=fragment):
                client.predict(version, api_name="/activate")
            status = client.predict(api_name="/status")
            assert status["active_version"] == "v4"
            assert client.predict([handle_file(str(image))], api_name="/predict")[0]["model_version"] == "v4"
    finally:
        app.kill()

    (models / "v4" / "config.json").write_text("{ this is not json")  # the active version is damaged now
    restarted = IsolatedApp(data, tmp_path / "cwd2", {"DATASET": str(dataset_dir)})
    try:
        client = restarted.start().client()
        status = client.predict(api_name="/status")
        assert status["active_version"] == "v1"
        assert status["model_warning"].startswith("Model version v4 cannot be loaded")
        assert status["model_warning"].endswith("Serving v1 instead.")
        assert client.predict([handle_file(str(image))], api_name="/predict")[0]["model_version"] == "v1"
        assert [m["version"] for m in client.predict(api_name="/models")] == ["v1", "v2", "v3", "v4"]
    finally:
        restarted.kill()
