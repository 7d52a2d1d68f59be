"""The public API of ``python app.py`` as ``gradio_client`` users call it: a real server process, real model,
real embedded database."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from conftest import write_dataset
from labeling.store import open_store
from settings import load_settings

pytestmark = pytest.mark.slow

ENDPOINTS = {"/predict", "/save_labels", "/labels", "/retrain", "/cancel", "/models", "/activate", "/status", "/audit"}
RESULT_KEYS = {"file", "sha256", "label", "confidence", "top_k", "model_version", "human_label"}
LABEL_KEYS = {"sha256", "label", "state", "revision", "updated_by", "updated_at"}


def fresh_data_dir(root: Path, backbone_dir: Path) -> Path:
    data = root / "data"
    shutil.copytree(backbone_dir, data / "backbones" / backbone_dir.name)
    return data


def files_of(folder: Path, count: int) -> list:
    return [handle_file(str(p)) for p in sorted(folder.glob("*.jpg"))[:count]]


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def served(tmp_path_factory, backbone_dir, dataset_dir, launch_app):
    """The app over DATASET = the three-class dataset, starting with no trained model."""
    app = launch_app(fresh_data_dir(tmp_path_factory.mktemp("app-api"), backbone_dir), DATASET=str(dataset_dir))
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(served):
    return served.client()


@pytest.fixture(scope="module")
def v1(client) -> dict:
    """The result of the first /retrain (head mode, default parameters)."""
    return client.predict(mode="head", api_name="/retrain")


@pytest.fixture(scope="module")
def blobs_dir(tmp_path_factory) -> Path:
    """Eight images of a class the dataset does not have: grey ellipses."""
    return write_dataset(tmp_path_factory.mktemp("new-class"), per_class=8, classes=["blobs"], offset=500) / "blobs"


def test_public_endpoints_are_exactly_these(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == ENDPOINTS
    assert not api["unnamed_endpoints"]
    retrain = [p["parameter_name"] for p in api["named_endpoints"]["/retrain"]["parameters"]]
    assert retrain[:4] == ["mode", "lr", "batch_size", "epochs"]


def test_before_any_training_predict_returns_unlabelled_rows(client, dataset_dir):
    # runs before the v1 fixture trains anything (tests run in file order)
    status = client.predict(api_name="/status")
    assert status["active_version"] is None and status["versions"] == 0 and status["training"] is False
    rows = client.predict(files_of(dataset_dir / "circles", 2), api_name="/predict")
    assert [set(r) for r in rows] == [RESULT_KEYS] * 2
    assert [(r["file"], r["label"], r["model_version"]) for r in rows] == [
        ("circles_0.jpg", None, None), ("circles_1.jpg", None, None)]


def test_retrain_returns_version_and_metrics(client, v1):
    assert v1["version"] == "v1"
    metrics = v1["metrics"]
    assert metrics["labels"] == ["circles", "squares", "stripes"]
    assert metrics["train_size"] + metrics["val_size"] == 30
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "macro_f1" in metrics
    assert v1["promoted"] is True and v1["reason"] == "v1 is the first version" and v1["started_by"] == "anonymous"
    with pytest.raises(AppError, match="No training run is going on"):
        client.predict(api_name="/cancel")
    status = client.predict(api_name="/status")
    assert status["active_version"] == "v1" and status["classes"] == ["circles", "squares", "stripes"]


def test_predict_returns_one_row_per_file_and_error_rows(client, v1, dataset_dir, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    files = files_of(dataset_dir / "squares", 2) + files_of(dataset_dir / "stripes", 1) + [handle_file(str(bad))]

    rows = client.predict(files, api_name="/predict")

    good, errors = rows[:3], rows[3:]
    assert [set(r) for r in good] == [RESULT_KEYS] * 3
    assert [r["file"] for r in good] == ["squares_0.jpg", "squares_1.jpg", "stripes_0.jpg"]
    assert [r["label"] for r in good] == ["squares", "squares", "stripes"]
    for r in good:
        assert len(r["sha256"]) == 64 and r["model_version"] == "v1"
        assert 0.0 <= r["confidence"] <= 1.0 and r["top_k"][0] == {"label": r["label"], "score": r["confidence"]}
        assert {t["label"] for t in r["top_k"]} == {"circles", "squares", "stripes"}
        assert all(set(t) == {"label", "score"} for t in r["top_k"])
    assert len(errors) == 1 and errors[0]["file"] == "notes.jpg" and "not a readable image" in errors[0]["error"]


def test_predict_with_only_bad_files_is_an_error(client, v1, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(AppError, match="broken.png: not a readable image"):
        client.predict([handle_file(str(bad))], api_name="/predict")


@pytest.fixture(scope="module")
def v2(client, v1, blobs_dir) -> dict:
    """Predict eight images of a new class, save them as "blobs", retrain: what each step returned."""
    rows = client.predict(files_of(blobs_dir, 8), api_name="/predict")
    saved = client.predict([{"sha256": r["sha256"], "label": "blobs"} for r in rows], api_name="/save_labels")
    result = client.predict(mode="head", lr=0.003, batch_size=64, epochs=40, api_name="/retrain")
    return {"rows": rows, "saved": saved, "result": result}


def test_new_class_is_saved_trained_and_predicted(client, v2, blobs_dir):
    assert [r["model_version"] for r in v2["rows"]] == ["v1"] * 8
    assert v2["saved"] == {"saved": 8, "new_classes": ["blobs"], "rejected": []}
    assert v2["result"]["version"] == "v2"
    assert v2["result"]["metrics"]["labels"] == ["blobs", "circles", "squares", "stripes"]
    assert v2["result"]["metrics"]["human_labels"] == 8

    again = client.predict(files_of(blobs_dir, 8), api_name="/predict")
    assert {r["model_version"] for r in again} == {"v2"}
    assert [r["label"] for r in again] == ["blobs"] * 8  # the images it was just trained on
    assert [r["human_label"] for r in again] == ["blobs"] * 8  # and the human labels they carry


def test_labels_lists_current_human_labels_optionally_for_given_images(client, v2, dataset_dir):
    shas = [r["sha256"] for r in v2["rows"]]
    every = client.predict(api_name="/labels")
    assert {r["sha256"] for r in every} >= set(shas) and all(set(r) == LABEL_KEYS for r in every)
    unlabelled = client.predict(files_of(dataset_dir / "circles", 1), api_name="/predict")[0]
    assert unlabelled["human_label"] is None
    some = client.predict([shas[0], unlabelled["sha256"]], api_name="/labels")
    assert [(r["sha256"], r["label"], r["state"], r["revision"], r["updated_by"]) for r in some] == [
        (shas[0], "blobs", "corrected", 1, "anonymous")]  # v1 could not have predicted a class it did not know
    assert some[0]["updated_at"]


def test_models_list_and_activate_rolls_back(client, v2, dataset_dir):
    before = {m["version"]: m["active"] for m in client.predict(api_name="/models")}
    assert before == {"v1": False, "v2": True}

    assert client.predict("v1", api_name="/activate") == {"active": "v1"}

    models = client.predict(api_name="/models")
    assert {m["version"]: m["active"] for m in models}["v1"] is True
    assert all({"version", "active", "created", "metrics"} <= set(m) for m in models)
    rows = client.predict(files_of(dataset_dir / "circles", 1), api_name="/predict")
    assert rows[0]["model_version"] == "v1" and rows[0]["label"] == "circles"
    with pytest.raises(AppError, match="v9"):
        client.predict("v9", api_name="/activate")
    assert client.predict(api_name="/status")["active_version"] == "v1"


@pytest.mark.parametrize("params, problem", [
    ({"lr": -1}, "lr must be between 1e-07 and 10, got -1"),
    ({"epochs": 10**9}, "epochs must be between 1 and 1000, got 1000000000"),
    ({"mode": "nope"}, "mode must be one of head, finetune, scratch, got 'nope'"),
])
def test_bad_training_parameters_say_what_is_wrong(client, params, problem):
    versions = len(client.predict(api_name="/models"))
    with pytest.raises(AppError) as caught:
        client.predict(**{"mode": "head", **params}, api_name="/retrain")
    assert "Bad training parameters" in str(caught.value) and problem in str(caught.value)
    assert "Traceback" not in str(caught.value)
    # the app keeps serving and started no run
    status = client.predict(api_name="/status")
    assert status["training"] is False and status["versions"] == versions == len(client.predict(api_name="/models"))


# --- access control ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(tmp_path_factory, backbone_dir, dataset_dir, launch_app):
    """The app with APP_USERS="alice:pw"; no model yet."""
    app = launch_app(fresh_data_dir(tmp_path_factory.mktemp("app-api-auth"), backbone_dir),
                     DATASET=str(dataset_dir), APP_USERS="alice:pw")
    yield app
    app.stop()


def test_writes_need_credentials_and_history_records_the_user(guarded, dataset_dir):
    anonymous = guarded.client()
    rows = anonymous.predict(files_of(dataset_dir / "stripes", 2), api_name="/predict")  # predicting is open
    assert [r["file"] for r in rows] == ["stripes_0.jpg", "stripes_1.jpg"]
    labels = [{"sha256": r["sha256"], "label": "stripes"} for r in rows]

    for who in (anonymous, guarded.client(headers=basic_auth("alice", "wrong")),
                guarded.client(headers=basic_auth("mallory", "pw"))):
        for call in (lambda c=who: c.predict(labels, api_name="/save_labels"),
                     lambda c=who: c.predict(mode="head", api_name="/retrain"),
                     lambda c=who: c.predict("v1", api_name="/activate")):
            with pytest.raises(AppError, match="Log in to do this"):
                call()
    status = anonymous.predict(api_name="/status")
    assert status["labelled_images"] == 0 and status["versions"] == 0

    alice = guarded.client(headers=basic_auth("alice", "pw"))
    # no model yet, so no class is known: "stripes" is new to the store
    assert alice.predict(labels, api_name="/save_labels") == {"saved": 2, "new_classes": ["stripes"], "rejected": []}
    assert alice.predict(mode="head", api_name="/retrain")["version"] == "v1"
    assert alice.predict("v1", api_name="/activate") == {"active": "v1"}
    assert anonymous.predict(files_of(dataset_dir / "stripes", 1), api_name="/predict")[0]["model_version"] == "v1"

    # the app publishes its embedded database; this process connects to it as the CLIs do
    store = open_store(load_settings({"DATA_DIR": str(guarded.data_dir)}))
    try:
        history = store.history()
    finally:
        store.close()
    assert sorted((h["sha256"], h["label"], h["user"]) for h in history) == sorted(
        (r["sha256"], "stripes", "alice") for r in rows)
