"""Validation sweep for "label by cluster" (issue 14 item 6): when is an unreviewed image close enough to a
corrected one to be offered the same correction?

``python -m bench.cluster_offer`` prints the sweep behind :data:`training.review.CLUSTER_MARGIN`,
``CLUSTER_FLOOR`` and ``CLUSTER_ALONE`` on validation images only: Fashion-MNIST training images 34,000–35,999
(the audit section's validation pool), seeds 1000–1009, never the test pool or the test split. Per seed, a head
version (``train_linear_head``, head defaults) trained on 1,000 images predicts 128 others, in two scenarios:

* *known classes*: every wrong prediction is corrected in turn to its true class;
* *unseen class*: one class (seed mod 10) is left out of training, and each of its images is corrected.

The offer after a correction is :func:`training.review.similar_rows` over the batch's other images predicted the
same class, the reference being the training images of that class. An offered image is *right* when its true
class is the correction. Columns: precision (right / offered, pooled), offered and right per correction, share of
corrections with an offer.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
MARGINS = (-0.1, -0.05, -0.02, 0.0, 0.02, 0.05)
ALONE = (0.75, 0.8, 0.85, 0.88, 0.9, 0.93)
SEEDS = range(1000, 1010)


def offer_trials(x, y, classes: int, seeds, unseen: bool, trained: int = 1000, batch: int = 128) -> list[dict]:
    """One row per correction: the corrected image's features, the other images predicted the same class, the
    training images of that class, and which of the others the correction would label right."""
    from bench.audit_tasks import fit_version
    rows = []
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(y))
        held = seed % classes if unseen else -1
        old, new = order[:trained], order[trained:trained + batch]
        old = old[y[old] != held]
        pred = fit_version(x[old], y[old], classes, seed)(x[new]).argmax(1)
        truth, feats = y[new], x[new]
        for i in np.flatnonzero((pred != truth) & ((truth == held) if unseen else True)):
            others = np.flatnonzero((pred == pred[i]) & (np.arange(batch) != i))
            rows.append({"feats": feats[i], "others": feats[others], "reference": x[old][y[old] == pred[i]],
                         "right": truth[others] == truth[i]})
    return rows


def offer_scores(trials: list[dict], **rule) -> dict:
    """Pooled figures of :func:`training.review.similar_rows` with ``rule`` (its keyword arguments; ``reference``
    False: compare without the reference)."""
    from training.review import similar_rows
    use_reference = rule.pop("reference", True)
    offered = right = with_offer = 0
    for t in trials:
        picked, _ = similar_rows(t["feats"], t["others"], t["reference"] if use_reference else None, **rule)
        offered += len(picked)
        right += int(t["right"][picked].sum())
        with_offer += bool(len(picked))
    n = max(len(trials), 1)
    return {"offered": offered, "right": right, "precision": right / offered if offered else None,
            "offered_per_correction": offered / n, "right_per_correction": right / n, "with_offer": with_offer / n}


def _line(name: str, scores: list[dict]) -> str:
    cells = []
    for s in scores:
        precision = "–" if s["precision"] is None else f"{s['precision']:.3f}"
        cells.append(f"{precision} | {s['offered_per_correction']:.2f} | {s['right_per_correction']:.2f} | {s['with_offer']:.0%}")
    pooled = sum(s["right"] for s in scores) / max(sum(s["offered"] for s in scores), 1)
    return f"| {name} | " + " | ".join(cells) + f" | {pooled:.3f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=BENCH_DIR / "_work", help="the benchmark's work folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(BENCH_DIR.parent))
    from bench.audit import VALIDATION_POOL, pool
    from bench.workspace import FULL, Bench
    bench = Bench(FULL, False, work=args.work)
    try:
        _, x, y, names = pool(bench, "train", *VALIDATION_POOL)
    finally:
        bench.cleanup()
    scenarios = [offer_trials(x, y, len(names), SEEDS, unseen) for unseen in (False, True)]
    print("| rule | known classes: precision | offered / corr. | right / corr. | with an offer "
          "| unseen class: precision | offered / corr. | right / corr. | with an offer | pooled precision |")
    print("|---" * 10 + "|")
    for margin in MARGINS:
        print(_line(f"margin {margin:+.2f}, floor 0.7", [offer_scores(t, margin=margin) for t in scenarios]))
    for alone in ALONE:
        print(_line(f"no reference, ≥ {alone}", [offer_scores(t, reference=False, alone=alone) for t in scenarios]))
    print(f"corrections: {len(scenarios[0])} (known classes), {len(scenarios[1])} (unseen class); "
          f"seeds {SEEDS.start}–{SEEDS.stop - 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
