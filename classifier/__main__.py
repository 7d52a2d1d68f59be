"""``python -m classifier``: predict images with the active model version, or list versions.

``predict FILE_OR_DIR…`` prints one JSON object per image (file, sha256, label, confidence, top_k,
model_version), ``file`` being the path as given on the command line (``photos/a/img_001.jpg`` for a file
found in the folder ``photos``); images that cannot be read print an object with ``error`` and set exit
status 1. Goes through the same :class:`engine.Engine` as the app, and records nothing in the store.
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


def _inputs(raw_paths: list[str]) -> tuple[list, list[dict]]:
    """Images named by their path as given on the command line (a folder's files as ``FOLDER/sub/x.jpg``)."""
    from classifier.images import ImageInput, list_image_files

    images, errors = [], []
    for raw in raw_paths:
        path = Path(raw)
        if not path.exists():
            raise PlatformError(f"{raw}: no such file or folder")
        found = [(str(Path(raw) / f.relative_to(path)), f) for f in list_image_files(path)] if path.is_dir() else [(raw, path)]
        for shown, file in found:
            try:
                images.append(ImageInput.from_bytes(file.read_bytes(), shown))
            except OSError as exc:
                errors.append({"file": shown, "error": f"{shown}: cannot read ({exc.strerror or exc})"})
    return images, errors


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        from engine import Engine

        engine = Engine(get_settings())
        if args.command == "versions":
            for m in engine.models():
                print(json.dumps({"version": m["version"], "active": m["active"], "created": m["created"],
                                  "mode": m["mode"], "accuracy": m["metrics"].get("accuracy"),
                                  "promoted": (m["promotion"] or {}).get("promoted")}))
            return 0
        if args.command == "activate":
            print(json.dumps(engine.activate(args.version)))
            engine.wait_for_hub(args.version, timeout=120)
            return 0
        if args.out or args.engine != "local":
            if not args.out:
                raise PlatformError("--engine ray writes a parquet folder: add --out OUT.parquet")
            from scale.cli import bulk_main
            return bulk_main(args, engine.settings)
        images, errors = _inputs(args.paths)
        if not images:
            raise PlatformError("No images found in " + ", ".join(args.paths))
        if not args.version:
            engine.require_model()
        result = engine.predict(images, record=False, version=args.version, max_batch=len(images),
                                top_k=max(1, args.top_k))
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    errors += result["errors"]
    for row in result["results"] + errors:
        print(json.dumps(row, ensure_ascii=False))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
