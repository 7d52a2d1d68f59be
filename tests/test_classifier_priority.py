"""Predictions take turns on the cores and training steps aside while one is in flight (classifier/priority.py);
concurrent requests through the engine each get their own rows."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from classifier.priority import PredictionPriority
from conftest import make_image
from engine import Engine


def test_training_waits_while_a_prediction_holds_the_cores_and_predictions_take_turns():
    priority = PredictionPriority()
    inside, release, trained = threading.Event(), threading.Event(), threading.Event()
    running, most = [0], [0]
    lock = threading.Lock()

    def predict():
        with priority.turn():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            inside.set()
            release.wait(30)
            with lock:
                running[0] -= 1

    def training_step():
        priority.yield_to_predictions(max_wait_s=30)
        trained.set()
    with ThreadPoolExecutor(3) as pool:
        first, second = pool.submit(predict), pool.submit(predict)
        assert inside.wait(30)
        step = threading.Thread(target=training_step)
        step.start()
        assert not trained.wait(0.3)  # a prediction is in flight: the step has not run
        assert priority.in_flight() == 2
        release.set()
        first.result(30), second.result(30)
        step.join(30)
    assert trained.is_set() and most[0] == 1 and priority.in_flight() == 0


def test_a_step_runs_at_once_when_nothing_is_predicted():
    assert PredictionPriority().yield_to_predictions(max_wait_s=30) == 0.0


def test_concurrent_requests_each_get_their_own_rows(settings, tmp_path):
    engine = Engine(settings)
    batches = []
    for b in range(4):
        folder = tmp_path / f"client{b}"
        folder.mkdir()
        paths = []
        for i in range(3):
            path = folder / f"c{b}-{i}.jpg"
            make_image("circles", (40 * b + 20, 60 + 30 * i, 90), seed=900 + 10 * b + i).save(path)
            paths.append(path)
        batches.append(paths)
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(engine.predict, batches))
    finally:
        engine.close()
    for paths, answer in zip(batches, answers):
        assert [r["file"] for r in answer["results"]] == [p.name for p in paths]
    assert len({a["batch_id"] for a in answers}) == 4


def test_background_work_also_waits_out_a_quiet_period_after_the_last_prediction():
    """The recorder's pause: not before ``quiet_s`` after the last prediction ended, and never beyond ``max_wait_s``."""
    import time
    from classifier.priority import PredictionPriority
    priority = PredictionPriority()
    assert priority.wait_until_idle(5.0, quiet_s=0.3) == 0.0  # no prediction yet: nothing to wait for
    with priority.turn():
        pass
    ended = time.monotonic()
    priority.wait_until_idle(5.0, quiet_s=0.3)
    assert time.monotonic() - ended >= 0.3
    with priority.turn():
        pass
    assert priority.wait_until_idle(0.05, quiet_s=10.0) < 1.0  # the cap holds


def test_the_app_marks_uploads_being_received_so_background_work_waits():
    """ui.activity.UploadActivity wraps the upload routes (and only them) in the engine's ``receiving()``, and
    hands the paths an upload route answered with (a 200 JSON list) to the engine's ``received()``."""
    import asyncio
    import json
    from types import SimpleNamespace
    from classifier.priority import PredictionPriority
    from ui.activity import UploadActivity
    priority, seen, received, sent = PredictionPriority(), {}, [], []

    async def inner(scope, receive, send):
        seen[scope["path"]] = priority.busy()
        await send({"type": "http.response.start", "status": scope["status"], "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(["/tmp/g/a.jpg", "/tmp/g/b.zip"]).encode()})

    async def client(message):
        sent.append(message["type"])
    middleware = UploadActivity(inner, engine=SimpleNamespace(receiving=priority.receiving, received=received.append))
    for path, status in (("/gradio_api/upload", 200), ("/gradio_api/queue/join", 200), ("/gradio_api/upload", 413)):
        asyncio.run(middleware({"type": "http", "path": path, "status": status}, None, client))
    assert seen == {"/gradio_api/upload": True, "/gradio_api/queue/join": False}
    assert not priority.busy()
    assert received == [["/tmp/g/a.jpg", "/tmp/g/b.zip"]]  # once: the refused upload (413) hands nothing on
    assert sent == ["http.response.start", "http.response.body"] * 3  # every answer still reaches the client


def test_uploaded_images_are_embedded_ahead_of_their_prediction_but_never_during_one(head_version, tmp_path):
    """engine.prefetch.UploadPrefetcher: the images among an upload's saved files (not archives, not files gone
    meanwhile) are embedded into the cache with the live version once no prediction is in flight; the
    prediction that follows reads them from the cache and answers exactly what a cold prediction does."""
    import shutil
    from classifier.live import LiveModel
    from classifier.predict import Predictor
    from classifier.priority import PREDICTIONS
    from classifier.registry import LocalRegistry
    from conftest import make_image
    from engine.prefetch import UploadPrefetcher
    from settings import load_settings
    data = tmp_path / "data"
    shutil.copytree(head_version.data_dir, data)
    settings = load_settings({"DATA_DIR": str(data)})
    live = LiveModel(LocalRegistry(settings.models_dir), settings)
    files = []
    for i, kind in enumerate(["ellipse", "rectangle", "stripes", "ellipse", "rectangle"]):
        files.append(tmp_path / f"upload{i}.jpg")
        make_image(kind, (200, 40 * i, 90), seed=900 + i).save(files[-1], quality=90)
    (tmp_path / "batch.zip").write_bytes(b"PK not really")
    paths = [str(f) for f in files] + [str(tmp_path / "batch.zip"), str(tmp_path / "gone.png")]
    prefetcher = UploadPrefetcher(live, settings.max_upload_mb)
    try:
        with PREDICTIONS.turn():  # a prediction is running: nothing is embedded meanwhile
            assert prefetcher.submit(paths) == 6  # the .zip is left to the prediction
            time.sleep(0.5)
            assert prefetcher.embedded == 0 and prefetcher.pending() > 0
        assert prefetcher.wait(120)
        assert prefetcher.embedded == len(files)
        predictor = live.current()
        warm, _ = predictor.predict_batch([str(f) for f in files])
        assert prefetcher.submit(paths) == 6 and prefetcher.wait(60)
        assert prefetcher.embedded == len(files)  # all cached already: nothing is embedded twice
    finally:
        prefetcher.close()
    cold, _ = Predictor.load(settings.models_dir / "v1", "v1", tmp_path / "cold-cache",
                             settings.max_image_pixels).predict_batch([str(f) for f in files])
    assert [r["label"] for r in warm] == [r["label"] for r in cold]
    assert np.allclose([r["confidence"] for r in warm], [r["confidence"] for r in cold], atol=1e-6)


def test_uploads_arriving_one_by_one_fill_a_fixed_batch_graph_before_it_runs(head_version, tmp_path):
    """Where the live graph runs one fixed batch (torch.compile pads a smaller one to it), files uploaded one
    request each are gathered into one chunk instead of costing a padded batch apiece."""
    import shutil
    from classifier.live import LiveModel
    from classifier.registry import LocalRegistry
    from conftest import make_image
    from engine.prefetch import UploadPrefetcher
    from settings import load_settings
    data = tmp_path / "data"
    shutil.copytree(head_version.data_dir, data)
    settings = load_settings({"DATA_DIR": str(data)})
    live = LiveModel(LocalRegistry(settings.models_dir), settings)
    predictor = live.current()
    predictor.fm.padded_batch = lambda: 16  # as a built torch.compile graph reports it
    chunks = []
    embed = predictor.embedder.embed
    predictor.embedder.embed = lambda images, *a, **k: (chunks.append(len(images)), embed(images, *a, **k))[1]
    prefetcher = UploadPrefetcher(live, settings.max_upload_mb)
    try:
        for i in range(5):  # one upload request per file, as gradio_client sends a batch
            path = tmp_path / f"one{i}.jpg"
            make_image("stripes", (30 * i, 90, 200), seed=950 + i).save(path, quality=90)
            prefetcher.submit([str(path)])
            time.sleep(0.05)
        assert prefetcher.wait(60)
    finally:
        prefetcher.close()
    assert chunks == [5] and prefetcher.embedded == 5
