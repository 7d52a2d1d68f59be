"""The bulk output: a parquet dataset folder of numbered part files, written atomically, so a killed job resumes.

``OUT.parquet/part-000007.parquet`` holds rows ``path, sha256, label, confidence, top_k, model_version``
(``error`` is set, and ``label`` empty, for an image that could not be read). A part appears whole or
not at all (written to a temporary name, then renamed), so after a kill every row on disk is complete;
a rerun reads the paths already there and skips them. Readers (``pandas.read_parquet``, ``datasets``,
Spark, DuckDB) take the folder as one table.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from settings import PlatformError

SCHEMA = pa.schema([
    ("path", pa.string()), ("sha256", pa.string()), ("label", pa.string()), ("confidence", pa.float64()),
    ("top_k", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
    ("model_version", pa.string()), ("error", pa.string()),
])
_PART = re.compile(r"^part-(\d{6})\.parquet$")


def part_files(folder: Path) -> list[Path]:
    """The whole parts in an output folder, in order. Reads only: safe while a job is writing there (opening a
    :class:`PartWriter` is not, as it deletes the writer's unfinished ``.tmp`` part)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if _PART.match(p.name)) if folder.is_dir() else []


class PartWriter:
    """Appends numbered parts to an output folder and knows which paths it already holds."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise PlatformError(f"{folder} exists and is a file; the output is a folder of parquet parts "
                                "(pass a new name, or the folder of an earlier run to resume it)")
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("*.tmp"):  # a part whose write was killed: never renamed, never counted
            stale.unlink(missing_ok=True)
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := _PART.match(p.name))]
        self.next_number = max(numbers, default=-1) + 1

    def parts(self) -> list[Path]:
        return part_files(self.folder)

    def done_paths(self) -> set[str]:
        """Paths already in the output (errors included: a rerun does not retry an unreadable file)."""
        done: set[str] = set()
        for part in self.parts():
            done.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
        return done

    def write(self, rows: list[dict]) -> Path | None:
        """Write ``rows`` as the next part, atomically; returns its path (None for no rows)."""
        if not rows:
            return None
        table = pa.Table.from_pylist([{name: row.get(name) for name in SCHEMA.names} for row in rows], schema=SCHEMA)
        final = self.folder / f"part-{self.next_number:06d}.parquet"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self.next_number += 1
        return final


def read_output(folder: Path) -> pa.Table:
    """The whole output as one table, one row per path (a path written twice keeps its first row)."""
    parts = part_files(folder)
    if not parts:
        return SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])
    seen: set[str] = set()
    keep = [not (p in seen or seen.add(p)) for p in table.column("path").to_pylist()]
    return table.filter(pa.array(keep))
