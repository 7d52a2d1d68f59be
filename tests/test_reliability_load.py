"""Issue 'Reliability and security', load: 8 gradio_client users each predict 128 distinct images while a
retrain runs in the same app. No error, each response from one model version, the retrain finishes; the app's
peak resident memory (VmHWM) is printed and written to test-artifacts/load.json."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import handle_file

from conftest import IsolatedApp, data_dir_with_backbone, make_image

pytestmark = pytest.mark.slow
USERS, IMAGES_PER_USER = 8, 128


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set size) of a process, in MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_eight_users_predicting_while_a_retrain_runs(tmp_path, backbone_dir, dataset_dir, artifacts_dir):
    batches = []
    for user in range(USERS):  # 1024 distinct small JPEGs: no embedding is shared between users
        folder = tmp_path / f"user{user}"
        folder.mkdir()
        kinds = (("ellipse", (220, 60, 40)), ("rectangle", (40, 160, 60)), ("stripes", (50, 70, 200)))
        for i in range(IMAGES_PER_USER):
            kind, color = kinds[i % 3]
            make_image(kind, color, seed=100_000 + user * 1000 + i, size=48).save(folder / f"{i:03d}.jpg", quality=85)
        batches.append(sorted(folder.iterdir()))

    app = IsolatedApp(data_dir_with_backbone(tmp_path, backbone_dir), tmp_path / "cwd", {"DATASET": str(dataset_dir)})
    try:
        client = app.start().client()
        assert client.predict(mode="head", epochs=20, api_name="/retrain")["version"] == "v1"
        started = time.monotonic()
        # a long head run (1000 epochs of batches of 4) so that it overlaps the predictions
        retrain = client.submit(mode="head", epochs=1000, batch_size=4, api_name="/retrain")
        deadline = time.monotonic() + 120
        while not client.predict(api_name="/status")["training"] and time.monotonic() < deadline:
            time.sleep(0.1)
        seen_training = threading.Event()

        def user(paths):
            own = app.client()
            if own.predict(api_name="/status")["training"]:
                seen_training.set()
            return own.predict([handle_file(str(p)) for p in paths], api_name="/predict")

        with ThreadPoolExecutor(USERS) as pool:
            responses = list(pool.map(user, batches))
        predicted_s = time.monotonic() - started
        trained = retrain.result(timeout=300)
        total_s = time.monotonic() - started

        assert seen_training.is_set(), "the retrain was not running while the users predicted"
        assert trained["version"] == "v2"
        versions = []
        for paths, rows in zip(batches, responses):
            assert [row["file"] for row in rows] == [p.name for p in paths]
            assert all("error" not in row and row["label"] in ("circles", "squares", "stripes") for row in rows)
            per_response = {row["model_version"] for row in rows}
            assert len(per_response) == 1, f"one response mixed versions {per_response}"
            versions.append(per_response.pop())
        assert set(versions) <= {"v1", "v2"}
        status = client.predict(api_name="/status")
        assert status["active_version"] == "v2" and status["training"] is False
        peak = peak_rss_mib(app.pid)
    finally:
        app.kill()

    figures = {"users": USERS, "images_per_user": IMAGES_PER_USER, "peak_rss_mib": round(peak, 1),
               "responses_by_version": {v: versions.count(v) for v in sorted(set(versions))},
               "predictions_wall_s": round(predicted_s, 1), "with_retrain_wall_s": round(total_s, 1),
               "retrained_version": trained["version"]}
    (artifacts_dir / "load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nload: {json.dumps(figures)}")
