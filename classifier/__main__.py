"""``python -m classifier``: predict images with the active model version, or list versions.

``predict FILE_OR_DIR…`` prints one JSON object per image (file, sha256, label, confidence, top_k,
model_version); images that cannot be read print an object with ``error`` and set exit status 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from settings import PlatformError, get_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m classifier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="predict images or folders of images")
    predict.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--version", help="model version to use (default: the active one)")
    predict.add_argument("--top-k", type=int, default=3, help="how many labels to list per image (default 3)")
    predict.add_argument("--engine", choices=("local", "ray"), default="local",
                         help="where to score: in this process (default) or on a Ray cluster (needs --out)")
    predict.add_argument("--out", help="bulk: write a resumable parquet folder here instead of JSON lines")
    from scale.cli import add_bulk_arguments
    add_bulk_arguments(predict)
    versions = sub.add_parser("versions", help="list model versions as JSON lines")
    versions.set_defaults(paths=[])
    activate = sub.add_parser("activate", help="make a version the active one (rollback)")
    activate.add_argument("version")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        from classifier.images import list_image_files
        from classifier.live import LiveModel
        from classifier.registry import LocalRegistry

        settings = get_settings()
        registry = LocalRegistry(settings.models_dir)
        if args.command == "versions":
            active = registry.active()
            for v in registry.versions():
                print(json.dumps({"version": v.version, "active": v.version == active, "created": v.info.get("created"),
                                  "mode": v.info.get("mode"), "accuracy": v.metrics().get("accuracy")}))
            return 0
        if args.command == "activate":
            LiveModel(registry, settings).activate(args.version)
            print(json.dumps({"active": args.version}))
            return 0
        if args.out or args.engine != "local":
            if not args.out:
                raise PlatformError("--engine ray writes a parquet folder: add --out OUT.parquet")
            from scale.cli import bulk_main
            return bulk_main(args, settings)
        files: list[Path] = []
        for raw in args.paths:
            path = Path(raw)
            if not path.exists():
                raise PlatformError(f"{raw}: no such file or folder")
            files += list_image_files(path) if path.is_dir() else [path]
        live = LiveModel(registry, settings)
        predictor = live.load(args.version) if args.version else live.require()
        results, errors = predictor.predict_batch(files, top_k=max(1, args.top_k))
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in results + errors:
        print(json.dumps(row, ensure_ascii=False))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
