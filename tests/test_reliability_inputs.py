"""Issue 'Reliability and security', bad input through the UI handlers and the engine (in process) and the CLIs:
every bad item gets a message that says what is wrong, good items beside it still go through, the engine keeps
answering, and nothing is written outside the data directory."""
from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from app import Handlers
from classifier.registry import LocalRegistry
from conftest import (ROOT, data_dir_with_backbone, make_image, tree_snapshot, write_dataset, write_hostile_files,
                      write_hostile_zip, write_odd_images)
from engine import Engine
from settings import PlatformError, load_settings
from training.config import TrainConfig
from training.data import load_samples
from training.run import train_version
from ui import review

MAX_BATCH = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory, backbone_dir, dataset_dir):
    """An engine (MAX_BATCH=8) with v1 trained, its handlers, and a private working directory as cwd."""
    root = tmp_path_factory.mktemp("inputs")
    data = data_dir_with_backbone(root, backbone_dir)
    workdir = root / "cwd"
    workdir.mkdir()
    engine = Engine(load_settings({"DATA_DIR": str(data), "DATASET": str(dataset_dir), "MAX_BATCH": str(MAX_BATCH)}))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        assert engine.retrain({"mode": "head", "epochs": 30})["version"] == "v1"
        yield {"root": root, "engine": engine, "handlers": Handlers(engine), "files": root / "files"}
    engine.close()


def still_serving(engine: Engine) -> None:
    status = engine.status()
    assert status["active_version"] == "v1" and status["store_error"] is None


def grid_rows(value: str) -> list[dict]:
    """The review grid's rows from its value (JSON text)."""
    return json.loads(value)["rows"]


def save_edits(handlers: Handlers, edits: list[dict]) -> dict[str, dict]:
    """The grid's per-edit save, as its script calls it; results by sha256."""
    save = next(fn for fn in review.server_functions(handlers.engine, handlers.writer, handlers.tokens)
                if fn.__name__ == "save_edits")
    return {r["sha256"]: r for r in save({"edits": edits, "token": None}, None)}


# --- files -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["truncated.jpg", "notes.jpg", "program.jpg", "empty.jpg", "bomb.png"])
def test_a_bad_file_is_skipped_with_its_reason_and_the_good_one_is_predicted(world, name):
    files = write_hostile_files(world["files"] / name.split(".")[0])
    bad, fragment = files[name]
    good, _ = files["good.jpg"]
    value, summary, *_ = world["handlers"].show_predictions([str(good), str(bad)], 0.6)
    assert [r["file"] for r in grid_rows(value)] == ["good.jpg"]
    assert [r["pred"] for r in grid_rows(value)] == ["circles"]
    assert "1 skipped" in summary and f"{name}: " in summary and fragment in summary
    still_serving(world["engine"])


def test_only_bad_files_is_an_error_naming_each_of_them(world):
    files = write_hostile_files(world["files"] / "all-bad")
    bad = [str(path) for name, (path, _) in files.items() if name != "good.jpg"]
    with pytest.raises(PlatformError) as err:
        world["handlers"].api_predict(bad)
    for name, (_, fragment) in files.items():
        if name != "good.jpg":
            assert f"{name}: " in str(err.value) and fragment in str(err.value)
    still_serving(world["engine"])


def test_a_decompression_bomb_is_refused_from_its_header_before_any_pixel_is_decoded(world, tmp_path):
    bomb = tmp_path / "bomb.png"
    from conftest import png_claiming
    bomb.write_bytes(png_claiming(30000, 30000))
    just_over = tmp_path / "just_over.png"
    just_over.write_bytes(png_claiming(8000, 5001))  # 40,008,000 px: over our cap, under Pillow's own guard
    result = world["engine"].predict([bomb, just_over])
    assert result["results"] == []
    messages = {e["file"]: e["error"] for e in result["errors"]}
    assert "over the limit" in messages["bomb.png"]
    assert "8000×5001 pixels is over the limit of 40,000,000 pixels" in messages["just_over.png"]


def test_unusual_but_valid_images_are_all_predicted_and_exif_rotation_is_applied(world):
    odd = write_odd_images(world["files"] / "odd")
    result = world["engine"].predict(list(odd.values()), thumbnails=True)
    assert result["errors"] == []
    assert [r["file"] for r in result["results"]] == list(odd)
    assert {r["model_version"] for r in result["results"]} == {"v1"}
    assert all(0 <= r["confidence"] <= 1 and r["label"] in ("circles", "squares", "stripes") for r in result["results"])
    rotated = next(r for r in result["results"] if r["file"] == "rotated.jpg")
    with Image.open(rotated["thumbnail"]) as thumb:
        width, height = thumb.size
    assert height > width  # stored 64×32 landscape; EXIF says portrait


def test_duplicate_images_in_one_batch_get_the_same_answer(world):
    folder = world["files"] / "dups"
    folder.mkdir(parents=True)
    make_image("ellipse", (220, 60, 40), seed=77).save(folder / "a.jpg", quality=90)
    shutil.copy(folder / "a.jpg", folder / "a_copy.jpg")
    make_image("rectangle", (40, 160, 60), seed=78).save(folder / "b.jpg", quality=90)
    paths = [folder / "a.jpg", folder / "b.jpg", folder / "a_copy.jpg", folder / "a.jpg"]
    result = world["engine"].predict(paths)
    rows = result["results"]
    assert [r["file"] for r in rows] == ["a.jpg", "b.jpg", "a_copy.jpg", "a.jpg"] and result["errors"] == []
    same = [(r["sha256"], r["label"], r["confidence"]) for r in rows if r["file"].startswith("a")]
    assert len(set(same)) == 1
    assert result["batch_id"] is not None


def test_more_than_max_batch_files_or_none_at_all_is_refused_clearly(world):
    folder = world["files"] / "many"
    write_dataset(folder, per_class=3)
    paths = sorted(folder.rglob("*.jpg"))
    assert len(paths) == MAX_BATCH + 1
    with pytest.raises(PlatformError, match=f"Too many images: at most {MAX_BATCH} per batch"):
        world["handlers"].show_predictions([str(p) for p in paths], 0.6)
    for nothing in (None, [], [None]):
        with pytest.raises(PlatformError, match="No images were given"):
            world["handlers"].show_predictions(nothing, 0.6)
    archive = folder / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in paths:
            zf.write(p, f"{p.parent.name}/{p.name}")
    with pytest.raises(PlatformError, match=f"at most {MAX_BATCH} per batch"):
        world["engine"].predict([archive])
    still_serving(world["engine"])


def test_hostile_zip_entries_are_only_names_and_nothing_lands_outside_the_data_dir(world):
    root = world["root"]
    outside = root / "outside"
    outside.mkdir()
    archive = write_hostile_zip(world["files"] / "hostile.zip", outside)
    with zipfile.ZipFile(archive) as zf:  # the archive really holds the unsafe names
        names = zf.namelist()
    assert "../../escaped.jpg" in names and str(outside / "absolute.jpg") in names
    data_dir = world["engine"].settings.data_dir
    before = tree_snapshot(root, Path.cwd(), skip=(data_dir,))
    result = world["engine"].predict([archive])
    after = tree_snapshot(root, Path.cwd(), skip=(data_dir,))
    assert after == before
    assert not (outside / "absolute.jpg").exists() and not (root.parent / "escaped.jpg").exists()
    assert sorted(r["file"] for r in result["results"]) == ["absolute.jpg", "escaped.jpg", "fine.jpg"]
    errors = {e["file"]: e["error"] for e in result["errors"]}
    assert errors == {"inner.zip": "inner.zip: archives inside archives are not opened",
                      "readme.txt": "readme.txt: not an image file",
                      "huge.jpg": "huge.jpg: too large once unpacked"}


def test_a_zip_entry_whose_header_lies_about_its_size_is_refused_alone(world):
    """A bomb that claims 1000 bytes but inflates to 60 MB: read no further than the claim, then refused."""
    archive = world["files"] / "liar.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    make_image("stripes", (50, 70, 200), seed=91).save(buf, format="JPEG")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("liar.jpg", b"\0" * (60 * 1024 * 1024))
        zf.writestr("honest.jpg", buf.getvalue())
    raw = bytearray(archive.read_bytes())
    raw[22:26] = struct.pack("<I", 1000)  # local header: uncompressed size
    central = raw.find(b"PK\x01\x02")
    raw[central + 24:central + 28] = struct.pack("<I", 1000)  # central directory: uncompressed size
    archive.write_bytes(bytes(raw))
    result = world["engine"].predict([archive])
    assert [r["file"] for r in result["results"]] == ["honest.jpg"]
    assert result["errors"] == [{"file": "liar.jpg", "error": "liar.jpg: damaged or unsupported entry in the archive"}]


def test_a_corrupt_entry_in_a_training_zip_is_skipped_and_counted(world, tmp_path):
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for label in ("circles", "squares"):
            for i in range(3):
                buf = io.BytesIO()
                make_image("ellipse" if label == "circles" else "rectangle", (120, 90, 60), seed=i).save(buf, "JPEG")
                zf.writestr(f"{label}/{i}.jpg", buf.getvalue())
    raw = bytearray(archive.read_bytes())
    for i in range(80, 160):  # scramble the first entry's compressed stream
        raw[i] ^= 0x5A
    archive.write_bytes(bytes(raw))
    loaded = load_samples(archive)
    assert len(loaded.samples) == 5
    assert loaded.skipped == {"damaged or unsupported archive entry": 1}


# --- labels ----------------------------------------------------------------------------------------------------

_BATCHES = itertools.count()


@pytest.fixture
def predicted_batch(world):
    """A predicted batch of three images never seen before (so no test sees another's labels)."""
    number = next(_BATCHES)
    folder = world["files"] / f"labels-{number}"
    folder.mkdir(parents=True)
    paths = []
    for i in range(3):
        make_image("ellipse", (220, 60, 40), seed=30_000 + 10 * number + i).save(folder / f"{i}.jpg")
        paths.append(str(folder / f"{i}.jpg"))
    return grid_rows(world["handlers"].show_predictions(paths, 0.6)[0])


@pytest.mark.parametrize("label, fragment", [
    ("", "must not be empty"), ("   \t ", "must not be empty"),
    ("x" * 10_000, "is 10000 characters long; the limit is 64"),
    ("../../etc", "must not contain '/'"), ("/", "must not contain '/'"), ("..", "must not start with '.'"),
    ("cat\x00dog", "contains control characters ('\\x00')"), ("bell\x07", "contains control characters ('\\x07')"),
    ("left\u202eright", "contains control characters"),
])
def test_a_bad_label_is_an_error_on_its_card_and_the_others_are_saved(world, predicted_batch, label, fragment):
    shas = [r["sha256"] for r in predicted_batch]
    results = save_edits(world["handlers"], [{"sha256": shas[0], "label": label, "revision": 0},
                                             {"sha256": shas[1], "label": "squares", "revision": 0}])
    assert results[shas[0]]["status"] == "error" and fragment in results[shas[0]]["error"]
    assert len(results[shas[0]]["error"]) < 1000  # the 10,000-character label is not echoed whole
    assert results[shas[1]]["status"] == "saved"
    labelled = world["engine"].store().current_labels()
    assert shas[0] not in labelled and labelled[shas[1]] == "squares"  # the rest of the batch is saved
    still_serving(world["engine"])


def test_unicode_labels_work_and_a_case_variant_maps_to_the_existing_class(world, predicted_batch):
    shas = [r["sha256"] for r in predicted_batch]
    results = save_edits(world["handlers"], [{"sha256": s, "label": lab, "revision": 0}
                                             for s, lab in zip(shas, ("forêt", "山", "CIRCLES"))])
    labels = world["engine"].store().current_labels()
    assert [labels[s] for s in shas] == ["forêt", "山", "circles"]
    assert {results[s]["new_class"] for s in shas} == {"forêt", "山", None}
    # a second spelling of a class that now exists
    again = save_edits(world["handlers"], [{"sha256": shas[2], "label": "Forêt", "revision": 1}])[shas[2]]
    assert (again["status"], again["label"]) == ("saved", "forêt")
    assert world["engine"].store().current_labels()[shas[2]] == "forêt"


def test_malformed_label_requests_are_refused_whole(world):
    engine = world["engine"]
    for items, fragment in (("junk", "must be a list"), ([], "No labels to save"), ([["a", "b"]], "must be a list"),
                            ([{"sha256": "abc", "label": "x"}], "sha256 must be 64 lowercase hex digits"),
                            ([{"sha256": "0" * 64, "label": "x"}], "not in the store")):
        with pytest.raises(PlatformError, match=fragment):
            engine.save_labels(items)
    still_serving(engine)


# --- training parameters and training data ------------------------------------------------------------------------

@pytest.mark.parametrize("params, fragment", [
    ({"epochs": -3}, "epochs must be between 1 and 1000, got -3"),
    ({"lr": 0}, "lr must be between 1e-07 and 10, got 0.0"),
    ({"lr": float("nan")}, "lr must be a finite number, got nan"),
    ({"lr": "inf"}, "lr must be a finite number, got inf"),
    ({"batch_size": "many"}, "batch_size must be a number, got 'many'"),
    ({"epochs": True}, "epochs must be a number, got True"),
    ({"epochs": 10**9}, "epochs must be between 1 and 1000, got 1000000000"),
    ({"batch_size": 10**7}, "batch_size must be between 1 and 4096, got 10000000"),
    ({"val_fraction": float("-inf")}, "val_fraction must be a finite number"),
    ({"mode": "scratch", "filter_size": 97}, "filter_size 97 px is larger than the 64 px input"),
    ({"mode": "scratch", "depth": 6}, "depth 6 is too deep for a 64 px input"),
    ({"mode": "turbo"}, "mode must be one of head, finetune, scratch"),
    ({"mode": "head", "steps": 5}, "Unknown training parameter 'steps'"),
])
def test_bad_training_parameters_are_refused_before_a_job_starts(world, params, fragment):
    engine = world["engine"]
    latest = engine.jobs.latest()
    with pytest.raises(PlatformError) as err:
        engine.retrain(params)
    assert fragment in str(err.value)
    assert engine.jobs.latest() is latest  # no job was created
    assert [v.version for v in engine.registry.versions()] == ["v1"]


def test_the_train_handler_reports_bad_parameters_from_the_form(world):
    handlers = world["handlers"]
    with pytest.raises(PlatformError, match="epochs must be between 1 and 1000, got -1"):
        next(handlers.train("head", 0, 0, -1, 0.2, 4, 32, 3, 3, None, None))
    with pytest.raises(PlatformError, match="depth 6 is too deep for a 64 px input"):
        next(handlers.train("scratch", 0, 0, 1, 0.2, 4, 32, 15, 6, None, None))
    with pytest.raises(PlatformError, match="lr must be a finite number, got inf"):
        next(handlers.train("head", float("inf"), 0, 0, 0.2, 4, 32, 3, 3, None, None))
    still_serving(world["engine"])


def test_a_scratch_network_as_deep_as_allowed_trains(settings, dataset_dir):
    """The depth check is not too strict: the deepest network it allows for the input really trains."""
    config = TrainConfig(mode="scratch", depth=5, filter_size=15, filters=4, epochs=1, batch_size=9)
    samples = load_samples(dataset_dir).samples
    result = train_version(samples, config, settings, LocalRegistry(settings.models_dir))
    assert result["version"] == "v1" and result["metrics"]["labels"] == ["circles", "squares", "stripes"]


@pytest.fixture
def corrupt_class_dataset(tmp_path):
    """circles and squares as usual; every 'stripes' file is damaged (distinct bytes, so 5 distinct images)."""
    root = write_dataset(tmp_path / "corrupt-class", per_class=5)
    for i, path in enumerate(sorted((root / "stripes").iterdir())):
        path.write_bytes(path.read_bytes()[:40] + bytes([i]))
    return root


@pytest.mark.parametrize("mode", ["head", "scratch"])
def test_a_class_whose_images_are_all_corrupt_is_left_out_by_name(settings, corrupt_class_dataset, mode):
    registry = LocalRegistry(settings.models_dir)
    config = TrainConfig(mode=mode, epochs=1 if mode == "scratch" else 20, filters=4)
    result = train_version(load_samples(corrupt_class_dataset).samples, config, settings, registry)
    assert result["metrics"]["labels"] == ["circles", "squares"]
    assert registry.get(result["version"]).info["classes"] == ["circles", "squares"]
    assert result["metrics"]["skipped"] == {"undecodable image": 5,
                                            "class 'stripes' left out: none of its images could be read": 5}


def test_when_cleaning_leaves_one_class_the_error_says_what_was_left_out(settings, corrupt_class_dataset):
    shutil.rmtree(corrupt_class_dataset / "squares")
    registry = LocalRegistry(settings.models_dir)
    with pytest.raises(PlatformError) as err:
        train_version(load_samples(corrupt_class_dataset).samples, TrainConfig(mode="head"), settings, registry)
    message = str(err.value)
    assert "found 1 class(es) and 5 usable image(s)" in message
    assert "class 'stripes' left out: none of its images could be read (5)" in message
    assert registry.versions() == [] and list((settings.models_dir / ".staging").iterdir()) == []


# --- the command lines ----------------------------------------------------------------------------------------

def run_cli(module: str, *args: str, data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATASET", "MONGODB_URI", "APP_USERS", "HF_TOKEN")}
    env.update(DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_predict_cli_prints_a_reason_per_bad_file_and_predicts_the_rest(world, tmp_path):
    files = write_hostile_files(tmp_path / "cli")
    before = tree_snapshot(tmp_path)
    result = run_cli("classifier", "predict", str(tmp_path / "cli"), data_dir=world["engine"].settings.data_dir,
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    rows = {Path(row["file"]).name: row for row in map(json.loads, result.stdout.splitlines())}
    assert all(row["file"].startswith(str(tmp_path / "cli")) for row in rows.values())  # paths as given
    assert rows["good.jpg"]["model_version"] == "v1"
    for name, (_, fragment) in files.items():
        if fragment:
            assert fragment in rows[name]["error"]
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("args, fragment", [
    (["--mode", "scratch", "--depth", "6"], "depth 6 is too deep for a 64 px input"),
    (["--lr", "nan"], "lr must be a finite number, got nan"),
])
def test_training_cli_refuses_bad_parameters_in_one_line(settings, dataset_dir, tmp_path, args, fragment):
    result = run_cli("training", "--data", str(dataset_dir), *args, data_dir=settings.data_dir, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.stderr
    assert not (settings.models_dir / "v1").exists()


def test_labeling_cli_refuses_to_export_into_a_non_empty_folder(world, tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = run_cli("labeling", "export", str(target), data_dir=world["engine"].settings.data_dir, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(target)) == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"
