"""``python -m training``: train on a dataset, register the result as the next version and activate it.

Prints progress on stderr and one JSON object (version, metrics summary) as the last line of stdout.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from settings import PlatformError, get_settings
from training.config import TrainConfig


@dataclass
class RunArgs:
    data: str | None = field(default=None, metadata={"help": "class-per-folder directory, .zip of one, saved `datasets` folder, or Hub dataset id (default: $DATASET)"})
    with_labels: bool = field(default=False, metadata={"help": "also train on every human label in the labelling store (overriding dataset labels)"})
    no_activate: bool = field(default=False, metadata={"help": "register the version without making it active"})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser((RunArgs, TrainConfig), prog="python -m training", description=__doc__)
    try:
        run_args, config = parser.parse_args_into_dataclasses(args=argv)
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        from engine import train_from_sources
        settings = get_settings()
        result = train_from_sources(settings, config, data=run_args.data or settings.dataset,
                                    with_labels=run_args.with_labels, activate=not run_args.no_activate,
                                    show_progress=True)
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was registered", file=sys.stderr)
        return 130
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
