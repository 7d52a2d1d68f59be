"""Section ``live``: the app as a person meets it — idle cost with no tab and with one Chromium tab open,
upload → every card captioned in the browser, and a prediction while a training run is going.

One ``python app.py`` (its own DATA_DIR, head version active, ``DATASET`` = the version's training slice so
that ``/retrain`` has something to train on). Every request carries images this app has never seen (Fashion-
MNIST test images, which no other part of this section sends twice).
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

from bench.app_load import AppProcess, _predict, _prepared_app_dir, _unavailable
from bench.data import image_files
from bench.measure import CpuWatch, process_cpu_seconds
from bench.report import Figure

log = logging.getLogger(__name__)
CHROMIUM = Path("/usr/bin/chromium")
IDLE_TARGET_CORES = 0.02
CAPTION_TARGET_S = 2.0
TRAINING_TARGET_RATIO = 1.5
TRAIN_PARAMS = {"mode": "scratch", "epochs": 200}
"""A run that lasts well past the predictions timed during it (it is cancelled once they are done)."""


def _app_cores(pid: int, seconds: float) -> float:
    """Cores the app process used over ``seconds`` of wall time (0.01 = 1 % of one core)."""
    start, t = process_cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (process_cpu_seconds(pid) - start) / (time.perf_counter() - t)


CAPTION_UPLOADS = 3
"""Browser uploads timed one after another on the same page (each of new images); the figure is their median."""
WATCH_CAPTIONS = """([n, old]) => {
  const done = () => { const cards = [...document.querySelectorAll('#review .rv-card')];
    return cards.length === n && cards.every(c => !old.includes(c.dataset.sha256)
      && (c.querySelector('.rv-pred-label')?.textContent || '').trim()); };
  window.__captioned = new Promise((resolve, reject) => {
    const observer = new MutationObserver(() => { if (!done()) return; observer.disconnect();
      requestAnimationFrame(() => setTimeout(() => resolve(performance.now()), 0)); });  // the frame that shows them
    observer.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
    setTimeout(() => { observer.disconnect(); reject(new Error('cards not captioned within 120 s')); }, 120000); });
  return performance.now(); }"""
"""Installed in the page before the files are handed over; returns the page's clock. The promise resolves with the
page's clock once the grid holds ``n`` cards, none from before, each showing its predicted class: a
MutationObserver, so nothing polls the page (Playwright's 20 ms polling took CPU from the app on the same 2 cores)."""


def _caption_seconds(page, files: list[Path]) -> tuple[float, float]:
    """Hand ``files`` to the upload button; seconds until every card is captioned, by the page's clock and as the
    driver saw it (which adds the DevTools round trip)."""
    old = page.evaluate("() => [...document.querySelectorAll('#review .rv-card')].map(c => c.dataset.sha256)")
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    started = page.evaluate(WATCH_CAPTIONS, [len(files), old])
    start = time.perf_counter()
    chooser.value.set_files([str(p) for p in files])
    captioned = page.evaluate("() => window.__captioned")
    return (captioned - started) / 1000, time.perf_counter() - start


def _browser_figures(app, client, batches: list[list[Path]], idle_s: float) -> dict:
    """App CPU with one tab open and nothing running; then upload → every card captioned (seconds), once per batch."""
    from playwright.sync_api import sync_playwright
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app.url)
        page.wait_for_selector("#upload", timeout=60_000)
        time.sleep(3)  # the page's own start-up requests
        quiet_s = app.wait_quiet(client)  # the cancelled run and the last batches' records are done
        one_tab = _app_cores(app.proc.pid, idle_s)
        captioned, seen = [], []
        for files in batches:
            page_s, driver_s = _caption_seconds(page, files)
            captioned.append(page_s)
            seen.append(driver_s)
            time.sleep(1.0)  # the batch's charts
            app.wait_quiet(client)  # and its records
    finally:
        browser.close()
        playwright.stop()
    return {"one_tab_cores": one_tab, "captioned_s": captioned, "captioned_seen_by_driver_s": seen,
            "one_tab_quiet_wait_s": quiet_s}


def _during_training(client, batches: list[list[Path]]) -> dict:
    """Start a training run, time predictions while it runs, then cancel it."""
    job = client.submit(api_name="/retrain", **TRAIN_PARAMS)
    deadline = time.monotonic() + 120
    while not client.predict(api_name="/status").get("training"):
        if time.monotonic() > deadline or job.done():
            raise RuntimeError(f"the training run did not start: {job.result() if job.done() else 'timeout'}")
        time.sleep(0.2)
    time.sleep(2.0)  # past loading the data: the training loop itself is running
    timed, during = [], []
    for files in batches:
        timed.append(_predict(client, files))
        during.append(bool(client.predict(api_name="/status").get("training")))
    client.predict(api_name="/cancel")
    try:
        job.result(timeout=120)
    except Exception as exc:  # a cancelled run answers with its cancellation
        log.info("training run ended: %s", str(exc)[:120])
    return {"seconds": timed, "training_throughout": during}


def run(bench) -> dict:
    title = "The app as a person meets it: idle, browser, during training"
    if not CHROMIUM.is_file():
        return _unavailable("live", title, "Chromium is not installed (apt-get install chromium)")
    from gradio_client import Client
    settings, version = _prepared_app_dir(bench, "live")
    n, idle_s = bench.sizes.load_batch, 10.0 if bench.quick else 20.0
    pool = image_files(bench.slices().test)
    batches = [pool[i:i + n] for i in range(0, (7 + CAPTION_UPLOADS) * n, n)]
    with AppProcess(settings, bench.run_dir / "live.log", dataset=bench.slices().version_train) as app:
        app.wait_status()
        app.wait_model_ready()
        client = Client(app.url, verbose=False, analytics_enabled=False)
        _predict(client, batches[0])  # warm-up
        no_tab_quiet_wait_s = app.wait_quiet(client)
        no_tab = _app_cores(app.proc.pid, idle_s)
        with CpuWatch((app.proc.pid,)) as watch:
            idle = [_predict(client, b) for b in batches[1:4]]
            training = _during_training(client, batches[4:7])
        browser = _browser_figures(app, client, batches[7:], idle_s)
    idle_p50, train_p50 = statistics.median(idle), statistics.median(training["seconds"])
    throughout = all(training["training_throughout"])
    ratio = train_p50 / idle_p50
    one_tab, captioned = browser["one_tab_cores"], statistics.median(browser["captioned_s"])
    figures = [
        Figure(f"{n} new images during a training run: p50 latency", "s", train_p50, idle_p50, "the same app, idle",
               target=f"≤ {TRAINING_TARGET_RATIO}× the idle latency", met=ratio <= TRAINING_TARGET_RATIO and throughout,
               distance=f"{ratio:.2f}× idle",
               note=(f"scratch run started through /retrain, cancelled after; still training after each request: "
                     f"{training['training_throughout']}")),
        Figure("app CPU with one Chromium tab open, nothing running", "cores", one_tab, no_tab, "no tab open",
               target=f"≤ {IDLE_TARGET_CORES} (2 % of a core)", met=one_tab <= IDLE_TARGET_CORES,
               distance=f"{one_tab * 100:.1f} % of a core", note=f"over {idle_s:.0f} s each"),
        Figure(f"Chromium: upload → all {n} cards captioned (p50)", "s", captioned, idle_p50, f"gradio_client, {n} files (p50)",
               target=f"≤ {CAPTION_TARGET_S:g} s", met=captioned <= CAPTION_TARGET_S if n == 128 else None,
               distance=f"{captioned - CAPTION_TARGET_S:+.2f} s",
               note=(f"median of {CAPTION_UPLOADS} uploads of {n} new images each "
                     f"({', '.join(f'{x:.2f}' for x in browser['captioned_s'])} s): from handing the files to the upload "
                     "button's file chooser to the frame after the last card shows its prediction")),
    ]
    return {"name": "live", "title": title,
            "method": (f"`python app.py` with its own DATA_DIR (head version {version.version} active, DATASET set to "
                       f"its training slice). Idle: the app process's CPU over {idle_s:.0f} s with no client, then with one "
                       "headless Chromium tab on the page (after its start-up requests), each once `/status` reports "
                       "nothing running (no training run, no upload batch still being recorded). Prediction during training: "
                       f"3 requests of {n} new images through `gradio_client` while the app idles, then 3 while a "
                       f"`/retrain` run ({TRAIN_PARAMS}) is going (checked after each request), after which the run is "
                       f"cancelled. Browser: {n} new images handed to the Predict tab's upload button in Chromium, "
                       f"timed until every card of the review grid shows its predicted class, {CAPTION_UPLOADS} times on the "
                       "same page with new images each time (a MutationObserver in the page watches the grid and reads the page's "
                       "clock in the next frame; nothing polls the page). The figure is their median."),
            "figures": figures,
            "details": {"idle_s": idle, "during_training": training, "no_tab_cores": no_tab,
                        "no_tab_quiet_wait_s": no_tab_quiet_wait_s, **browser},
            "other_processes_cores": watch.other_cores}

