"""One evaluation split for every version, and the promotion gate that compares versions on it.

An image belongs to the evaluation split when its sha256, read as a number in [0, 1), is below the run's
``val_fraction``: the split is the same for every run with the same fraction, needs no stored list, and
grows as new labels arrive (a new image falls in it with probability ``val_fraction``). Two versions are
compared on the images both held out: the split of the smaller fraction, minus the few images a run had
to train on (a class whose every image fell in the split keeps one for training).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from training.data import Sample


def split_key(sha256: str) -> float:
    """Where an image falls in [0, 1): the first 32 bits of its sha256."""
    return int(sha256[:8], 16) / 2 ** 32


def in_evaluation_split(sha256: str, fraction: float) -> bool:
    return split_key(sha256) < fraction


@dataclass
class Split:
    train: list[Sample]
    val: list[Sample]
    kept_for_training: list[str]
    """sha256s of split images moved to training so that every class keeps a training image."""
    warnings: list[str]


def split(samples: list[Sample], val_fraction: float) -> Split:
    """Deterministic split by sha256; every class keeps at least one training image, and a class with no
    validation image is named in ``warnings`` (its accuracy is not measured)."""
    by_class: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: split_key(s.sha256)):
        by_class.setdefault(s.label, []).append(s)
    train, val, kept, warnings = [], [], [], []
    for label, items in sorted(by_class.items()):
        held = [s for s in items if in_evaluation_split(s.sha256, val_fraction)]
        rest = [s for s in items if not in_evaluation_split(s.sha256, val_fraction)]
        if held and not rest:
            moved = held.pop()  # the largest key: it is the last to enter smaller splits
            kept.append(moved.sha256)
            rest.append(moved)
        train += rest
        val += held
        if val_fraction > 0 and not held:
            warnings.append(f"class {label!r} has {len(items)} image(s) and none in the validation split: "
                            f"its accuracy is not measured (label more images of it)")
    return Split(train, val, kept, warnings)


def shared_evaluation_set(samples: Iterable[Sample], fractions: Iterable[float],
                          trained_on: Iterable[str] = ()) -> list[Sample]:
    """The images every compared version held out: below the smallest fraction, minus ``trained_on``."""
    fraction = min(fractions)
    excluded = set(trained_on)
    unique = {s.sha256: s for s in samples}
    return sorted((s for s in unique.values() if in_evaluation_split(s.sha256, fraction) and s.sha256 not in excluded),
                  key=lambda s: s.sha256)


def set_digest(samples: Iterable[Sample]) -> str:
    """Names an evaluation set with its labels (a relabelled image makes a new set)."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.sha256):
        h.update(f"{s.sha256}\t{s.label}\n".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    candidate_accuracy: float | None = None
    active_accuracy: float | None = None
    images: int = 0


def decide(candidate: str, active: str | None, candidate_acc: float | None, active_acc: float | None,
           images: int, tolerance: float) -> Decision:
    """Promote ``candidate`` unless it is worse than ``active`` by more than ``tolerance`` (accuracy 0–1)
    on the same ``images``; with nothing to compare on, it is not promoted by itself."""
    if active is None:
        return Decision(True, f"{candidate} is the first version", candidate_acc, None, images)
    if not images or candidate_acc is None or active_acc is None:
        return Decision(False, f"{candidate} and {active} share no evaluation images, so {candidate} cannot be "
                               f"shown to be as good; activate it yourself if you trust it", candidate_acc, active_acc, images)
    if candidate_acc + tolerance < active_acc:
        return Decision(False, f"{candidate} scored {candidate_acc:.1%} against {active}'s {active_acc:.1%} on the same "
                               f"{images} evaluation images (more than {tolerance:.1%} worse); {active} stays active",
                        candidate_acc, active_acc, images)
    return Decision(True, f"{candidate} scored {candidate_acc:.1%} against {active}'s {active_acc:.1%} on the same "
                          f"{images} evaluation images", candidate_acc, active_acc, images)
