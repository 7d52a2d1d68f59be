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


def test_the_recorder_writes_in_chunks_and_pauses_before_each_for_predictions(settings):
    """A prediction arriving while a batch is recorded gets the cores between chunks (``pause``)."""
    import io

    from classifier.images import ImageInput
    from labeling.recorder import CHUNK, UploadRecorder

    images = []
    for i in range(CHUNK * 2 + 3):
        out = io.BytesIO()
        make_image("dots", (10 + 5 * i, 40, 200), seed=900 + i).save(out, format="JPEG")
        images.append(ImageInput.from_bytes(out.getvalue(), f"p{i}.jpg"))
    stored_before_pause = []
    engine = Engine(settings)
    try:
        store = engine.store()
        recorder = UploadRecorder(lambda: store, pause=lambda: stored_before_pause.append(
            len(store.known_images([i.sha256 for i in images]))))
        rows = [{"sha256": i.sha256, "label": "dots", "confidence": 0.9, "top_k": [], "model_version": "v1"}
                for i in images]
        recorder.submit("batch-chunks", images, rows)
        recorder.wait()
        recorder.close()
        assert stored_before_pause == [0, CHUNK, 2 * CHUNK]  # paused before each chunk, not once per batch
        assert store.known_images([i.sha256 for i in images]) == {i.sha256 for i in images}
    finally:
        engine.close()


def test_large_images_are_recorded_in_smaller_chunks():
    """Between two pauses the recorder writes at most CHUNK images and CHUNK_BYTES bytes (16 phone photos took
    1 s of the app's CPU to store), and never skips or reorders one; an image larger than the limit goes alone."""
    from types import SimpleNamespace

    from labeling.recorder import CHUNK, CHUNK_BYTES, _chunks
    small = [SimpleNamespace(size=5_000) for _ in range(CHUNK + 1)]
    phones = [SimpleNamespace(size=3_800_000) for _ in range(5)]
    huge = [SimpleNamespace(size=CHUNK_BYTES + 1)]
    runs = _chunks(small + phones + huge + small[:2])
    assert [x for run in runs for x in run] == small + phones + huge + small[:2]
    assert [len(run) for run in runs] == [CHUNK, 3, 2, 1, 1, 2]
    assert all(sum(x.size for x in run) <= CHUNK_BYTES or len(run) == 1 for run in runs)
