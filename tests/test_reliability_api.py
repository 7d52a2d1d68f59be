"""Issue 'Reliability and security', bad input through the public API of a launched ``python app.py``
(gradio_client, and raw HTTP where the client itself would refuse): a clear message per bad item, the rest of
the batch served, /status answering after every bad call, nothing written outside DATA_DIR."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from conftest import (IsolatedApp, data_dir_with_backbone, make_image, tree_snapshot, write_hostile_files,
                      write_hostile_zip, write_odd_images)

pytestmark = pytest.mark.slow
MAX_BATCH = 8


@pytest.fixture(scope="module")
def app(tmp_path_factory, backbone_dir, dataset_dir):
    """The app with MAX_UPLOAD_MB=1, MAX_ARCHIVE_MB=3 and MAX_BATCH=8, v1 trained through /retrain."""
    root = tmp_path_factory.mktemp("api-inputs")
    data = data_dir_with_backbone(root, backbone_dir)
    launched = IsolatedApp(data, root / "cwd", {"DATASET": str(dataset_dir), "MAX_UPLOAD_MB": "1", "MAX_ARCHIVE_MB": "3",
                                                "MAX_BATCH": str(MAX_BATCH)})
    try:
        launched.start()
        assert launched.client().predict(mode="head", epochs=30, api_name="/retrain")["version"] == "v1"
        launched.root = root
        yield launched
    finally:
        launched.kill()


@pytest.fixture(scope="module")
def client(app):
    return app.client()


def assert_serving(client) -> None:
    """The app answers /status and still serves v1 after a bad call."""
    status = client.predict(api_name="/status")
    assert status["active_version"] == "v1" and status["training"] is False


def test_bad_files_get_one_error_row_each_and_the_good_one_is_predicted(client, tmp_path):
    files = write_hostile_files(tmp_path / "hostile")
    rows = client.predict([handle_file(str(path)) for path, _ in files.values()], api_name="/predict")
    by_file = {row["file"]: row for row in rows}
    assert set(by_file) == set(files)
    assert by_file["good.jpg"]["model_version"] == "v1" and "error" not in by_file["good.jpg"]
    for name, (_, fragment) in files.items():
        if fragment:
            assert set(by_file[name]) == {"file", "error"} and fragment in by_file[name]["error"], by_file[name]
    assert_serving(client)


def test_only_bad_files_is_an_error_that_names_them(client, tmp_path):
    files = write_hostile_files(tmp_path / "hostile")
    with pytest.raises(AppError) as err:
        client.predict([handle_file(str(files[n][0])) for n in ("empty.jpg", "program.jpg")], api_name="/predict")
    assert "empty.jpg: the file is empty" in str(err.value) and "program.jpg: not a readable image" in str(err.value)
    assert_serving(client)


def test_unusual_valid_images_are_predicted_through_the_api(client, tmp_path):
    odd = write_odd_images(tmp_path / "odd")
    rows = client.predict([handle_file(str(p)) for p in odd.values()], api_name="/predict")
    assert [row["file"] for row in rows] == list(odd)
    assert all(row["model_version"] == "v1" and "error" not in row for row in rows)


def test_too_many_files_and_no_files_are_refused_clearly(client, tmp_path):
    paths = []
    for i in range(MAX_BATCH + 1):
        make_image("ellipse", (220, 60, 40), seed=600 + i).save(tmp_path / f"{i}.jpg")
        paths.append(handle_file(str(tmp_path / f"{i}.jpg")))
    with pytest.raises(AppError, match=f"Too many images: at most {MAX_BATCH} per batch"):
        client.predict(paths, api_name="/predict")
    assert_serving(client)
    with pytest.raises(AppError, match="No images were given"):
        client.predict([], api_name="/predict")
    assert_serving(client)
    assert len(client.predict(paths[:MAX_BATCH], api_name="/predict")) == MAX_BATCH


def test_a_file_over_the_upload_limit_is_refused_and_the_app_keeps_serving(app, client, tmp_path):
    """Gradio's transport limit is the archive limit (3 MB here); an image over the per-image limit (1 MB) gets
    through the transport and is refused by the app as an error row."""
    over_image, fine = tmp_path / "over-image.jpg", tmp_path / "fine.jpg"
    over_image.write_bytes(os.urandom(2 * 1024 * 1024))
    make_image("rectangle", (90, 40, 60), seed=3).save(fine)
    rows = client.predict([handle_file(str(fine)), handle_file(str(over_image))], api_name="/predict")
    assert rows[0]["file"] == "fine.jpg" and rows[0]["model_version"] == "v1"
    assert rows[1:] == [{"file": "over-image.jpg",
                         "error": "over-image.jpg: the file is over the per-image limit of 1 MB (MAX_UPLOAD_MB)"}]
    big = tmp_path / "big.jpg"
    big.write_bytes(os.urandom(4 * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 3145728 bytes"):
        client.predict([handle_file(str(big))], api_name="/predict")  # gradio_client checks the app's limit
    response = httpx.post(app.url + "gradio_api/upload", files={"files": ("big.jpg", big.read_bytes(), "image/jpeg")},
                          timeout=60)
    assert response.status_code == 413 and "maximum allowed size of 3145728 bytes" in response.text
    assert_serving(client)
    small = tmp_path / "small.jpg"
    make_image("rectangle", (40, 160, 60), seed=9).save(small)
    assert client.predict([handle_file(str(small))], api_name="/predict")[0]["model_version"] == "v1"


def test_hostile_uploads_write_nothing_outside_the_data_dir(app, client, tmp_path):
    """Traversal and absolute names inside a .zip and in the multipart file name itself."""
    outside = app.root / "outside"
    outside.mkdir(exist_ok=True)
    archive = write_hostile_zip(tmp_path / "hostile.zip", outside)
    good = tmp_path / "fine.jpg"
    make_image("stripes", (50, 70, 200), seed=5).save(good)
    allowed = (app.data_dir, app.workdir / "gradio-tmp", app.log_file)
    before = tree_snapshot(app.root, tmp_path, skip=allowed)
    rows = client.predict([handle_file(str(archive))], api_name="/predict")
    errors = {row["file"]: row["error"] for row in rows if "error" in row}
    assert sorted(row["file"] for row in rows if "error" not in row) == ["absolute.jpg", "escaped.jpg", "fine.jpg"]
    assert errors == {"inner.zip": "inner.zip: archives inside archives are not opened",
                      "readme.txt": "readme.txt: not an image file", "huge.jpg": "huge.jpg: too large once unpacked"}
    for name in ("../../escaped_upload.jpg", str(outside / "absolute_upload.jpg"), "..\\..\\win.jpg"):
        response = httpx.post(app.url + "gradio_api/upload", files={"files": (name, good.read_bytes(), "image/jpeg")},
                              timeout=60)
        assert response.status_code == 200
        stored = Path(response.json()[0]).resolve()
        assert (app.workdir / "gradio-tmp").resolve() in stored.parents
    assert tree_snapshot(app.root, tmp_path, skip=allowed) == before
    assert not list(outside.iterdir()) and not (app.root.parent / "escaped_upload.jpg").exists()
    assert_serving(client)


@pytest.fixture(scope="module")
def shas(client, tmp_path_factory):
    """Three fresh images recorded by /predict, ready to be labelled."""
    folder = tmp_path_factory.mktemp("to-label")
    paths = []
    for i in range(3):
        make_image("ellipse", (220, 60, 40), seed=700 + i).save(folder / f"{i}.jpg")
        paths.append(handle_file(str(folder / f"{i}.jpg")))
    return [row["sha256"] for row in client.predict(paths, api_name="/predict")]


@pytest.mark.parametrize("label, fragment", [
    ("", "A label must not be empty"), (" \t ", "A label must not be empty"),
    ("y" * 10_000, "is 10000 characters long; the limit is 64"), ("../../etc", "must not contain '/'"),
    ("/", "must not contain '/'"), ("a\x00b", "contains control characters"),
    ("\x1b[31mred", "contains control characters"),
])
def test_bad_labels_through_the_api_say_why_and_are_skipped(client, shas, label, fragment):
    before = client.predict(api_name="/status")["labelled_images"]
    result = client.predict([{"sha256": shas[0], "label": "squares"}, {"sha256": shas[1], "label": label}],
                            api_name="/save_labels")
    (bad,) = result["rejected"]  # the bad item is skipped with its reason; the good one is saved
    assert bad["sha256"] == shas[1] and fragment in bad["error"] and len(bad["error"]) < 300
    assert result["saved"] in (0, 1)  # 0 when an earlier case already saved 'squares' for shas[0]
    assert client.predict(api_name="/status")["labelled_images"] == max(before, 1)  # shas[0] is labelled now
    with pytest.raises(AppError) as err:  # only bad items: nothing saved, and the message says why
        client.predict([{"sha256": shas[1], "label": label}], api_name="/save_labels")
    assert fragment in str(err.value) and "Nothing saved" in str(err.value)
    assert_serving(client)


def test_unicode_and_case_variant_labels_through_the_api(client, shas):
    result = client.predict([{"sha256": shas[0], "label": "forêt"}, {"sha256": shas[1], "label": "山"},
                             {"sha256": shas[2], "label": "Stripes"}], api_name="/save_labels")
    assert result == {"saved": 3, "new_classes": ["forêt", "山"], "rejected": []}
    assert client.predict(api_name="/status")["labelled_images"] == 3
    again = client.predict([{"sha256": shas[0], "label": "FORÊT"}], api_name="/save_labels")
    assert again == {"saved": 0, "new_classes": [], "rejected": []}  # mapped onto 'forêt', which it already is


def test_malformed_label_payloads_are_refused(client):
    for payload, fragment in (("junk", "must be a list"), (5, "must be a list"), ([], "No labels to save"),
                              ([{"sha256": "../../etc/passwd", "label": "x"}], "sha256 must be 64 lowercase hex")):
        with pytest.raises(AppError, match=fragment):
            client.predict(payload, api_name="/save_labels")
    assert_serving(client)


@pytest.mark.parametrize("params, fragment", [
    ({"epochs": -1}, "epochs must be between 1 and 1000, got -1"),
    ({"epochs": 0}, "epochs must be between 1 and 1000, got 0"),
    ({"lr": "nan"}, "lr must be a finite number, got nan"),
    ({"lr": "-inf"}, "lr must be a finite number, got -inf"),
    ({"batch_size": "lots"}, "batch_size must be a number, got 'lots'"),
    ({"epochs": 10**9}, "epochs must be between 1 and 1000, got 1000000000"),
    ({"batch_size": 10**7}, "batch_size must be between 1 and 4096, got 10000000"),
    ({"mode": "scratch", "filter_size": 97}, "filter_size 97 px is larger than the 64 px input"),
    ({"mode": "scratch", "depth": 6}, "depth 6 is too deep for a 64 px input"),
    ({"mode": "../../etc"}, "mode must be one of head, finetune, scratch"),
])
def test_bad_training_parameters_through_the_api_say_why(client, params, fragment):
    with pytest.raises(AppError) as err:
        client.predict(**params, api_name="/retrain")
    assert fragment in str(err.value)
    assert [m["version"] for m in client.predict(api_name="/models")] == ["v1"]
    assert_serving(client)


def test_activating_a_bogus_version_is_refused(client):
    for version, fragment in (("v99", "There is no model version v99"), ("../../etc", "is not a version name"),
                              ("", "is not a version name")):
        with pytest.raises(AppError, match=fragment):
            client.predict(version, api_name="/activate")
    assert_serving(client)
