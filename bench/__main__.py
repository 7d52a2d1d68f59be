"""``python -m bench``: measure the platform against stock baselines, offline, on this machine.

A full run writes RESULTS.md (tables: baseline, ours, ratio, target, met?) and results.json (every repetition),
both from this one run of the committed code. A run of chosen sections (--only) never touches them: it
writes its own dated pair, bench/_work/sections/<sections>-<UTC date-time>.{md,json}, so figures of
different runs are never spliced into one report.
The default run took 6 minutes on 2 cores from a fresh clone (86 s of it preparing data and stored features
that later runs reuse); --quick is a smaller smoke run (under a minute)
that CI executes. Data: Fashion-MNIST from the Debian package dataset-fashion-mnist, written once as
150×150 RGB JPEG class folders under bench/_work/, or any class-per-folder directory (--data).

Sections (run order; --only takes these names):
  inference   1. a 128-image batch, files → predictions, vs transformers.pipeline per image
  embedding   3. first embedding of a dataset, images/s
  accuracy    4. head / finetune / scratch test accuracy at equal wall-clock budget
  retrain     2. head retrain with cached embeddings + 128 corrections vs one scratch epoch
  scratch     4c. scratch mode with its defaults on 3,000 images: test accuracy and time vs the
              quoted 0.842 / 327 s Keras-CNN anchor
  app         5. the launched app under 1 and 4 concurrent clients (gradio_client), a batch as one .zip,
              12-MP phone photos, against a "typical Space" (pipeline() per image) and a bare Gradio
              app that only receives the files, all driven by the same client on the same images
  cold_start  6. `python app.py` until /status answers
  live        6b. the app as a person meets it: its CPU with no tab and one Chromium tab open, Chromium
              upload → 128 cards captioned, a prediction while a training run is going vs idle
  audit       7. the trust queue and data audit: mislabels, a session's top 10, review effort, labels saved,
              near-duplicates, speed (issue 14)
  levers      resolution, threads, batch size, decode threads, channels_last, batch-norm folding,
              JPEG draft (only with --levers or --only levers)
  best        4b. the best mode (finetune) with a 20-minute budget, on the whole test set, its recipe
              chosen first on validation images carved from the training set (only with --best or
              --only best: up to 26 minutes more)
  scale       Ray Data bulk prediction vs in-process (parity on 1,000 images, overhead), resume of a killed
              5,000-image job, 2-rank torchrun DDP fine-tune vs 1 process (only with --scale or --only scale;
              needs requirements-scale.txt)
  resolution  head mode's default input resolution: head versions at 224/192/160/128 px judged on validation
              images of the train pool, and bfloat16 vs float32 there (only with --only resolution)
  queue_validation
              the review queue's labels-saved figure on validation images for the settings compared when they
              were chosen (only with --only queue_validation: about 10 minutes)
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ORDER = ("inference", "embedding", "accuracy", "retrain", "scratch", "app", "cold_start", "live", "audit", "levers", "best",
         "scale", "resolution", "queue_validation")
OPTIONAL = ("levers", "best", "scale", "resolution", "queue_validation")
"""Not run by default (they would not fit the default run's ten minutes): add --levers, or name with --only."""
REPORT_ORDER = ("inference", "retrain", "embedding", "accuracy", "best", "scratch", "app", "cold_start", "live", "audit",
                "levers", "scale", "resolution", "queue_validation")
BENCH_DIR = Path(__file__).resolve().parent
log = logging.getLogger("bench")


def _sections(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in ORDER]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or value!r}; choose from {', '.join(ORDER)}")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller sets and fewer repetitions (under a minute); sizes are stated in the report")
    parser.add_argument("--only", type=_sections, metavar="NAME[,NAME]", help="run only these sections")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="class-per-folder image directory to use instead of Fashion-MNIST "
                             "(a seg_test/test sibling folder becomes the test set)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where to write the results (default: bench/RESULTS.md and bench/results.json for a "
                             "full run, bench/_work/quick/ for --quick, and a dated pair "
                             "bench/_work/sections/<sections>-<date>.{md,json} for --only, so a partial run never "
                             "overwrites or joins the full results)")
    parser.add_argument("--levers", action="store_true",
                        help="also measure the levers (resolution, threads, batch size, batch-norm folding, …; +3 min)")
    parser.add_argument("--best", action="store_true",
                        help="also train the best mode (finetune) with the 20-minute budget the accuracy target "
                             "allows and test it on the whole test set (+20 min)")
    parser.add_argument("--scale", action="store_true",
                        help="also measure scale-out: Ray Data bulk prediction, resume, torchrun DDP (needs Ray)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep this run's data directories under bench/_work/runs/ (for inspection)")
    return parser


def _modules():
    from bench import accuracy, app_live, app_load, audit, best, inference, levers, resolution, retrain, scale_out, scratch
    return {"audit": audit.run, "inference": inference.run_batch, "embedding": inference.run_first_embedding, "accuracy": accuracy.run,
            "retrain": retrain.run, "scratch": scratch.run, "app": app_load.run_load, "cold_start": app_load.run_cold_start,
            "live": app_live.run, "levers": levers.run, "best": best.run, "scale": scale_out.run,
            "resolution": resolution.run, "queue_validation": audit.run_queue_validation}


def _destination(args) -> tuple[Path, str | None]:
    """Folder and file stem for this run's results: a partial run gets its own dated files (stem), never RESULTS.md."""
    if args.only:
        stem = "-".join(args.only) + "-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + ("-quick" if args.quick else "")
        return args.out or BENCH_DIR / "_work" / "sections", stem
    return args.out or (BENCH_DIR / "_work" / "quick" if args.quick else BENCH_DIR), None


def _run_section(name: str, fn, bench) -> dict:
    from bench.measure import CpuWatch
    log.info("── section %s", name)
    start = time.perf_counter()
    with CpuWatch() as watch:
        try:
            section = fn(bench)
        except Exception as exc:  # one broken section must not lose the others' figures
            log.error("section %s failed:\n%s", name, traceback.format_exc())
            section = {"name": name, "title": name, "error": f"{type(exc).__name__}: {exc}", "failed": True}
    section["seconds"] = round(time.perf_counter() - start, 1)
    section.setdefault("other_processes_cores", watch.other_cores)
    log.info("── section %s done in %.0f s", name, section["seconds"])
    return section


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # A terminated run still unwinds: the app server it launched is stopped and its work folder removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # Trainer on a CPU-only machine
    for noisy in ("httpx", "httpcore", "gradio_client", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.data is not None and not args.data.is_dir():
        print(f"error: --data {args.data}: not a directory", file=sys.stderr)
        return 2
    sys.path.insert(0, str(BENCH_DIR.parent))
    from bench.measure import CpuWatch, machine_info
    from bench.report import write_results
    from bench.workspace import FULL, QUICK, Bench

    default = [n for n in ORDER if n not in OPTIONAL or getattr(args, n, False)]  # resolution: --only
    names = [n for n in ORDER if n in (args.only or default)]
    out, stem = _destination(args)
    bench = Bench(QUICK if args.quick else FULL, args.quick, args.data)
    machine = machine_info()
    log.info("machine: %s, %s cores, torch threads %s, load %.2f", machine["cpu_model"], machine["cores"],
             machine["torch_threads"], machine["load_average_1min"])
    start = time.perf_counter()
    modules = _modules()
    sections = {}
    try:
        with CpuWatch() as watch:
            slices = bench.slices()
            for name in names:
                sections[name] = _run_section(name, modules[name], bench)
    finally:
        if not args.keep_work:
            bench.cleanup()
    total = time.perf_counter() - start
    command = "python -m bench" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    results = {"run": {"command": command, "mode": "quick" if args.quick else "full", "sizes": vars(bench.sizes),
                       "total_seconds": round(total, 1), "other_processes_cores": watch.other_cores,
                       "preparation_seconds": round(bench.preparation_s, 1),
                       "data": slices.source, "sections_run": names},
               "machine": machine, "sections": [sections[n] for n in REPORT_ORDER if n in sections]}
    json_path, md_path = write_results(results, out, stem)
    log.info("done in %.0f s (%.1f min): %s, %s", total, total / 60, md_path, json_path)
    return 1 if any(s.get("failed") for s in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
