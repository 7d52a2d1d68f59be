"""``app.Handlers`` with a real Engine: real backbone, real training, real embedded MongoDB."""
from __future__ import annotations

import base64
import io
import json
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import gradio as gr
import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

import app
from classifier.registry import LocalRegistry
from engine import Engine
from settings import PlatformError, load_settings
from ui import review

from conftest import make_image


def no_progress(*args, **kwargs) -> None:
    """Stands in for gr.Progress outside an event."""


def fresh_data_dir(root: Path, backbone_dir: Path) -> Path:
    """A DATA_DIR holding only a copy of the prepared backbone, as the ``settings`` fixture makes it."""
    data = root / "data"
    shutil.copytree(backbone_dir, data / "backbones" / backbone_dir.name)
    return data


def dataset_files(dataset_dir: Path, per_class: int) -> list[str]:
    """The first ``per_class`` images of each class folder, class by class."""
    return [str(p) for folder in sorted(dataset_dir.iterdir()) for p in sorted(folder.glob("*.jpg"))[:per_class]]


@pytest.fixture(autouse=True)
def close_figures():
    """Gradio closes each Figure it sends to the page; handlers called directly leave that to us."""
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def engine(tmp_path_factory, backbone_dir, dataset_dir):
    """An engine over DATASET = the three-class dataset, with a trained, active head version v1."""
    data = fresh_data_dir(tmp_path_factory.mktemp("app-handlers"), backbone_dir)
    eng = Engine(load_settings({"DATA_DIR": str(data), "DATASET": str(dataset_dir)}))
    assert eng.retrain({"mode": "head"})["version"] == "v1"
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def handlers(engine) -> app.Handlers:
    return app.Handlers(engine)


@pytest.fixture(scope="module")
def auth_handlers(tmp_path_factory, engine, dataset_dir):
    """Handlers with APP_USERS set, over a copy of the trained models (its own database)."""
    data = tmp_path_factory.mktemp("app-handlers-auth") / "data"
    for part in ("backbones", "models"):
        shutil.copytree(engine.settings.data_dir / part, data / part)
    eng = Engine(load_settings({"DATA_DIR": str(data), "DATASET": str(dataset_dir), "APP_USERS": "alice:pw,bob:pw2"}))
    yield app.Handlers(eng)
    eng.close()


def predict(handlers: app.Handlers, files, threshold: float = 0.6):
    return handlers.show_predictions(files, threshold, progress=no_progress)


def basic(user: str, password: str) -> SimpleNamespace:
    """A request object carrying an HTTP Basic Authorization header, as gr.Request exposes it."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return SimpleNamespace(headers={"authorization": f"Basic {token}"})


# --- predictions -----------------------------------------------------------------------------------

def grid(value: str) -> dict:
    """The review grid's value (JSON text) as a dict."""
    return json.loads(value)


def server(handlers: app.Handlers) -> dict:
    """The review grid's server functions by name, as its script calls them."""
    return {fn.__name__: fn for fn in review.server_functions(handlers.engine, handlers.writer, handlers.tokens)}


def edit(handlers, edits: list[dict], token=None, request=None) -> dict[str, dict]:
    """Send edits ``[{sha256, label, revision}]`` as the grid does; results by sha256."""
    results = server(handlers)["save_edits"]({"edits": edits, "token": token}, request)
    return {r["sha256"]: r for r in results}


def test_show_predictions_fills_the_review_grid_and_plots(handlers, dataset_dir):
    files = dataset_files(dataset_dir, 2)
    value, summary = predict(handlers, files)
    dist, conf = handlers.batch_charts(value, 0.6)
    rows = grid(value)["rows"]

    assert len(rows) == 6 and grid(value)["batch_id"]
    # a frozen ImageNet backbone separates these shapes: each file is predicted as its folder's class
    assert [r["pred"] for r in rows] == [Path(f).parent.name for f in files]
    assert [r["file"] for r in rows] == [Path(f).name for f in files]
    for r in rows:
        assert r["thumb"].startswith("gradio_api/file=") and Path(unquote(r["thumb"].split("=", 1)[1])).is_file()
        assert 0 <= r["confidence"] <= 1 and r["top_k"][0]["label"] == r["pred"]
    assert grid(value)["classes"][:3] == ["circles", "squares", "stripes"]
    assert "**6 images** predicted by **v1**" in summary
    assert isinstance(dist, Figure) and isinstance(conf, Figure)


def test_more_than_max_batch_is_refused_with_a_clear_message(tmp_path, backbone_dir, dataset_dir):
    small = Engine(load_settings({"DATA_DIR": str(fresh_data_dir(tmp_path, backbone_dir)), "MAX_BATCH": "4"}))
    try:
        with pytest.raises(PlatformError, match=r"Too many images: at most 4 per batch"):
            predict(app.Handlers(small), dataset_files(dataset_dir, 2))
        # exactly MAX_BATCH is fine
        assert len(grid(predict(app.Handlers(small), dataset_files(dataset_dir, 2)[:4])[0])["rows"]) == 4
    finally:
        small.close()


@pytest.mark.parametrize("files", [None, []])
def test_no_files_is_a_clear_error(handlers, files):
    with pytest.raises(PlatformError, match="No images were given: upload image files or a .zip"):
        predict(handlers, files)


def test_user_errors_shows_the_message_as_gr_error(handlers):
    with pytest.raises(gr.Error) as caught:
        app.user_errors(handlers.show_predictions)([], 0.6, progress=no_progress)
    assert "No images were given" in str(caught.value.message)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_an_upload_shows_a_count_not_a_list(handlers, dataset_dir):
    files = dataset_files(dataset_dir, 2)
    held, count, value, *_ = handlers.uploaded(files, 0.6, progress=no_progress)
    assert held == files and count == "**6 files** uploaded" and len(grid(value)["rows"]) == 6


def _jpeg(kind: str, color, seed: int) -> bytes:
    buffer = io.BytesIO()
    make_image(kind, color, seed).save(buffer, "JPEG")
    return buffer.getvalue()


def test_zip_upload_is_predicted_and_entry_names_are_only_names(handlers, tmp_path, monkeypatch):
    work = tmp_path / "work" / "inner"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # a path-using bug would write ../x.jpg next to the working directory
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../x.jpg", _jpeg("ellipse", (220, 60, 40), 501))
        zf.writestr("../../evil/y.jpg", _jpeg("rectangle", (40, 160, 60), 502))
        zf.writestr("photos/z.jpg", _jpeg("stripes", (50, 70, 200), 503))
        zf.writestr("notes.txt", "not an image")

    value, summary, *_ = predict(handlers, [str(archive)])

    rows = grid(value)["rows"]
    assert [r["file"] for r in rows] == ["x.jpg", "y.jpg", "z.jpg"]
    assert [r["pred"] for r in rows] == ["circles", "squares", "stripes"]
    assert "1 skipped: notes.txt: not an image file" in summary
    written = {p.name for p in tmp_path.rglob("*")}
    assert not written & {"x.jpg", "y.jpg", "evil"}
    assert not (Path(handlers.settings.data_dir).parent / "x.jpg").exists()


# --- the review grid's edits -----------------------------------------------------------------------

def test_each_edit_is_saved_and_untouched_predictions_never_are(handlers, engine, dataset_dir):
    files = [str(dataset_dir / "stripes" / f"stripes_{i}.jpg") for i in (7, 8, 9)]
    rows = grid(predict(handlers, files)[0])["rows"]
    shas = [r["sha256"] for r in rows]
    assert [(r["human_label"], r["revision"]) for r in rows] == [(None, 0)] * 3

    saved = edit(handlers, [{"sha256": shas[0], "label": "zebra", "revision": 0},
                            {"sha256": shas[2], "label": "stripes", "revision": 0}])
    assert (saved[shas[0]]["status"], saved[shas[0]]["state"], saved[shas[0]]["new_class"]) == ("saved", "corrected", "zebra")
    assert (saved[shas[2]]["status"], saved[shas[2]]["state"]) == ("saved", "confirmed")
    stored = engine.store().current_labels()
    assert stored[shas[0]] == "zebra" and stored[shas[2]] == "stripes" and shas[1] not in stored

    # predicting the batch again shows the store's labels and revisions; the untouched image stays untouched
    value = grid(predict(handlers, files)[0])
    again = {r["sha256"]: r for r in value["rows"]}
    assert [(again[s]["human_label"], again[s]["revision"]) for s in shas] == [("zebra", 1), (None, 0), ("stripes", 1)]
    # so does a reloaded page, which asks for its last batch again
    restored = grid(server(handlers)["load_batch"]({"batch_id": value["batch_id"], "threshold": 0.6}))
    assert [(r["sha256"], r["human_label"], r["pred"], r["file"]) for r in restored["rows"]] == \
        [(r["sha256"], r["human_label"], r["pred"], r["file"]) for r in value["rows"]]
    assert all(Path(unquote(r["thumb"].split("=", 1)[1])).is_file() for r in restored["rows"])
    assert server(handlers)["load_batch"]({"batch_id": "gone"}) == ""
    assert engine.store().current_labels()[shas[0]] == "zebra"  # a later prediction overwrote nothing

    # undo: back to no human label, with a history row
    undone = edit(handlers, [{"sha256": shas[0], "label": None, "revision": 1}])[shas[0]]
    assert (undone["status"], undone["label"], undone["state"], undone["revision"]) == ("saved", None, "untouched", 2)
    assert shas[0] not in engine.store().current_labels()
    assert [(h["label"], h["previous"]) for h in engine.store().history(shas[0])][:2] == [(None, "zebra"), ("zebra", None)]


def test_a_stale_edit_is_a_conflict_the_loser_sees(handlers, engine, dataset_dir):
    files = [str(dataset_dir / "squares" / "squares_9.jpg")]
    sha = grid(predict(handlers, files)[0])["rows"][0]["sha256"]
    assert edit(handlers, [{"sha256": sha, "label": "boxes", "revision": 0}])[sha]["status"] == "saved"
    # a second person's page still shows revision 0
    lost = edit(handlers, [{"sha256": sha, "label": "squares", "revision": 0}])[sha]
    assert (lost["status"], lost["label"], lost["revision"]) == ("conflict", "boxes", 1)
    # an unknown revision (the store was down when predicting) counts as "saw no label": a conflict too
    assert edit(handlers, [{"sha256": sha, "label": "squares", "revision": None}])[sha]["status"] == "conflict"
    assert engine.store().current_labels()[sha] == "boxes"


def test_a_bad_edit_is_an_error_on_its_card_and_the_others_are_saved(handlers, engine, dataset_dir):
    rows = grid(predict(handlers, [str(dataset_dir / "circles" / f"circles_{i}.jpg") for i in (5, 6)])[0])["rows"]
    results = edit(handlers, [{"sha256": rows[0]["sha256"], "label": "../x", "revision": 0},
                              {"sha256": rows[1]["sha256"], "label": "<img src=x onerror=alert(1)>", "revision": 0}])
    assert results[rows[0]["sha256"]]["status"] == "error" and "'/'" in results[rows[0]["sha256"]]["error"]
    assert results[rows[1]["sha256"]]["status"] == "saved"
    assert engine.store().current_labels()[rows[1]["sha256"]] == "<img src=x onerror=alert(1)>"
    detail = server(handlers)["label_detail"]({"sha256": rows[1]["sha256"]})
    assert detail["image"].startswith("data:image/jpeg;base64,")
    assert detail["history"][0]["label"] == "<img src=x onerror=alert(1)>" and detail["predictions"][0]["model_version"] == "v1"


def test_rows_carry_the_audit_queues_rank_and_badges():
    result = {"batch_id": "b", "model_version": "v1", "results": [
        {"sha256": "a" * 64, "file": "x.jpg", "label": "cat", "confidence": 0.4, "top_k": [], "rank": 2,
         "badges": [{"kind": "suspect", "text": "<b>near dog</b>"}, "junk"]},
        {"sha256": "b" * 64, "file": "y.jpg", "label": "dog", "confidence": 0.9, "top_k": [], "rank": True}]}
    rows = grid(review.payload(result, ["cat", "dog"], 0.6))["rows"]
    assert rows[0]["rank"] == 2 and rows[0]["badges"] == [{"kind": "suspect", "text": "<b>near dog</b>"}]
    assert rows[0]["low"] and "rank" not in rows[1] and not rows[1]["low"]


def test_import_a_zip_of_class_folders_as_labels(handlers, engine, tmp_path):
    archive = tmp_path / "labelled.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"set/moons/m{i}.jpg", _jpeg("ellipse", (200, 200, 40), 900 + i))
            zf.writestr(f"set/bars/b{i}.jpg", _jpeg("stripes", (20, 20, 20), 950 + i))
    message, status = handlers.import_labelled(str(archive), None, None)
    assert message.startswith("Imported **6** label(s) as **anonymous** in 2 classes")
    labels = engine.store().current_labels()
    assert sorted(v for v in labels.values() if v in ("moons", "bars")) == ["bars"] * 3 + ["moons"] * 3
    with pytest.raises(PlatformError, match="Choose a .zip"):
        handlers.import_labelled(None, None, None)


def test_sample_predicts_images_from_the_server_folder(handlers, dataset_dir):
    assert handlers.settings.sample_roots == (dataset_dir.resolve(),)
    value, *_ = handlers.sample(0, 5, 0.6, progress=no_progress)
    assert len(grid(value)["rows"]) == 5
    with pytest.raises(PlatformError, match="Choose one of the configured sample folders"):
        handlers.sample(3, 5, 0.6, progress=no_progress)


def test_models_table_and_version_details(handlers):
    table = handlers.models_table()
    assert list(table.columns)[:10] == ["version", "active", "mode", "created", "trained by", "gate", "why",
                                        "val accuracy (own split)", "val images", "macro-F1"]
    row = table.iloc[-1]
    assert row["version"] == "v1" and row["mode"] == "head" and row["classes"] == 3
    runtime = handlers.engine.status()["model_runtime"]  # how the active version computes, as /status reports it
    newest = handlers.engine.models()[-1]
    assert (runtime["resolution"], runtime["precision"]) == (newest["resolution"], newest["precision"])
    text, conf, f1, loss = handlers.version_details("v1")
    assert "| **v1** | — |" in text and "macro-F1" in text  # the active version itself: nothing to compare
    assert all(isinstance(fig, Figure) for fig in (conf, f1, loss))
    assert handlers.version_details(None) == ("", None, None, None)


def test_user_typed_names_show_as_text_in_the_markdown(handlers):
    """A class named like HTML is text in the run's result, the data-health table and the model card."""
    from training.checkpoint import data_health_lines, model_card
    hostile = "<img src=x onerror=alert(1)>"
    result = {"version": "v1", "promoted": True, "reason": "v1 is the first version", "started_by": hostile,
              "warnings": [f"class {hostile!r} has 1 image(s) and none in the validation split"]}
    text = handlers.result_view(result, None)[0]
    health = {"computed": True, "audited": 3, "estimated_issues": 0, "estimated_noise_rate": 0.0, "oof_accuracy": 1.0,
              "duplicate_sets": 0, "duplicate_images": 0, "outliers": 0, "per_class": {hostile: {"count": 1, "oof_accuracy": 1.0}}}
    card = model_card("v1", {"classes": [hostile, "a|b"]}, {"data_health": health}, {})
    for markdown in (text, "\n".join(data_health_lines(health)), card):
        assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    assert "| a\\|b |" in card  # a table cell, not two


# --- access control --------------------------------------------------------------------------------

def test_writes_without_login_are_refused(auth_handlers, dataset_dir):
    h = auth_handlers
    rows = grid(predict(h, dataset_files(dataset_dir, 1))[0])["rows"]  # predicting needs no login
    edits = [{"sha256": r["sha256"], "label": "shapes", "revision": 0} for r in rows]
    forged = h.tokens.issue("mallory").replace("mallory", "alice")  # a token is bound to its user name
    for results in (edit(h, edits), edit(h, edits, request=basic("alice", "wrong")), edit(h, edits, token="alice"),
                    edit(h, edits, token=forged)):
        assert {r["status"] for r in results.values()} == {"error"}
        assert all("Log in to do this" in r["error"] for r in results.values())
    for call in (lambda: next(h.train("head", None, None, None, 0.2, 4, 32, 3, 3, None, None, progress=no_progress)),
                 lambda: h.stop_training(None, None),
                 lambda: h.activate_version("v1", None, None),
                 lambda: h.import_labelled(str(dataset_dir), None, None)):
        with pytest.raises(PlatformError, match="Log in to do this"):
            call()
    assert h.engine.store().current_labels() == {}
    assert [m["version"] for m in h.engine.models()] == ["v1"]


def test_login_form_checks_the_password(auth_handlers):
    user, message, element = auth_handlers.login(" alice ", "pw")
    assert (user, message) == ("alice", "Logged in as **alice**.")
    token = element.split('data-token="')[1].split('"')[0]
    assert auth_handlers.tokens.user(token) == "alice"
    with pytest.raises(PlatformError, match="Wrong user name or password"):
        auth_handlers.login("alice", "pw2")
    with pytest.raises(PlatformError, match="Wrong user name or password"):
        auth_handlers.login("nobody", "pw")


def test_writes_with_session_user_or_basic_header_succeed(auth_handlers, dataset_dir):
    h = auth_handlers
    rows = grid(predict(h, dataset_files(dataset_dir, 1))[0])["rows"]
    token = h.tokens.issue("alice")  # what the login form hands the grid

    saved = edit(h, [{"sha256": r["sha256"], "label": r["pred"], "revision": 0} for r in rows], token=token)
    assert {(r["status"], r["updated_by"]) for r in saved.values()} == {("saved", "alice")}
    saved = edit(h, [{"sha256": r["sha256"], "label": "shapes", "revision": 1} for r in rows], request=basic("bob", "pw2"))
    assert {(r["status"], r["updated_by"]) for r in saved.values()} == {("saved", "bob")}
    history = h.engine.store().history(rows[0]["sha256"])
    assert [row["user"] for row in history] == ["bob", "alice"]

    # 0 for lr/batch size/epochs is what the page's empty Number fields send: the mode's defaults
    *running, last = h.train("head", 0, 0, 0, 0.2, 4, 32, 3, 3, "alice", None, progress=no_progress)
    assert running and all("**training** by alice" in step[5] for step in running)  # the header follows the run
    text, conf, f1, loss, models, status, run_state, live_loss = last
    # Bob's "shapes" labels made v2 worse than v1 on the same held-out images: the gate keeps v1 live.
    assert "### ⚠ v2 was registered but not promoted" in text and "v1 stays active" in text
    assert "| **v2** | v1 |" in text and "started by **alice**" in text and "accuracy on the same" in text
    assert list(models["version"]) == ["v2", "v1"] and list(models["active"]) == ["", "✅"]
    assert list(models["gate"]) == ["not promoted", "promoted"]
    assert h.engine.training_status()["user"] == "alice" and "alice" in run_state

    message, models, pick, status = h.activate_version("v2", None, basic("alice", "pw"))  # activate anyway
    assert message.startswith("✅ v2 is now active")
    assert list(models["active"]) == ["✅", ""] and pick["value"] == "v2"
    assert h.engine.status()["active_version"] == "v2" and "**Model:** v2" in status

    LocalRegistry(h.settings.models_dir).set_active("v1")  # what `python -m classifier activate v1` does
    models, pick, status = h.models_refresh()  # the Models tab opened, or its Refresh button
    assert list(models["active"]) == ["", "✅"] and "**Model:** v1" in status
    assert h.engine.status()["active_version"] == "v1"


# --- no model yet ----------------------------------------------------------------------------------

def test_no_model_yet_predicts_unlabelled_rows_and_says_so(tmp_path, backbone_dir, dataset_dir):
    bare = Engine(load_settings({"DATA_DIR": str(fresh_data_dir(tmp_path, backbone_dir))}))
    try:
        h = app.Handlers(bare)
        files = dataset_files(dataset_dir, 1)
        rows = h.api_predict(files)
        assert [r["label"] for r in rows] == [None, None, None]
        assert all(r["confidence"] is None and r["top_k"] == [] and r["model_version"] is None for r in rows)

        value, summary = predict(h, files)
        dist, conf = h.batch_charts(value, 0.6)
        rows = grid(value)["rows"]
        assert [(r["pred"], r["confidence"], r["human_label"]) for r in rows] == [(None, None, None)] * 3
        assert "predicted by **no model yet**" in summary and dist is None and conf is None

        text = h.status_text()
        assert "none trained yet" in text and "No model is trained yet" in text
        assert h.models_table().empty
        assert isinstance(app.build_app(bare), gr.Blocks)  # the page builds with no model

        saved = edit(h, [{"sha256": rows[0]["sha256"], "label": "circles", "revision": 0}])[rows[0]["sha256"]]
        assert (saved["status"], saved["new_class"], saved["state"]) == ("saved", "circles", "corrected")
    finally:
        bare.close()
