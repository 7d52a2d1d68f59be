"""The bulk flags of ``python -m classifier predict`` and the one function that runs them."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from settings import Settings


def add_bulk_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for ``--out`` runs (``--engine`` and ``--out`` themselves are declared by the caller)."""
    group = parser.add_argument_group("bulk (with --out; see README 'Scaling out')")
    group.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")
    group.add_argument("--actors", type=int, help="scoring actors, one model each (default: one per GPU, else "
                       "one per two CPUs)")
    group.add_argument("--actor-cpus", type=float, help="CPUs reserved per actor (default 1; fractions allowed)")
    group.add_argument("--read-cpus", type=float, help="CPUs for read/decode tasks (default: all the actors leave; "
                       "at least 1)")
    group.add_argument("--decode", choices=("auto", "actors", "tasks"), default="auto",
                       help="ray: decode in the scoring actors (default on CPU clusters) or in CPU tasks feeding "
                       "them (default where the cluster has GPUs)")
    group.add_argument("--batch-size", type=int, default=64, help="images per scoring batch (default 64)")
    group.add_argument("--part-rows", type=int, default=1000, help="rows per output part file (default 1000)")
    group.add_argument("--fill-cache", action="store_true", help="also store every embedding in the embedding "
                       "cache (what training on this version's backbone reads)")
    group.add_argument("--record", action="store_true", help="record images and predictions in the labelling store")
    group.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def bulk_main(args: argparse.Namespace, settings: Settings) -> int:
    """Run a bulk job from parsed flags; prints its summary as one JSON line. PlatformError propagates."""
    from scale.bulk import BulkJob, run_bulk

    if len(args.paths) != 1:
        from settings import PlatformError
        raise PlatformError("A bulk run (--out) takes exactly one SOURCE: a folder, a glob, a .zip, "
                            "a saved datasets folder or a Hub dataset id")
    job = BulkJob(source=args.paths[0], out=Path(args.out), engine=args.engine, version=args.version,
                  top_k=max(1, args.top_k), batch_size=args.batch_size, part_rows=args.part_rows,
                  address=args.address, actors=args.actors, actor_cpus=args.actor_cpus, read_cpus=args.read_cpus,
                  decode=args.decode,
                  fill_cache=args.fill_cache, record=args.record, progress=not args.no_progress)
    summary = run_bulk(job, settings)
    print(json.dumps(summary))
    return 1 if summary["errors"] else 0
