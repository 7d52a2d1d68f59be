"""Figure 4: test accuracy of head, finetune and scratch, trained on the same images at equal wall time.

The budget is the head's own time from raw images to a registered version: embedding the training
folder for the first time (figure 3's pass, same run) plus ``train_version`` in head mode.
``finetune`` and ``scratch`` get that budget as ``TrainConfig.max_seconds`` for their training loop;
their setup and validation come on top, so the comparison errs in the baselines' favour.
"""
from __future__ import annotations

import logging
import time

from bench.inference import first_embedding
from bench.report import Figure
from training.config import TrainConfig

log = logging.getLogger(__name__)
REFERENCES = [("2-conv CNN (Keras example)", 0.876), ("HOG + SVM", 0.926), ("MobileNet", 0.950), ("human", 0.835)]
BEST_TARGET, BEST_WITHIN_S = 0.92, 20 * 60
VAL_FRACTION = 0.05
"""Held out by ``train_version`` for its validation metrics; small, because the test set is the judge here and
finetune's validation pass (224 px, new weights) is paid out of the run's time."""


def test_accuracy(version, samples, cache_root, max_pixels: int, chunk: int = 1000) -> float:
    """Top-1 accuracy (0–1) of a registered version on labelled samples, through ``predict_batch``."""
    from classifier.images import ImageInput
    from classifier.predict import Predictor
    predictor = Predictor.load(version.path, version.version, cache_root, max_pixels)
    predictor.fm.warm(wait=True)  # compiled before anything is timed, as a running app has it
    correct = 0
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        truth = {s.sha256: s.label for s in part}
        results, _ = predictor.predict_batch([ImageInput(s.name, s.read(), s.sha256) for s in part], top_k=1)
        correct += sum(r["label"] == truth[r["sha256"]] for r in results)
    return correct / len(samples)


def head_accuracy(bench, settings, train, test, resolution: int | None = None, **config) -> dict:
    """Train a head version at ``resolution`` (and ``config["precision"]``, default head mode's) on prepared
    features; its accuracy on ``test`` (prepared features)."""
    from classifier.registry import LocalRegistry
    from training.run import train_version
    precision = config.get("precision")
    bench.seed_cache(settings.embeddings_dir, train, resolution, precision)
    registry = LocalRegistry(settings.models_dir)
    start = time.perf_counter()
    result = train_version(train, TrainConfig(mode="head", resolution=resolution, **config), settings, registry,
                           activate=False)
    seconds = time.perf_counter() - start
    root = settings.data_dir / f"eval-{result['version']}"
    bench.seed_cache(root, test, resolution, precision)
    version = registry.get(result["version"])
    return {"accuracy": test_accuracy(version, test, root, settings.max_image_pixels), "train_s": seconds,
            "val_accuracy": result["metrics"]["accuracy"], "version": version}


def _train_timed(train, config, settings, registry) -> tuple[dict, float]:
    from training.run import train_version
    start = time.perf_counter()
    result = train_version(train, config, settings, registry, activate=False)
    return result, time.perf_counter() - start


def _finetune_resolution(bench) -> int:
    """Input size (pixels) finetune mode trains at by default: the backbone's own."""
    from training.run import _backbone
    return _backbone(str(bench.backbone_dir()), None).resolution


def _epochs_done(registry, version: str):
    curve = registry.get(version).metrics().get("loss_curve") or []
    return curve[-1]["epoch"] if curve else None


def run(bench) -> dict:
    from classifier.registry import LocalRegistry
    from training.data import load_folder
    slices = bench.slices()
    emb = first_embedding(bench)  # cold pass over the training folder; fills this section's cache
    settings = bench.settings("accuracy", fresh=False)
    registry = LocalRegistry(settings.models_dir)
    train = load_folder(slices.accuracy_train).samples
    test, test_small = load_folder(slices.test).samples, load_folder(slices.test_trained).samples
    head, head_s = _train_timed(train, TrainConfig(mode="head", val_fraction=VAL_FRACTION), settings, registry)
    budget = emb["seconds"] + head_s
    log.info("figure 4: head took %.1f s (+ %.1f s embedding); budget for the others: %.0f s", head_s, emb["seconds"], budget)
    runs = {"head": (head, head_s)}
    for mode in ("finetune", "scratch"):
        runs[mode] = _train_timed(train, TrainConfig(mode=mode, max_seconds=budget, val_fraction=VAL_FRACTION),
                                  settings, registry)
        log.info("figure 4: %s took %.1f s", mode, runs[mode][1])
    version = {m: registry.get(r["version"]) for m, (r, _) in runs.items()}
    eval_root = settings.data_dir / "eval-head"
    bench.seed_cache(eval_root, test)
    acc = {"head": test_accuracy(version["head"], test, eval_root, settings.max_image_pixels),
           "head_small": test_accuracy(version["head"], test_small, eval_root, settings.max_image_pixels)}
    log.info("figure 4: evaluating finetune on %d and scratch on %d test images", len(test_small), len(test))
    eval_s = {}
    for mode, samples in (("finetune", test_small), ("scratch", test)):
        start = time.perf_counter()
        acc[mode] = test_accuracy(version[mode], samples, bench.fresh_dir("eval"), settings.max_image_pixels)
        eval_s[mode] = round(time.perf_counter() - start, 1)
    # finetune's warm start (float32) reads the head's embeddings only when both run at the same resolution in
    # the same arithmetic; otherwise it embeds the images itself, inside its own timed run.
    reuse = emb["resolution"] == _finetune_resolution(bench) and emb["precision"] == "float32"
    ft_embedding = emb["seconds"] if reuse else 0.0
    total = {"head": budget, "finetune": ft_embedding + runs["finetune"][1], "scratch": runs["scratch"][1]}
    n_test, n_small = len(test), len(test_small)
    rows = [["head", "— (runs to its 60 epochs)", f"{head_s:.1f} + {emb['seconds']:.1f} embedding = {budget:.1f}",
             _epochs_done(registry, head["version"]), f"{acc['head']:.4f} (n={n_test}); {acc['head_small']:.4f} (n={n_small})",
             head["metrics"]["accuracy"]],
            ["finetune", f"{budget:.0f} s", (f"{runs['finetune'][1]:.1f} + {emb['seconds']:.1f} embedding = {total['finetune']:.1f}"
                                             if reuse else f"{total['finetune']:.1f} (its own embedding included)"),
             _epochs_done(registry, runs["finetune"][0]["version"]), f"{acc['finetune']:.4f} (n={n_small})",
             runs["finetune"][0]["metrics"]["accuracy"]],
            ["scratch", f"{budget:.0f} s", f"{total['scratch']:.1f}", _epochs_done(registry, runs["scratch"][0]["version"]),
             f"{acc['scratch']:.4f} (n={n_test})", runs["scratch"][0]["metrics"]["accuracy"]]]
    chance = 1 / len(head["metrics"]["labels"])
    notes = [f"{mode}'s test accuracy {acc[mode]:.4f} is at chance level (1/{len(head['metrics']['labels'])} = "
             f"{chance:.3f}): that mode did not learn in this run, so the comparison says nothing about it at its best."
             for mode in ("finetune", "scratch") if acc[mode] < chance + 0.05]
    best_mode = max(("head", "finetune", "scratch"), key=lambda m: acc[m])
    best = acc[best_mode]
    quick = " (--quick: smaller sets)" if bench.quick else ""
    figures = [
        Figure("test accuracy at equal wall time: head vs scratch", "accuracy", acc["head"], acc["scratch"], "scratch",
               higher_is_better=True, target="head beats scratch", met=acc["head"] > acc["scratch"],
               distance=f"{acc['head'] - acc['scratch']:+.4f}", note=f"both on the same {n_test} test images"),
        Figure("test accuracy at equal wall time: head vs finetune", "accuracy", acc["head_small"], acc["finetune"],
               "finetune", higher_is_better=True, note=f"both on the same {n_small} test images"),
        Figure(f"best mode's test accuracy at this budget ({best_mode}, {total[best_mode]:.0f} s)", "accuracy", best,
               None, distance=f"{best - BEST_TARGET:+.4f} from the {BEST_TARGET} target",
               note=f"each mode trains for about {budget:.0f} s here; the target allows {BEST_WITHIN_S // 60} minutes "
                    "and is judged by the 'best' section (`python -m bench --best`)"),
    ]
    return {"name": "accuracy", "title": "Accuracy at equal time (Fashion-MNIST test set)" if not bench.data_arg
            else "Accuracy at equal time",
            "method": (f"Trained on {len(train)} training images{quick} ({slices.source}); {VAL_FRACTION:.0%} of them held out "
                       f"for validation by `train_version` (`VAL_FRACTION`). Budget = the head's time from raw images: {emb['seconds']:.1f} s "
                       f"to embed the folder the first time + {head_s:.1f} s to train = {budget:.1f} s; finetune and "
                       f"scratch get `max_seconds={budget:.0f}` for their training loop, and their setup and "
                       "validation come on top (in the baselines' favour). "
                       + ("Finetune reuses the head's embeddings for its warm start, so its total adds the same embedding "
                          "time. " if reuse else
                          f"Finetune trains at {_finetune_resolution(bench)} px in float32, so it embeds the images for its "
                          f"warm start itself (the head's are at {emb['resolution']} px in {emb['precision']}), inside "
                          "its own time. ")
                       + f"The head is tested on all {n_test} "
                       f"test images; finetune needs its own {_finetune_resolution(bench)}-px pass per image, so it is tested on the first "
                       f"{n_small} (class-balanced) to stay inside the run's time budget."),
            "figures": figures, "notes": notes,
            "tables": [{"title": "Modes at equal wall time", "columns": ["mode", "training-loop budget",
                        "wall time to a registered version (s)", "epochs done", "test accuracy", "validation accuracy"],
                        "rows": rows},
                       {"title": "Public reference points on Fashion-MNIST (not measured here)",
                        "columns": ["model", "test accuracy"], "rows": [[n, f"{a:.3f}"] for n, a in REFERENCES]}],
            "details": {"budget_s": budget, "embedding": emb, "test_accuracy": acc, "wall_time_s": total,
                        "test_evaluation_s": eval_s,
                        "metrics": {m: r for m, (r, _) in runs.items()}, "test_images": n_test,
                        "test_images_small": n_small}}
