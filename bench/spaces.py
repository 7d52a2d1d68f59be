"""Baseline apps for figure 5: a "typical Space" and a bare Gradio app, driven by the same ``gradio_client``.

* ``typical``: the minimal Gradio app a model author writes first — ``pipeline("image-classification")`` loaded
  once, ``/predict`` takes a list of files and calls the pipeline image by image (top-3).
* ``bare``: the same ``/predict`` endpoint that only receives the files and answers how many arrived; the cost of
  Gradio's transport alone (upload, queue, JSON), with no work of ours or a model's.

Each runs as its own process (``python -c <script> <version folder> <port>``) so its figures are a server's,
like the app's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

START_TIMEOUT_S = 180

_SCRIPT = '''
import sys
import gradio as gr
kind, model, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "typical":
    from transformers import pipeline
    pipe = pipeline("image-classification", model=model, device="cpu")
    def predict(files):
        return [pipe(f, top_k=3) for f in files or []]
else:
    def predict(files):
        return {"received": len(files or [])}
with gr.Blocks() as demo:
    files = gr.File(file_count="multiple")
    out = gr.JSON()
    gr.Button("Predict").click(predict, files, out, api_name="predict")
demo.launch(server_name="127.0.0.1", server_port=port)
'''


class BaselineApp:
    """A baseline app (``kind`` = "typical" or "bare") on a free port; stopped on exit."""

    def __init__(self, kind: str, model: Path, port: int, log_path: Path):
        self.kind, self.url = kind, f"http://127.0.0.1:{port}/"
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, kind, str(model), str(port)], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def client(self):
        """A connected ``gradio_client.Client`` once the app answers (polled every 0.2 s)."""
        from gradio_client import Client
        deadline = time.perf_counter() + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"baseline app {self.kind!r} exited with status {self.proc.returncode}")
            try:
                return Client(self.url, verbose=False, analytics_enabled=False)
            except Exception:  # not listening yet
                time.sleep(0.2)
        raise RuntimeError(f"baseline app {self.kind!r} did not start within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "BaselineApp":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def phone_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` 12-MP (4032×3024) JPEGs of about 2 MB each, as a phone camera sends them; written once into
    ``folder`` and reused by later runs (each ``seed`` a different set, so the app has seen none of them)."""
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng, out = np.random.default_rng(seed), []
    for i in range(count):
        path = folder / f"phone-{seed}-{i:03d}.jpg"
        texture = rng.integers(0, 256, (378, 504, 3), dtype=np.uint8)  # drawn even when the file exists: same set
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            Image.fromarray(texture).resize((4032, 3024), Image.Resampling.BICUBIC).save(tmp, "JPEG", quality=90)
            tmp.replace(path)
        out.append(path)
    return out


def as_zip(files: list[Path], folder: Path) -> Path:
    """The files stored (not recompressed: JPEGs do not shrink) in one .zip under ``folder``."""
    fd, name = tempfile.mkstemp(suffix=".zip", dir=folder)
    os.close(fd)
    with zipfile.ZipFile(name, "w", zipfile.ZIP_STORED) as archive:
        for f in files:
            archive.write(f, arcname=f.name)
    return Path(name)


def send(client, files: list[Path], expect: int | None = None) -> float:
    """Seconds for one ``/predict`` call with ``files`` (client-side, upload included); checks the answer's size."""
    from gradio_client import handle_file
    start = time.perf_counter()
    answer = client.predict([handle_file(str(f)) for f in files], api_name="/predict")
    seconds = time.perf_counter() - start
    count = answer.get("received") if isinstance(answer, dict) else len(answer)
    if expect is not None and count != expect:
        raise RuntimeError(f"/predict answered for {count} items, {expect} expected")
    return seconds
