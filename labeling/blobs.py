"""Write image bytes in GridFS's layout without pymongo's per-file index probe.

pymongo's ``GridFSBucket.upload_from_stream`` checks, for every file it writes, whether the bucket's
``files`` and ``chunks`` collections are empty (``find_one({})`` on each) before creating their indexes.
The embedded server answers an unfiltered ``find_one`` by reading the whole collection, chunks and all,
so each stored image cost time and memory in proportion to every image stored before it: measured here,
the eighth batch of 128 small images took 5.2 s to store against 0.55 s without the probe, and
storing phone photos grew the app's memory by about twice the bytes already stored.

:func:`put` writes the same documents the GridFS spec describes (``chunks``: ``files_id``, ``n``, ``data``;
``files``: ``_id``, ``length``, ``chunkSize``, ``uploadDate``, ``filename``, ``metadata``), chunks first and
the ``files`` document last, so ``GridFSBucket`` reads and deletes them as its own; the indexes it would
have created come from :func:`ensure_indexes`, once, when the store is prepared.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, WriteConcern
from pymongo.database import Database

CHUNK_BYTES = 255 * 1024
"""GridFS's default chunk size."""
INSERT_BYTES = 16 * 1024 * 1024
"""Chunk bytes sent per ``insert_many`` (a phone photo is a few of these at most)."""


def ensure_indexes(db: Database, bucket: str) -> None:
    """The two indexes the GridFS spec asks for (what ``GridFSBucket`` creates on its first write)."""
    db[f"{bucket}.files"].create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
    db[f"{bucket}.chunks"].create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)


def put(db: Database, bucket: str, data: bytes, filename: str, metadata: dict[str, Any],
        write_concern: WriteConcern) -> ObjectId:
    """Store ``data`` as one GridFS file of ``bucket``; returns its id. A failure part-way leaves chunks that
    no ``files`` document names, which no read ever sees."""
    file_id = ObjectId()
    chunks = db[f"{bucket}.chunks"].with_options(write_concern=write_concern)
    view = memoryview(data)
    docs, size = [], 0
    for n, start in enumerate(range(0, len(data), CHUNK_BYTES)):
        piece = bytes(view[start:start + CHUNK_BYTES])
        docs.append({"files_id": file_id, "n": n, "data": piece})
        size += len(piece)
        if size >= INSERT_BYTES:
            chunks.insert_many(docs)
            docs, size = [], 0
    if docs:
        chunks.insert_many(docs)
    db[f"{bucket}.files"].with_options(write_concern=write_concern).insert_one({
        "_id": file_id, "length": len(data), "chunkSize": CHUNK_BYTES,
        "uploadDate": datetime.now(timezone.utc), "filename": filename, "metadata": metadata})
    return file_id
