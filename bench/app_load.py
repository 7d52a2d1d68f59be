"""Figures 5 and 6: the launched app (``python app.py``) through ``gradio_client``.

Contract used: ``/predict`` takes a list of image files and returns one row per image; ``/status``
takes nothing. The app runs in its own process on a free local port with its own ``DATA_DIR``
(backbone prepared, one head version active); its peak resident memory is read from
``/proc/<pid>/status`` (VmHWM).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import spaces
from bench.data import image_files
from bench.measure import CpuWatch, Timing, repeat
from bench.report import Figure

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
APP = REPO / "app.py"
START_TIMEOUT_S = 180
RSS_TARGET_MB, COLD_START_TARGET_S = 1.5 * 1024, 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppProcess:
    """``python app.py`` on a free port with the given ``DATA_DIR``; stopped (its whole process group) on exit."""

    def __init__(self, settings, log_path: Path, dataset: Path | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ, DATA_DIR=str(settings.data_dir), BACKBONE=str(settings.backbone or ""),
                   GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        for name in ("DATASET", "MONGODB_URI", "APP_USERS", "SPACE_ID", "HUB_MODEL_ID"):
            env.pop(name, None)
        if dataset is not None:
            env["DATASET"] = str(dataset)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(APP), "--port", str(self.port), "--host", "127.0.0.1"],
                                     cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_status(self) -> float:
        """Seconds from launch until ``/status`` answers through gradio_client."""
        from gradio_client import Client
        deadline = self.started + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with status {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                Client(self.url, verbose=False, analytics_enabled=False).predict(api_name="/status")
                return time.perf_counter() - self.started
            except Exception:  # not listening yet, or the app still starting: poll again
                time.sleep(0.05)
        raise RuntimeError(f"app.py did not answer /status within {START_TIMEOUT_S} s: {self.log_tail()}")

    def wait_model_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds until ``/status`` reports the active version loaded and its graph no longer being compiled (the
        app compiles it in the background once loaded, and serves it eagerly meanwhile): later figures time the
        app as it runs from then on. ``/status`` itself loads the version."""
        from gradio_client import Client
        client, start = Client(self.url, verbose=False, analytics_enabled=False), time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            runtime = client.predict(api_name="/status").get("model_runtime") or {}
            if runtime and not runtime.get("compiling"):
                return time.perf_counter() - start
            time.sleep(0.25)
        raise RuntimeError(f"the app's model was not ready within {timeout_s:.0f} s: {self.log_tail()}")

    def wait_quiet(self, client, timeout_s: float = 120.0) -> float:
        """Seconds until ``/status`` reports nothing running: no training run, no upload batch still being
        recorded (the app writes a batch's images and records after answering it) and no uploaded image still
        being embedded ahead of its prediction. Idle figures start here."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            status = client.predict(api_name="/status")
            if not (status.get("training") or status.get("uploads_recording") or status.get("uploads_embedding")):
                return time.perf_counter() - start
            time.sleep(0.25)
        raise RuntimeError(f"the app was still busy after {timeout_s:.0f} s: {self.log_tail()}")

    def peak_rss_mb(self) -> dict:
        """VmHWM (peak resident set) of the app process and of each child process (e.g. an embedded database)."""
        out = {"app": _vm_hwm_mb(self.proc.pid)}
        for child in _children(self.proc.pid):
            out[f"child {child}"] = _vm_hwm_mb(child)
        return out

    def log_tail(self, chars: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].replace("\n", " | ")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "AppProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _unavailable(name: str, title: str, why: str) -> dict:
    return {"name": name, "title": title, "error": f"app not available: {why}",
            "figures": [Figure("app not available", "s", None, note=why)]}


def _prepared_app_dir(bench, section: str):
    settings = bench.settings(section)
    version = bench.head_version(settings)
    return settings, version


def _predict(client, files: list[Path]) -> float:
    from gradio_client import handle_file
    start = time.perf_counter()
    rows = client.predict([handle_file(str(f)) for f in files], api_name="/predict")
    seconds = time.perf_counter() - start
    bad = [r for r in rows if r.get("error") or not r.get("label")]
    if len(rows) != len(files) or bad:
        raise RuntimeError(f"/predict answered {len(rows)} rows for {len(files)} images; {len(bad)} without a label")
    return seconds


class ClientProcesses:
    """``count`` client processes, each holding its own connected ``gradio_client.Client`` (as separate users
    have): one round sends one batch per process at the same moment. Threads of one process, as this benchmark
    used before, shared the client's GIL: a bare Gradio app that only receives files then reached 0.80× its
    single-client throughput with 4 clients, and 1.61× with 4 client processes."""

    def __init__(self, url: str, count: int):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")  # no fork of this process's threads
        self._tasks = [ctx.Queue() for _ in range(count)]
        self._results = ctx.Queue()
        self._procs = [ctx.Process(target=_client_process, args=(url, q, self._results), daemon=True)
                       for q in self._tasks]
        for proc in self._procs:
            proc.start()
        for _ in self._procs:  # each connected
            self._result(120)

    def _result(self, timeout_s: float):
        index, value = self._results.get(timeout=timeout_s)
        if isinstance(value, str):
            raise RuntimeError(f"client process {index}: {value}")
        return index, value

    def round(self, batches: list[list[Path]]) -> tuple[list[float], float]:
        """(latency per request, wall time of the round)."""
        start = time.perf_counter()
        for i, (queue, files) in enumerate(zip(self._tasks, batches)):
            queue.put((i, [str(f) for f in files]))
        latencies = [None] * len(batches)
        for _ in batches:
            index, seconds = self._result(600)
            latencies[index] = seconds
        return latencies, time.perf_counter() - start

    def close(self) -> None:
        for queue in self._tasks:
            queue.put(None)
        for proc in self._procs:
            proc.join(timeout=20)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> "ClientProcesses":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _client_process(url: str, tasks, results) -> None:
    """One user: a connected client that sends each batch it is given and reports the client-side seconds."""
    from gradio_client import Client
    index = None
    try:
        client = Client(url, verbose=False, analytics_enabled=False)
        results.put((None, 0.0))
        while (task := tasks.get()) is not None:
            index, files = task
            results.put((index, _predict(client, [Path(f) for f in files])))
    except Exception as exc:  # reported by the parent
        results.put((index, f"{type(exc).__name__}: {exc}"))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_load(bench) -> dict:
    """Figure 5: 1 and 4 concurrent clients, each sending a batch of distinct, never-seen images."""
    title = "App under load"
    if not APP.is_file():
        return _unavailable("app", title, "app.py is not in the repository yet")
    from gradio_client import Client
    settings, version = _prepared_app_dir(bench, "app")
    sizes = bench.sizes
    pool, n, rounds = image_files(bench.slices().load_pool), sizes.load_batch, sizes.load_rounds
    all_batches = [pool[i:i + n] for i in range(0, len(pool) - n + 1, n)]
    batches = iter(all_batches)  # every request: images never seen
    with AppProcess(settings, bench.run_dir / "app.log") as app:
        start_s = app.wait_status()
        ready_s = app.wait_model_ready()
        bench.shared["app_launched"] = True
        client = Client(app.url, verbose=False, analytics_enabled=False)
        _predict(client, next(batches))  # warm-up
        with CpuWatch((app.proc.pid,)) as watch:
            single = [_predict(client, next(batches)) for _ in range(sizes.load_single)]
            rss_single = app.peak_rss_mb()
            multi, walls = [], []
            with ClientProcesses(app.url, 4) as users:
                for _ in range(rounds):
                    latencies, wall = users.round([next(batches) for _ in range(4)])
                    multi += latencies
                    walls.append(wall)
            zips = [spaces.as_zip(next(batches), bench.fresh_dir("zip")) for _ in range(sizes.load_zip)]
            zipped = [spaces.send(client, [z], n) for z in zips]
            rss_all = app.peak_rss_mb()
            phones = _phone_requests(bench, client)
            phones["rss_mb"] = app.peak_rss_mb()
    stock = _baseline_apps(bench, version.path, all_batches[1:1 + sizes.load_single], zips, phones["files"])
    split = _in_process_split(bench, all_batches[1:1 + sizes.load_single])
    p50_1, p50_4, p95_4 = statistics.median(single), statistics.median(multi), _pct(multi, 0.95)
    thr_1, thr_4 = n / p50_1, 4 * n / statistics.median(walls)
    peak, peak_all = rss_single["app"] or 0.0, rss_all["app"] or 0.0
    children = {k: v for k, v in rss_all.items() if k != "app"}
    batch = bench.shared.get("batch", {})
    cold_in_process = batch.get("cold_s") if batch.get("n") == n else None
    zip_p50, typical_p50 = statistics.median(zipped), statistics.median(stock["typical_files_s"])
    bare_files, bare_zip = statistics.median(stock["bare_files_s"]), statistics.median(stock["bare_zip_s"])
    zip_ok = zip_p50 <= 1.5 and typical_p50 / zip_p50 >= 5
    figures = [
        Figure(f"{n} new images as one .zip: p50 latency", "s", zip_p50, typical_p50,
               "typical Space, the same images as files", target="≤ 1.5 s and ≥ 5× faster than the typical Space",
               met=zip_ok if n == 128 else None, distance=f"{typical_p50 / zip_p50:.2f}× faster",
               note=f"a bare Gradio app receives the same .zip in {bare_zip:.2f} s (p50)"),
        Figure(f"{n} new images as {n} files vs a bare app receiving them", "s", p50_1, bare_files,
               "bare Gradio app (receives only)", target="≤ 1 s more than the bare app",
               met=p50_1 - bare_files <= 1 if n == 128 else None, distance=f"{p50_1 - bare_files:+.2f} s",
               note="the same images, the same client"),
    ] + _phone_figures(phones, stock) + [
        Figure(f"1 client, {n} images: p50 latency", "s", p50_1, cold_in_process, "in-process predict_batch (fig. 1)",
               note=f"p95 {_pct(single, 0.95):.2f} s over {len(single)} requests; includes upload, expanding the upload, store records"),
        Figure(f"4 concurrent clients, {n} images each: p50 latency", "s", p50_4, p50_1, "1 client",
               note=f"{len(multi)} requests"),
        Figure("4 concurrent clients: p95 latency", "s", p95_4, p50_1, "1 client p50", target="≤ 4× the 1-client p50",
               met=p95_4 <= 4 * p50_1 if n == 128 else None, distance=f"{p95_4 / p50_1:.2f}×"),
        Figure("throughput", "images/s", thr_4, thr_1, "1 client", higher_is_better=True,
               target="≥ 1 client's", met=thr_4 >= thr_1 if n == 128 else None, distance=f"{thr_4 / thr_1:.2f}×",
               note="4 clients (4 processes): 4 × batch ÷ median round wall time"),
        Figure(f"peak RSS of the app process, one {n}-image batch at a time", "MB", peak, None,
               target=f"≤ {RSS_TARGET_MB:.0f} MB (1.5 GB) with 128-image batches",
               met=peak <= RSS_TARGET_MB if n == 128 else None,
               distance=f"{peak / RSS_TARGET_MB:.0%} of the limit" + ("" if n == 128 else f" ({n}-image batches: not judged)"),
               note="VmHWM after the warm-up and single-client requests"),
        Figure("peak RSS of the app process after the 4-client rounds", "MB", peak_all, peak, "one batch at a time",
               target=f"≤ {RSS_TARGET_MB:.0f} MB (same limit, concurrent batches)",
               met=peak_all <= RSS_TARGET_MB if n == 128 else None,
               distance=f"{peak_all / RSS_TARGET_MB:.0%} of the limit",
               note=f"child processes: {children or 'none'} (the embedded database runs inside the app process)"),
    ]
    return {"name": "app", "title": title,
            "method": (f"`python app.py` with its own DATA_DIR (prepared backbone, head version {version.version} "
                       f"active, embedded store); clients are `gradio_client.Client`s calling `/predict` with {n} "
                       "JPEG files each; every request carries images the app has never seen (no cache hits before its "
                       "upload; the app embeds uploaded images while the rest of a batch is still arriving, "
                       "`PREFETCH_UPLOADS`, on by default). One "
                       f"warm-up request, then single-client requests (×{sizes.load_single}), then rounds of 4 clients at "
                       f"once, each its own process as separate users are (×{rounds}), then {sizes.load_zip} requests of {n} new images packed as one stored .zip. Baselines, "
                       "driven by the same client on the same images: a \"typical Space\" (a minimal Gradio app calling "
                       "`pipeline()` image by image, which can only take files) and a bare Gradio app that only "
                       "receives the files (or the .zip) and counts them. Latency is measured by the client, upload "
                       f"included. Last, {sizes.phones} new 12-MP phone photos (4032×3024 JPEG) as files, and "
                       f"{sizes.phones} others as one .zip. The app answered `/status` "
                       f"{start_s:.1f} s after launch; its version's graph was ready (compiled in the background, "
                       f"where the app compiles it) {ready_s:.1f} s later, before the first request."),
            "figures": figures,
            "tables": [{"title": f"Where a single client's {n}-image request spends its time (medians, same images)",
                        "columns": ["part", "seconds", "share of the request"],
                        "rows": _split_rows(split, p50_1, bare_files)}],
            "details": {"zip_s": zipped, "phones": {k: v for k, v in phones.items() if k != "files"},
                        "baseline_apps": stock, "in_process_split": split, "single_s": single, "concurrent_s": multi, "round_wall_s": walls, "rss_mb_single": rss_single,
                        "rss_mb_all": rss_all, "app_start_s": start_s,
                        "model_ready_s": ready_s},
            "other_processes_cores": watch.other_cores}


def _phone_requests(bench, client) -> dict:
    """One request of new 12-MP photos as files, and one of other new photos as one .zip (client-side s)."""
    k, phone_dir = bench.sizes.phones, bench.work / "data" / "phones"
    as_files, zipped = spaces.phone_photos(phone_dir, k, seed=1), spaces.phone_photos(phone_dir, k, seed=2)
    archive = spaces.as_zip(zipped, bench.fresh_dir("phone-zip"))
    out = {"files": as_files, "count": k, "megabytes": round(sum(p.stat().st_size for p in as_files) / 2**20, 1),
           "files_s": spaces.send(client, as_files, k), "zip_s": spaces.send(client, [archive], k)}
    archive.unlink()
    return out


def _phone_figures(phones: dict, stock: dict) -> list[Figure]:
    k, bare, rss = phones["count"], stock["bare_phones_s"], phones["rss_mb"]["app"] or 0.0
    judged = k == 128
    return [
        Figure(f"{k} phone photos (12 MP, {phones['megabytes']:.0f} MB) as {k} files", "s", phones["files_s"], bare,
               "bare Gradio app (receives only)", target="≤ 2× the bare app", met=phones["files_s"] <= 2 * bare if judged else None,
               distance=f"{phones['files_s'] / bare:.2f}× the bare app"),
        Figure(f"{k} other phone photos as one .zip", "s", phones["zip_s"], None, target="accepted and ≤ 8 s",
               met=phones["zip_s"] <= 8 if judged else None, note="refused before: the .zip was over the per-file limit"),
        Figure("peak RSS of the app process after the phone photos", "MB", rss, None,
               target=f"≤ {RSS_TARGET_MB:.0f} MB (1.5 GB)", met=rss <= RSS_TARGET_MB if judged else None,
               distance=f"{rss / RSS_TARGET_MB:.0%} of the limit", note="VmHWM over the whole run of the app"),
    ]


def _baseline_apps(bench, version_path: Path, batches: list[list[Path]], zips: list[Path], phones: list[Path]) -> dict:
    """Client-side seconds of the typical Space (files) and the bare app (files and .zip) on the same images."""
    out = {}
    for kind in ("typical", "bare"):
        with spaces.BaselineApp(kind, version_path, _free_port(), bench.run_dir / f"{kind}.log") as app:
            client = app.client()
            spaces.send(client, batches[0][:8], 8)  # warm-up
            out[f"{kind}_files_s"] = [spaces.send(client, files, len(files)) for files in batches]
            if kind == "bare":
                out["bare_zip_s"] = [spaces.send(client, [z], 1) for z in zips]
                out["bare_phones_s"] = spaces.send(client, phones, len(phones))
    return out


def _in_process_split(bench, batches: list[list[Path]]) -> dict:
    """The app's /predict work without the server: ``predict_batch`` alone, then ``Engine.predict`` (uploads
    expanded, predictions, human-label lookup; a second predictor, so its cache has not seen them either) in this
    process on a fresh DATA_DIR, on the same never-seen batches, with the recorder's store writes drained (and
    timed: ``recorder_drain_after_s``, median) after each so that neither timing shares the cores with them."""
    from classifier.predict import Predictor
    from engine import Engine
    settings, version = _prepared_app_dir(bench, "app-in-process")
    engine = Engine(settings)
    try:
        engine.start()
        predictor = Predictor.load(version.path, version.version, None, settings.max_image_pixels)
        predictor.fm.warm(wait=True)  # compiled, as the app has it
        engine.predict(batches[0][:8])
        predictor.predict_batch(batches[0][:8])
        engine_s, batch_s, drain = [], [], []
        for files in batches:  # each timed alone: the recorder's writes are drained (and timed) in between
            start = time.perf_counter()
            predictor.predict_batch(files)
            batch_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            engine.predict(files)
            engine_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            engine.recorder.wait()
            drain.append(time.perf_counter() - start)
        drain_s = statistics.median(drain)
    finally:
        engine.close()
    return {"recorder_drain_after_s": drain_s, "engine_predict_s": statistics.median(engine_s), "predict_batch_s": statistics.median(batch_s),
            "runs": {"engine_predict_s": engine_s, "predict_batch_s": batch_s}}


def _split_rows(split: dict, request_s: float, bare_s: float) -> list[list]:
    """The request beside a bare app receiving the same files, and the app's own work timed cold in process (in
    the app, uploaded images are embedded while the rest of the batch arrives: ``engine/prefetch.py``)."""
    batch, engine = split["predict_batch_s"], split["engine_predict_s"]
    parts = [("Gradio receiving the files (a bare app, the same files, p50)", bare_s),
             ("the request beyond that (what the app adds)", request_s - bare_s),
             ("decode + embed + classify, cold, in process (`predict_batch`; in the app, most of it runs while the "
              "files are still arriving)", batch),
             ("expanding uploads, human-label lookup (rest of `Engine.predict`, in process; the store write runs "
              "after it)", engine - batch)]
    return [[name, f"{sec:.2f}", f"{sec / request_s:.0%}"] for name, sec in parts] + \
        [["whole request (client-side p50)", f"{request_s:.2f}", "100%"],
         ["recording the images and the batch in the store (after the answer, off the request path)",
          f"{split['recorder_drain_after_s']:.2f}", "—"]]


def _baseline_start(version_path: Path) -> float:
    """Seconds for a fresh Python process to import transformers and load the version with pipeline()."""
    code = ("from transformers import pipeline; "
            f"pipeline('image-classification', model={str(version_path)!r}, device='cpu')")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_cold_start(bench) -> dict:
    """Figure 6: launch to the first answered ``/status``, with the backbone and a version already prepared."""
    title = "Cold start"
    if not APP.is_file():
        return _unavailable("cold_start", title, "app.py is not in the repository yet")
    settings, version = _prepared_app_dir(bench, "cold_start")

    def start_once(_):
        with AppProcess(settings, bench.run_dir / "cold-start.log") as app:
            return app.wait_status()
    starts: list[float] = []
    warmup = 0 if bench.shared.get("app_launched") else 1  # figure 5's launch already warmed the file cache
    timing: Timing = repeat(lambda _: starts.append(start_once(None)), bench.sizes.cold_starts, warmup=warmup)
    timing.seconds = starts[warmup:]  # the app's own launch→/status time, without process teardown
    base = repeat(lambda _: _baseline_start(version.path), bench.sizes.cold_starts, warmup=0)
    median = timing.median
    return {"name": "cold_start", "title": title,
            "method": ("`python app.py` launched as a new process with a DATA_DIR whose backbone is prepared and whose "
                       f"head version ({version.version}) is active; timed until `gradio_client` gets an answer from "
                       f"`/status` (polled every 50 ms). The operating system's file cache is warm (an earlier launch "
                       f"in this run), {bench.sizes.cold_starts} timed launches. Baseline: a fresh Python process that imports transformers and "
                       "loads the same version with `pipeline()` (no server)."),
            "figures": [Figure("launch → /status answered", "s", median, base.median, "python -c pipeline(version)",
                               target=f"≤ {COLD_START_TARGET_S:g} s", met=median <= COLD_START_TARGET_S,
                               distance=(f"{COLD_START_TARGET_S - median:.1f} s to spare" if median <= COLD_START_TARGET_S
                                         else f"{median - COLD_START_TARGET_S:.1f} s over"))],
            "details": {"app_s": starts, "baseline": base.to_dict()},
            "other_processes_cores": timing.other_cores}
