"""Training progress as typed values: what a run reports, and how a part of a run maps onto the whole."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report of a training run.

    ``fraction`` is the share of the whole run done (0–1); ``step``/``epoch``/``loss`` are set by the
    training loops (``epoch`` may be fractional inside an epoch; ``loss`` is the mean training loss
    since the last report).
    """

    fraction: float
    message: str
    step: int | None = None
    epoch: float | None = None
    loss: float | None = None


Report = Callable[[ProgressEvent], None]


def ignore(event: ProgressEvent) -> None:
    """A report that drops every event."""


def part_of(report: Report | None, start: float, span: float) -> Report:
    """A report for a part of the run covering ``[start, start + span]`` of the whole (fractions 0–1)."""
    if report is None:
        return ignore

    def scaled(event: ProgressEvent) -> None:
        report(dataclasses.replace(event, fraction=start + span * min(max(event.fraction, 0.0), 1.0)))

    return scaled


class Cancelled(Exception):
    """Raised inside a run that was asked to stop; nothing it wrote is kept."""
