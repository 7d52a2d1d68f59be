"""``app.Handlers`` with a real Engine: real backbone, real training, real embedded MongoDB."""
from __future__ import annotations

import base64
import io
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure

import app
from engine import Engine
from settings import PlatformError, load_settings
from ui import views

from conftest import make_image

COLUMNS = ["#", "file", "predicted", "confidence", "top-3", "flag", "label", "select"]


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


def predict(handlers: app.Handlers, files, threshold: float = 0.6, sort: str = views.SORTS[0]):
    return handlers.show_predictions(files, threshold, sort, progress=no_progress)


def basic(user: str, password: str) -> SimpleNamespace:
    """A request object carrying an HTTP Basic Authorization header, as gr.Request exposes it."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return SimpleNamespace(headers={"authorization": f"Basic {token}"})


# --- predictions -----------------------------------------------------------------------------------

def test_show_predictions_fills_gallery_table_and_plots(handlers, dataset_dir):
    files = dataset_files(dataset_dir, 2)
    batch, gallery, table, summary, dist, conf, class_filter, acc_text, confusion, save_msg, bulk = predict(handlers, files)
    assert save_msg == ""  # a new batch clears the previous save message

    assert len(batch["results"]) == 6 and batch["batch_id"]
    assert len(gallery) == 6
    for (thumb, caption), result in zip(gallery, batch["results"]):
        assert Path(thumb).is_file()
        label, _, percent = caption.partition(" · ")
        assert label.lstrip("⚠ ") == result["label"] and label in {"circles", "squares", "stripes"}
        assert percent.endswith("%") and 0 <= int(percent[:-1]) <= 100
    # a frozen ImageNet backbone separates these shapes: each file is predicted as its folder's class
    assert [r["label"] for r in batch["results"]] == [Path(f).parent.name for f in files]

    assert isinstance(table, pd.DataFrame) and list(table.columns) == COLUMNS and len(table) == 6
    assert list(table["file"]) == [Path(f).name for f in files]
    assert list(table["label"]) == list(table["predicted"])  # pre-filled with the prediction
    assert not table["select"].any()
    assert "**6 images** predicted by **v1**" in summary
    assert isinstance(dist, Figure) and isinstance(conf, Figure)
    assert class_filter["choices"] == ["all", "circles", "squares", "stripes"]
    assert "Save labels" in acc_text and confusion is None


def test_more_than_max_batch_is_refused_with_a_clear_message(tmp_path, backbone_dir, dataset_dir):
    small = Engine(load_settings({"DATA_DIR": str(fresh_data_dir(tmp_path, backbone_dir)), "MAX_BATCH": "4"}))
    try:
        with pytest.raises(PlatformError, match=r"Too many images: at most 4 per batch"):
            predict(app.Handlers(small), dataset_files(dataset_dir, 2))
        # exactly MAX_BATCH is fine
        assert len(predict(app.Handlers(small), dataset_files(dataset_dir, 2)[:4])[0]["results"]) == 4
    finally:
        small.close()


@pytest.mark.parametrize("files", [None, []])
def test_no_files_is_a_clear_error(handlers, files):
    with pytest.raises(PlatformError, match="No images were given: upload image files or a .zip"):
        predict(handlers, files)


def test_user_errors_shows_the_message_as_gr_error(handlers):
    with pytest.raises(gr.Error) as caught:
        app.user_errors(handlers.show_predictions)([], 0.6, views.SORTS[0], progress=no_progress)
    assert "No images were given" in str(caught.value.message)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


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

    batch, gallery, table, summary, *_ = predict(handlers, [str(archive)])

    assert [r["file"] for r in batch["results"]] == ["x.jpg", "y.jpg", "z.jpg"]
    assert [r["label"] for r in batch["results"]] == ["circles", "squares", "stripes"]
    assert list(table["file"]) == ["x.jpg", "y.jpg", "z.jpg"] and len(gallery) == 3
    assert "1 skipped: notes.txt: not an image file" in summary
    written = {p.name for p in tmp_path.rglob("*")}
    assert not written & {"x.jpg", "y.jpg", "evil"}
    assert not (Path(handlers.settings.data_dir).parent / "x.jpg").exists()


def test_reorder_and_filter_keep_typed_labels(handlers, dataset_dir):
    batch, _, table, *_ = predict(handlers, dataset_files(dataset_dir, 2))
    table.loc[table["file"] == "squares_1.jpg", "label"] = "boxes"

    gallery, shown = handlers.reorder(batch, 0.6, views.SORTS[2], "squares", table)

    assert list(shown["file"]) and set(shown["predicted"]) == {"squares"} and len(gallery) == 2
    assert dict(zip(shown["file"], shown["label"]))["squares_1.jpg"] == "boxes"
    assert all(caption.startswith("squares · ") for _, caption in gallery)


def test_bulk_assign_changes_only_selected_rows(handlers, dataset_dir):
    _, _, table, *_ = predict(handlers, dataset_files(dataset_dir, 2))
    table.loc[[0, 2], "select"] = True

    out = handlers.bulk(table, " blobs ", only_low=False)

    assert list(out["label"]) == ["blobs", "circles", "blobs", "squares", "stripes", "stripes"]
    assert not out["select"].any()
    assert list(table["label"])[0] == "circles"  # the input frame is not changed in place
    with pytest.raises(PlatformError, match="No rows are selected"):
        handlers.bulk(out, "blobs", only_low=False)
    with pytest.raises(PlatformError, match="No row is below the confidence threshold"):
        handlers.bulk(out, "blobs", only_low=True)
    with pytest.raises(PlatformError, match="Choose or type a class"):
        handlers.bulk(table, "  ", only_low=False)


def test_bulk_assign_to_low_confidence_rows(handlers, dataset_dir):
    _, _, table, *_ = predict(handlers, dataset_files(dataset_dir, 2))
    # these shapes are predicted at ~100%: flag two rows the way views.table flags a low confidence
    table.loc[[1, 4], "flag"] = "⚠ low"

    out = handlers.bulk(table, "review", only_low=True)

    assert list(out["label"]) == ["circles", "review", "squares", "squares", "review", "stripes"]


def test_save_edited_labels_reports_count_and_stores_them(handlers, engine, dataset_dir):
    files = [str(dataset_dir / "stripes" / f"stripes_{i}.jpg") for i in (7, 8, 9)]
    batch, _, table, *_ = predict(handlers, files)
    table.loc[0, "label"] = "zebra"
    table.loc[1, "label"] = ""  # an empty label is left out

    batch, message, acc_text, confusion, *_ = handlers.save(batch, table, None, None)

    assert message.startswith("Saved 2 label(s) as **anonymous**") and "New classes: zebra." in message
    shas = [r["sha256"] for r in batch["results"]]
    stored = engine.store().current_labels()
    assert stored[shas[0]] == "zebra" and stored[shas[2]] == "stripes" and shas[1] not in stored
    assert batch["saved"] == {shas[0]: "zebra", shas[2]: "stripes"}
    assert "1/2 = 50.0%" in acc_text and isinstance(confusion, Figure)
    # saving the same labels again changes nothing
    _, again, *_ = handlers.save(batch, table, None, None)
    assert again.startswith("Saved 0 label(s)") and "(2 unchanged)" in again


def test_save_only_changed_rows_leaves_unreviewed_predictions_out(handlers, engine, dataset_dir):
    files = [str(dataset_dir / "circles" / f"circles_{i}.jpg") for i in (7, 8, 9)]
    batch, _, table, *_ = predict(handlers, files)
    table.loc[2, "label"] = "moons"
    batch, message, *_ = handlers.save(batch, table, None, None, only_changed=True)
    shas = [r["sha256"] for r in batch["results"]]
    stored = engine.store().current_labels()
    assert message.startswith("Saved 1 label(s)") and stored[shas[2]] == "moons"
    assert shas[0] not in stored and shas[1] not in stored


def test_save_without_a_batch_or_labels_is_a_clear_error(handlers, dataset_dir):
    with pytest.raises(PlatformError, match="Predict a batch first"):
        handlers.save(None, None, None, None)
    batch, _, table, *_ = predict(handlers, dataset_files(dataset_dir, 1))
    table["label"] = ""
    with pytest.raises(PlatformError, match="There are no labels to save"):
        handlers.save(batch, table, None, None)


def test_sample_predicts_images_from_the_server_folder(handlers, dataset_dir):
    assert handlers.settings.sample_roots == (dataset_dir.resolve(),)
    batch, gallery, *_ = handlers.sample(0, 5, 0.6, views.SORTS[0], progress=no_progress)
    assert len(batch["results"]) == 5 and len(gallery) == 5
    with pytest.raises(PlatformError, match="Choose one of the configured sample folders"):
        handlers.sample(3, 5, 0.6, views.SORTS[0], progress=no_progress)


def test_models_table_and_version_details(handlers):
    table = handlers.models_table()
    assert list(table.columns)[:10] == ["version", "active", "mode", "created", "trained by", "gate", "why",
                                        "val accuracy (own split)", "val images", "macro-F1"]
    row = table.iloc[-1]
    assert row["version"] == "v1" and row["mode"] == "head" and row["classes"] == 3
    text, conf, f1, loss = handlers.version_details("v1")
    assert "| **v1** | — |" in text and "macro-F1" in text  # the active version itself: nothing to compare
    assert all(isinstance(fig, Figure) for fig in (conf, f1, loss))
    assert handlers.version_details(None) == ("", None, None, None)


# --- access control --------------------------------------------------------------------------------

def test_writes_without_login_are_refused(auth_handlers, dataset_dir):
    h = auth_handlers
    batch, _, table, *_ = predict(h, dataset_files(dataset_dir, 1))  # predicting needs no login
    for call in (lambda: h.save(batch, table, None, None),
                 lambda: next(h.train("head", None, None, None, 0.2, 4, 32, 3, 3, None, None, progress=no_progress)),
                 lambda: h.cancel(None, None),
                 lambda: h.activate_version("v1", None, None),
                 lambda: h.save(batch, table, None, basic("alice", "wrong")),
                 lambda: h.save(batch, table, "mallory", None)):
        with pytest.raises(PlatformError, match="Log in to do this"):
            call()
    assert h.engine.store().current_labels() == {}
    assert [m["version"] for m in h.engine.models()] == ["v1"]


def test_login_form_checks_the_password(auth_handlers):
    assert auth_handlers.login(" alice ", "pw") == ("alice", "Logged in as **alice**.")
    with pytest.raises(PlatformError, match="Wrong user name or password"):
        auth_handlers.login("alice", "pw2")
    with pytest.raises(PlatformError, match="Wrong user name or password"):
        auth_handlers.login("nobody", "pw")


def test_writes_with_session_user_or_basic_header_succeed(auth_handlers, dataset_dir):
    h = auth_handlers
    batch, _, table, *_ = predict(h, dataset_files(dataset_dir, 1))

    _, message, *_ = h.save(batch, table, "alice", None)
    assert message.startswith("Saved 3 label(s) as **alice**")
    table["label"] = "shapes"
    _, message, *_ = h.save(batch, table, None, basic("bob", "pw2"))
    assert message.startswith("Saved 3 label(s) as **bob**")
    history = h.engine.store().history(batch["results"][0]["sha256"])
    assert [row["user"] for row in history] == ["bob", "alice"]

    # 0 for lr/batch size/epochs is what the page's empty Number fields send: the mode's defaults
    *_, last = h.train("head", 0, 0, 0, 0.2, 4, 32, 3, 3, "alice", None, progress=no_progress)
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


# --- no model yet ----------------------------------------------------------------------------------

def test_no_model_yet_predicts_unlabelled_rows_and_says_so(tmp_path, backbone_dir, dataset_dir):
    bare = Engine(load_settings({"DATA_DIR": str(fresh_data_dir(tmp_path, backbone_dir))}))
    try:
        h = app.Handlers(bare)
        files = dataset_files(dataset_dir, 1)
        rows = h.api_predict(files)
        assert [r["label"] for r in rows] == [None, None, None]
        assert all(r["confidence"] is None and r["top_k"] == [] and r["model_version"] is None for r in rows)

        batch, gallery, table, summary, dist, conf, *_ = predict(h, files)
        assert [caption for _, caption in gallery] == ["no model yet"] * 3
        assert list(table["predicted"]) == ["—"] * 3 and list(table["label"]) == [""] * 3
        assert "predicted by **no model yet**" in summary and dist is None and conf is None

        text = h.status_text()
        assert "none trained yet" in text and "No model is trained yet" in text
        assert h.models_table().empty
        assert isinstance(app.build_app(bare), gr.Blocks)  # the page builds with no model

        table.loc[0, "label"] = "circles"
        _, message, *_ = h.save(batch, table, None, None)
        assert message.startswith("Saved 1 label(s)") and "New classes: circles." in message
    finally:
        bare.close()
