"""Command line: ``python -m labeling stats``, ``python -m labeling export`` and ``python -m labeling audit``.

Uses the same settings as the app (``DATA_DIR``, ``MONGODB_URI``, ``HF_TOKEN``,
``HUB_DATASET_ID``). While the app runs, the CLI connects to the embedded database the app
published; otherwise it starts its own. Errors: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from labeling.export import FORMATS
from settings import PlatformError, Settings, load_settings

logger = logging.getLogger(__name__)

EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m labeling", description="Human labels stored in MongoDB: statistics, export and audit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("stats", help="print label statistics as JSON")
    export = commands.add_parser("export", help="write the labelled images as a dataset")
    export.add_argument("out", type=Path, help="output directory (must not exist or be empty)")
    export.add_argument("--format", choices=FORMATS, default="imagefolder", help="imagefolder tree or datasets save_to_disk (default: imagefolder)")
    export.add_argument("--push", action="store_true", help="also push the export to HUB_DATASET_ID (needs HF_TOKEN)")
    audit = commands.add_parser("audit", help="find likely wrong labels, near-duplicates and outliers")
    audit.add_argument("--data", type=str, metavar="DIR", help="class-per-folder dataset to audit with the human labels (default: DATASET)")
    audit.add_argument("--json", action="store_true", help="one JSON object per flagged image, worst first, then a summary line")
    return parser


def run_audit(args: argparse.Namespace, settings: Settings) -> None:
    """Audit the dataset folder plus every human label; print flagged images worst first."""
    from engine import Engine
    engine = Engine(settings)
    try:
        result = engine.audit(args.data)
    finally:
        engine.close()
    summary = {k: result[k] for k in ("estimated_issues", "audited", "seconds")}
    if args.json:
        for item in result["items"]:
            print(json.dumps({k: item[k] for k in ("file", "sha256", "given", "suggested", "kind", "score")}, ensure_ascii=False))
        print(json.dumps(summary))
        return
    for item in result["items"]:
        hint = f" → suggested {item['suggested']}" if item["suggested"] else ""
        print(f"{item['score']:.3f}  {item['kind']:<9}  {item['file']}  ({item['given']}{hint})")
    print(f"{len(result['items'])} flagged of {summary['audited']} audited; estimated label issues "
          f"{summary['estimated_issues']}; {summary['seconds']} s")


def run(args: argparse.Namespace, settings: Settings) -> None:
    """Execute one parsed command through the engine, printing its output on stdout."""
    if args.command == "audit":
        return run_audit(args, settings)
    from engine import Engine

    engine = Engine(settings)
    try:
        if args.command == "stats":
            print(json.dumps(engine.label_stats(), indent=2, ensure_ascii=False))
            return
        counts = engine.export_labels(args.out, format=args.format, push=args.push)
    finally:
        engine.close()
    print(json.dumps(counts, indent=2, ensure_ascii=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args, load_settings())
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
