"""Section ``audit``: the trust queue and data audit (issue 14) on Fashion-MNIST through the bundled backbone.

Images come from parts of the Fashion-MNIST training split that no other section uses: a test pool of
4,000 (training images 30,000–33,999 in class-interleaved order) and a validation pool of 2,000
(34,000–35,999); their features are prepared once (untimed) like the other sections'. Flips move a label
to a uniformly random other class. Review effort: a head version (``train_linear_head``, head defaults)
trained on 1,000 clean images predicts 128 others. Labels saved: a pool of 2,000 and 2,000 held-out images
(disjoint halves of a permutation of the test pool), starting from one label per class; each round labels
the first 10 of ``review_order``, whose head, while there are fewer than 6 labels per class, is the images
that cover the most others no label covers yet (cosine ≥ 0.88, ProbCover), then the most doubtful images,
one of each run of near repeats. Settings of :mod:`training.audit` and :mod:`training.review_queue` (kNN
weight, ridge, own-class factor of the confident joint, margin weight, duplicate threshold, the few-labels
switch, the cover similarity and the head's repeat similarity) were chosen on the validation pool with seeds
≥ 1000 (labels saved: a pool of 2,000 and 2,000 held out from training images 34,000–37,999, seeds
1000–1019: ``python -m bench --only queue_validation``); the figures below use the test pool and seeds 0…N−1
only.
"""
from __future__ import annotations

import logging
import statistics
import time

import numpy as np

from bench import audit_tasks as tasks
from bench.report import Figure
from training import audit
from training import review_queue as audit_queue

log = logging.getLogger(__name__)
TEST_POOL, VALIDATION_POOL = (30_000, 4_000), (34_000, 2_000)
LABELS_SAVED_VALIDATION_POOL = (34_000, 4_000)
"""The validation pool and the next 2,000 training images (36,000–37,999, which no section uses), so that labels saved
is validated at the test's sizes (a pool of 2,000, 2,000 held out): at 1,000 / 1,000 the earlier queue reached random
order's 130-label accuracy with 80 labels, at 2,000 / 2,000 it needed 100 (seeds 1000–1019)."""
LABELS_SAVED_VALIDATION_SEEDS = range(1000, 1020)
LABELS_SAVED_VALIDATION_ORDERS = {"cover while < 4 labels per class": {"few_per_class": 4},
                                  f"cover while < {audit_queue.FEW_LABELS_PER_CLASS} (the default)": {},
                                  "random": None}
"""The validation table's orders (keyword settings of ``review_order``; None: random). The other settings tried
are listed at :data:`training.review_queue.FEW_LABELS_PER_CLASS`."""
QUICK_TEST_POOL, QUICK_VALIDATION_POOL = (30_000, 1_200), (34_000, 500)
"""--quick: the first images of the same pools (same files, so their prepared features are shared)."""
FULL_SEEDS = {"mislabels": 10, "session": 40, "review": 10, "labels_saved": 5, "duplicates": 10}
QUICK_SEEDS = {"mislabels": 2, "session": 8, "review": 3, "labels_saved": 1, "duplicates": 3}
VALIDATION_SEEDS = 1000
THRESHOLDS = (0.93, 0.94, 0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99)


def pool(bench, split: str, start: int, count: int):
    """(samples, features (n, d), labels (n,), class names) of a written Fashion-MNIST slice (or of --data)."""
    from bench import data as fmnist
    from training.data import load_folder
    if bench.data_arg:
        folder = bench.slices().test if split == "test" else bench.slices().retrain_base
    else:
        folder = fmnist.write_subset(bench.work / "data", split, start, count)
    samples = load_folder(folder).samples
    feats = bench.prepared_features(samples)
    samples = [s for s in samples if s.sha256 in feats]
    names = sorted({s.label for s in samples})
    index = {n: i for i, n in enumerate(names)}
    return samples, np.stack([feats[s.sha256] for s in samples]), np.array([index[s.label] for s in samples]), names


def _seeds(bench, name: str) -> range:
    return range((QUICK_SEEDS if bench.quick else FULL_SEEDS)[name])


def _validation_duplicates(bench, samples) -> list[dict]:
    trials = tasks.duplicate_trials(samples, bench.prepared_features, range(VALIDATION_SEEDS, VALIDATION_SEEDS + 5))
    return [tasks.duplicate_scores(trials, t) for t in THRESHOLDS]


def _speed(x, y, classes: int, reps: int = 5) -> list[float]:
    rng = np.random.default_rng(0)
    pick = rng.choice(len(y), 1000, replace=False)
    times = []
    for _ in range(reps + 1):
        started = time.perf_counter()
        audit.audit_labels(x[pick], y[pick], classes)
        times.append(time.perf_counter() - started)
    return times[1:]


def _first_reaching(curve: dict, target: float) -> int | None:
    return next((n for n in sorted(curve) if curve[n] >= target - 1e-12), None)


def _labels_saved_figure(rows: list[dict], queue: str = "queue") -> tuple[int | None, float, dict]:
    """(labels the ``queue`` order needs to reach random's 130-label accuracy (mean over seeds), that accuracy, mean
    curves by order)."""
    curves = {}
    for order in dict.fromkeys(r["order"] for r in rows):
        per_seed = [r["accuracy"] for r in rows if r["order"] == order]
        curves[order] = {n: statistics.fmean(c[n] for c in per_seed) for n in per_seed[0]}
    target = curves["random"][max(curves["random"])]
    return _first_reaching(curves[queue], target), target, curves


def _validation_labels_saved(bench) -> list[list]:
    """Rows of the labels-saved validation table: order, labels needed, accuracy at 90 labels, random at 130."""
    _, x, y, _ = pool(bench, "train", *LABELS_SAVED_VALIDATION_POOL)
    rows = tasks.labels_saved(x, y, len(np.unique(y)), LABELS_SAVED_VALIDATION_SEEDS,
                              orders=LABELS_SAVED_VALIDATION_ORDERS)
    table = []
    for name in LABELS_SAVED_VALIDATION_ORDERS:
        needed, target, curves = _labels_saved_figure(rows, name)
        table.append([name, needed if needed is not None else "> 130", f"{curves[name][90]:.4f}", f"{target:.4f}"])
    return table


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def run(bench) -> dict:
    quick = bench.quick
    samples, x, y, names = pool(bench, "train", *(QUICK_TEST_POOL if quick else TEST_POOL))
    val_samples, _, _, _ = pool(bench, "train", *(QUICK_VALIDATION_POOL if quick else VALIDATION_POOL))
    classes = len(names)
    log.info("audit: duplicate threshold sweep on validation images")
    sweep = _validation_duplicates(bench, val_samples)
    log.info("audit: mislabels")
    mis = tasks.mislabels(x, y, classes, _seeds(bench, "mislabels"), per_class=100 if not quick else 50)
    log.info("audit: session top 10")
    session = tasks.session_top(x, y, classes, _seeds(bench, "session"))
    log.info("audit: review effort")
    review = tasks.review_effort(x, y, classes, _seeds(bench, "review"), trained=1000 if not quick else 300)
    log.info("audit: labels saved")
    saved_rows = tasks.labels_saved(x, y, classes, _seeds(bench, "labels_saved"), pool=2000 if not quick else 600)
    needed, random_acc, curves = _labels_saved_figure(saved_rows)
    log.info("audit: duplicates")
    trials = tasks.duplicate_trials(samples, bench.prepared_features, _seeds(bench, "duplicates"))
    dup = tasks.duplicate_scores(trials, audit.DUPLICATE_SIMILARITY)
    speed = _speed(x, y, classes)
    return _section(bench, mis, session, review, saved_rows, (needed, random_acc, curves), dup, sweep, speed)


def run_queue_validation(bench) -> dict:
    """The optional ``queue_validation`` section: the labels-saved validation table behind the queue's settings
    (about 10 minutes on 2 cores, so not part of the default run)."""
    rows = _validation_labels_saved(bench)
    return {"name": "queue_validation", "title": "Review queue settings on validation images (issue 14, labels saved)",
            "method": (f"Labels saved as in the audit section, on validation images only: a pool of 2,000 and 2,000 "
                       f"held out from training images 34,000–37,999 (the test pool's sizes; no other section uses "
                       f"36,000–37,999), seeds {LABELS_SAVED_VALIDATION_SEEDS.start}–"
                       f"{LABELS_SAVED_VALIDATION_SEEDS.stop - 1}, mean held-out accuracy. The queue's cover switch "
                       "(`FEW_LABELS_PER_CLASS`) and cover similarity in `training/review_queue.py` were chosen from "
                       "tables like this one."),
            "figures": [],
            "tables": [{"title": "Labels saved on validation images (not the test seeds)",
                        "columns": ["order", "labels to reach random's 130-label accuracy", "accuracy at 90 labels",
                                    "random at 130"], "rows": rows}],
            "notes": [], "details": {"labels_saved_validation": rows}}


def _section(bench, mis, session, review, saved_rows, saved, dup, sweep, speed) -> dict:
    precision, recall = _mean(mis, "precision"), _mean(mis, "recall")
    base_p = _mean(mis, "baseline_precision")
    caught = sum(r["in_top"] for r in session) / max(1, sum(r["flips"] for r in session))
    looked, random_looked = _mean(review, "looked_at"), _mean(review, "random_looked_at")
    needed, random_acc, curves = saved
    speed_s = statistics.median(speed)
    n = mis[0]["n"]
    figures = [
        Figure(f"mislabels: precision of the flagged list (size = estimated issues), N={n}, 5 % flipped", "share",
               precision, base_p, "prediction ≠ given label", higher_is_better=True,
               target="≥ 0.60 at recall ≥ 0.70, and ≥ baseline + 0.25",
               met=precision >= 0.60 and recall >= 0.70 and precision - base_p >= 0.25,
               distance=f"recall {recall:.3f}; {precision - base_p:+.3f} over the baseline",
               note=f"mean of {len(mis)} seeds; worst seed precision {min(r['precision'] for r in mis):.3f}, "
                    f"recall {min(r['recall'] for r in mis):.3f}; estimated issues {_mean(mis, 'estimated'):.1f} "
                    f"for {mis[0]['flips']} flips"),
        Figure("a session's top 10: share of the flips (128 images, 5 % flipped)", "share", caught,
               10 / 128, "random top 10", higher_is_better=True, target="≥ 0.60", met=caught >= 0.60,
               distance=f"{caught - 0.60:+.3f}", note=f"{len(session)} seeds, {sum(r['flips'] for r in session)} flips"),
        Figure("review effort: share of a 128-image batch looked at to find 90 % of the wrong predictions", "share",
               looked, random_looked, "random order", target="≤ 0.50", met=looked <= 0.50,
               distance=f"worst seed {max(r['looked_at'] for r in review):.3f}",
               note=f"mean of {len(review)} seeds; {_mean(review, 'wrong'):.1f} wrong predictions per batch"),
        Figure("labels saved: labels the queue needs to reach random order's 130-label accuracy", "labels",
               needed, 130, "random order", target="≤ 90", met=needed is not None and needed <= 90,
               distance=f"random at 130: {random_acc:.4f}; queue at 90: {curves['queue'].get(90, float('nan')):.4f}",
               note=f"mean accuracy over {len(saved_rows) // 2} seeds, labels added 10 at a time"),
        Figure("duplicates: precision of near-duplicate pairs (JPEG q70, rescaled ±10 %)", "share", dup["precision"],
               target="≥ 0.95", met=dup["precision"] >= 0.95, distance=f"{dup['found']} pairs found, {dup['true']} injected"),
        Figure("duplicates: recall of near-duplicate pairs", "share", dup["recall"], target="≥ 0.95",
               met=dup["recall"] >= 0.95, distance=f"threshold {audit.DUPLICATE_SIMILARITY} (chosen on validation)"),
        Figure("speed: whole audit of 1,000 cached embeddings", "s", speed_s, target="≤ 2 s", met=speed_s <= 2.0,
               distance=f"{2.0 - speed_s:+.2f} s to spare", note=f"median of {len(speed)} after a warm-up"),
    ]
    curve_rows = [[k, f"{curves['queue'][k]:.4f}", f"{curves['random'][k]:.4f}"] for k in sorted(curves["queue"])]
    return {"name": "audit", "title": "Trust queue and data audit (issue 14)", "method": __doc__.split("\n\n", 1)[1].strip(),
            "figures": figures,
            "tables": [{"title": "Labels saved: mean held-out accuracy by number of labels", "columns": ["labels", "queue", "random"],
                        "rows": curve_rows},
                       {"title": "Duplicate threshold sweep on validation images (not the test seeds)",
                        "columns": ["cosine threshold", "precision", "recall"],
                        "rows": [[s["threshold"], f"{s['precision']:.3f}", f"{s['recall']:.3f}"] for s in sweep]}],
            "notes": ["New dependency: threadpoolctl 3.8.0 (32 kB wheel, BSD-3), to run the audit's BLAS on one thread.",
                      "Estimated issues: the confident-joint count with an own-class condition (an image counts only if "
                      "its given label's probability is under half its class's mean); the plain count estimated 119 "
                      "issues for 50 flips on the validation seeds, because Fashion-MNIST's tops overlap."]
                     + (["--quick: fewer seeds and smaller sets; figures are not comparable to the targets."] if bench.quick else []),
            "details": {"mislabels": mis, "session": session, "review": review, "labels_saved": saved_rows,
                        "duplicates": dup, "duplicate_sweep": sweep, "speed_s": speed}}
