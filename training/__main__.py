"""``python -m training``: train on a dataset, register the result as the next version, and activate it if it
passes the promotion gate (not worse than the active version on the same evaluation images).

Prints progress on stderr and one JSON object (version, metrics summary, promoted, reason) as the last line
of stdout.
"""
from __future__ import annotations

import getpass
import json
import logging
import sys
from dataclasses import dataclass, field

from tqdm.auto import tqdm
from transformers import HfArgumentParser

from settings import PlatformError, Settings, get_settings
from training.config import TrainConfig
from training.progress import ProgressEvent

log = logging.getLogger("training")


@dataclass
class RunArgs:
    data: str | None = field(default=None, metadata={"help": "class-per-folder directory, .zip of one, saved `datasets` folder, or Hub dataset id (default: $DATASET)"})
    with_labels: bool = field(default=False, metadata={"help": "also train on every human label in the labelling store (overriding dataset labels)"})
    no_activate: bool = field(default=False, metadata={"help": "register the version without making it active "
                                                               "(without it, the version goes live only if it is not worse "
                                                               "than the active one on the same evaluation images)"})


def train_from_sources(settings: Settings, config: TrainConfig, data: str | None, with_labels: bool,
                       activate: bool = True, show_progress: bool = False, user: str | None = None) -> dict:
    """Dataset (+ every human label in the store) → a new registered version through the engine, the same
    path as the app's Train button; returns ``{version, metrics, promoted, reason, …}``. The version goes
    live only if it passes the promotion gate (never with ``activate=False``)."""
    from engine import Engine

    if not data and not with_labels:
        raise PlatformError("No training data: pass --data DIR (or set DATASET), or use --with-labels")
    engine = Engine(settings)
    bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed} {postfix}") if show_progress else None

    def report(event: ProgressEvent) -> None:
        bar.n = int(event.fraction * 1000)
        bar.set_postfix_str(event.message[:60])
        bar.refresh()

    try:
        params = {k: v for k, v in config.to_dict().items() if v is not None}
        result = engine.retrain(params, user=user or _login_name(), on_progress=report if bar else None,
                                data=data or "", human_labels=with_labels, promote=activate)
        hub = engine.wait_for_hub(result["version"]) if result["version"] else None  # torchrun: rank 0 pushes
        if hub is not None:
            result["hub"] = hub
            if hub.get("state") != "pushed":
                print(f"warning: {result['version']} was not pushed to the Hub: {hub.get('reason')}", file=sys.stderr)
        return result
    except KeyboardInterrupt:
        engine.cancel_training("the command line (interrupted)")
        engine.wait_for_training(timeout=60)
        raise
    finally:
        if bar is not None:
            bar.close()
        engine.close()


def _login_name() -> str:
    """Who runs the command, for the version's "trained by" (``cli`` when the system cannot tell)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser((RunArgs, TrainConfig), prog="python -m training", description=__doc__)
    try:
        run_args, config = parser.parse_args_into_dataclasses(args=argv)
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
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
