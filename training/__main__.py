"""``python -m training``: train on a dataset, register the result as the next version and activate it.

Prints progress on stderr and one JSON object (version, metrics summary) as the last line of stdout.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field

from tqdm.auto import tqdm
from transformers import HfArgumentParser

from settings import PlatformError, Settings, get_settings
from training.config import TrainConfig
from training.data import LoadedData, Sample, load_samples, merge_samples

log = logging.getLogger("training")


@dataclass
class RunArgs:
    data: str | None = field(default=None, metadata={"help": "class-per-folder directory, .zip of one, saved `datasets` folder, or Hub dataset id (default: $DATASET)"})
    with_labels: bool = field(default=False, metadata={"help": "also train on every human label in the labelling store (overriding dataset labels)"})
    no_activate: bool = field(default=False, metadata={"help": "register the version without making it active"})


def train_from_sources(settings: Settings, config: TrainConfig, data: str | None, with_labels: bool,
                       activate: bool = True, show_progress: bool = False) -> dict:
    """Dataset (+ every human label in the store) → a new registered version; returns ``{version, metrics}``."""
    base = load_samples(data) if data else LoadedData([])
    human: list[Sample] = []
    if with_labels:
        from labeling.store import open_store
        store = open_store(settings)  # the running app's database when it is up, else our own
        try:
            human = [Sample(li.sha256, li.label, li.name, li.read) for li in store.labelled_samples()]
            samples = merge_samples(base.samples, human)
            return _train(settings, config, samples, base, data, activate, show_progress)
        finally:
            store.close()
    return _train(settings, config, base.samples, base, data, activate, show_progress)


def _train(settings, config, samples, base, data, activate, show_progress) -> dict:
    from classifier.registry import LocalRegistry
    from training.run import train_version

    if not samples:
        raise PlatformError("No training data: pass --data DIR (or set DATASET), or use --with-labels")
    bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed} {postfix}") if show_progress else None

    def report(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message[:60])
        bar.refresh()
        log.info("%s", message)

    try:
        return train_version(samples, config, settings, LocalRegistry(settings.models_dir),
                             report=report if bar else None, activate=activate, skipped=base.skipped,
                             dataset_name=data)
    finally:
        if bar is not None:
            bar.close()


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
    if settings.hub_model_id and settings.hf_token and result["version"]:  # torchrun: rank 0 only
        result["hub"] = push_to_hub(settings, result["version"], activate=not run_args.no_activate)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def push_to_hub(settings: Settings, version: str, activate: bool) -> dict:
    """Push a new version to ``HUB_MODEL_ID`` (and record it as active there); a failure is reported, not fatal:
    the version is registered locally either way and the app's Models tab can push it again."""
    from classifier.hub import HubModelRepo
    from classifier.publish import commit_message
    from classifier.registry import LocalRegistry

    info = LocalRegistry(settings.models_dir).get(version)
    repo = HubModelRepo(settings.hub_model_id, settings.hf_token, endpoint=settings.hub_endpoint, private=True)
    try:
        commit = repo.push_version(info.path, version, commit_message(version, info.info, info.metrics()))
        if activate:
            repo.write_active(version)
        return {"state": "pushed", "commit": commit}
    except PlatformError as exc:
        print(f"warning: {version} was not pushed to the Hub: {exc}", file=sys.stderr)
        return {"state": "failed", "reason": str(exc)}


if __name__ == "__main__":
    sys.exit(main())
