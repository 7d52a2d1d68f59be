"""Uploads are recorded after the prediction answers (labeling/recorder.py), and nothing is lost: a label saved
right away finds its image, and closing the engine writes every queued batch."""
from __future__ import annotations

from conftest import make_image
from engine import Engine


def _images(folder, count: int, seed: int):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.jpg"
        make_image("stripes", (30 + 20 * i, 90, 160), seed=seed + i).save(path)
        paths.append(path)
    return paths


def test_a_label_saved_right_after_predict_finds_its_image_and_close_writes_every_batch(settings, tmp_path):
    engine = Engine(settings)
    try:
        first = engine.predict(_images(tmp_path / "a", 6, seed=700))
        sha = first["results"][0]["sha256"]
        assert first["batch_id"] and first["store_error"] is None
        assert engine.set_label(sha, "stripes")["status"] == "saved"  # waits for the image to be stored
        second = engine.predict(_images(tmp_path / "b", 5, seed=800))
    finally:
        engine.close()  # drains the recorder before the store closes
    reopened = Engine(settings)
    try:
        store = reopened.store()
        shas = [r["sha256"] for r in first["results"] + second["results"]]
        assert store.known_images(shas) == set(shas)
        assert [r["sha256"] for r in store.batch_predictions(second["batch_id"])] == \
            [r["sha256"] for r in second["results"]]
        assert reopened.label_states([sha])[sha]["label"] == "stripes"
    finally:
        reopened.close()
