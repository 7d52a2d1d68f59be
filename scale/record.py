"""Record a written output part in the labelling store: its images (source ``folder``) and their predictions.

The store then shows the bulk predictions the way it shows the app's (batches of at most ``MAX_BATCH``
images, predictions tagged with the model version); human labels are never touched.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from classifier.images import ImageInput
from scale.sources import Source
from settings import Settings


def record_part(part: Path, source: Source, settings: Settings) -> int:
    """Add the part's scored images and record their predictions; returns how many were recorded."""
    from labeling.store import open_store

    rows = [r for r in pq.read_table(part).to_pylist() if not r.get("error")]
    if not rows:
        return 0
    store = open_store(settings)
    try:
        for start in range(0, len(rows), store.max_batch):
            chunk = rows[start:start + store.max_batch]
            datas = source.read([r["path"] for r in chunk])
            images = [ImageInput.from_bytes(d, r["path"]) for r, d in zip(chunk, datas) if not isinstance(d, str)]
            # A file changed since it was scored no longer matches its row: record only what still matches.
            fresh = {i.sha256 for i in images}
            chunk = [r for r in chunk if r["sha256"] in fresh]
            wanted = {r["sha256"] for r in chunk}
            images = [i for i in images if i.sha256 in wanted]
            if chunk:
                store.add_images(images, source="folder")
                store.record_batch([r["sha256"] for r in chunk], chunk)
    finally:
        store.close()
    return len(rows)
