"""The MongoDB label store against the real embedded server (SecantusDB), no mocks."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from pymongo import MongoClient

from labeling.connection import PUBLISHED_FILE, scrub, uri_hosts
from labeling.store import LabelledImage, open_store
from settings import PlatformError, load_settings

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Upload:
    sha256: str
    data: bytes
    name: str


def make_images(count: int, offset: int = 0) -> list[Upload]:
    """Distinct 16x16 PNG squares, one colour each."""
    images = []
    for i in range(offset, offset + count):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), ((i * 37) % 256, (i * 91) % 256, (i * 53 + 7) % 256)).save(buffer, "PNG")
        data = buffer.getvalue()
        images.append(Upload(hashlib.sha256(data).hexdigest(), data, f"photo_{i}.png"))
    return images


def predictions(images: list[Upload], label: str, version: str = "v1") -> list[dict]:
    return [
        {"sha256": im.sha256, "label": label, "confidence": 0.8, "top_k": [{"label": label, "score": 0.8}], "model_version": version}
        for im in images
    ]


@pytest.fixture
def settings(tmp_path):
    return load_settings({"DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def store(settings):
    opened = open_store(settings)
    yield opened
    opened.close()


@pytest.fixture
def raw_db(store, settings):
    """A separate pymongo client on the URI the store published, for checks the API doesn't expose."""
    uri = json.loads((settings.data_dir / PUBLISHED_FILE).read_text())["uri"]
    client = MongoClient(uri, serverSelectionTimeoutMS=3000)
    yield client["image_platform"]
    client.close()


def test_add_images_stores_each_sha_once_with_metadata(store, raw_db):
    images = make_images(3)
    store.add_images(images, source="folder")
    store.add_images(images + make_images(1, offset=10))
    assert raw_db["images"].count_documents({}) == 4
    assert raw_db["image_bytes.files"].count_documents({}) == 4, "re-adding must not duplicate GridFS files"
    doc = raw_db["images"].find_one({"_id": images[0].sha256})
    assert (doc["format"], doc["width"], doc["height"], doc["source"], doc["name"]) == ("PNG", 16, 16, "folder", "photo_0.png")
    assert store.image_bytes(images[1].sha256) == images[1].data


def test_image_bytes_are_gridfs_files_that_gridfs_itself_reads(store, raw_db):
    """Bytes are written in GridFS's layout without pymongo's per-file emptiness probe (a full scan on the
    embedded server); GridFS must still read them, over several chunks, and the spec's indexes must exist."""
    from gridfs import GridFSBucket
    data = os.urandom(600 * 1024)  # three 255 KiB chunks
    sha = hashlib.sha256(data).hexdigest()
    store.add_images([Upload(sha, data, "big.raw")])
    doc = raw_db["images"].find_one({"_id": sha})
    bucket = GridFSBucket(raw_db, bucket_name="image_bytes")
    assert bucket.open_download_stream(doc["file_id"]).read() == data
    assert bucket.open_download_stream_by_name(sha).read() == data
    assert raw_db["image_bytes.chunks"].count_documents({"files_id": doc["file_id"]}) == 3
    chunk_index = [i for i in raw_db["image_bytes.chunks"].list_indexes() if list(i["key"]) == ["files_id", "n"]]
    assert chunk_index and chunk_index[0].get("unique") is True
    assert any(list(i["key"]) == ["filename", "uploadDate"] for i in raw_db["image_bytes.files"].list_indexes())


def test_unreadable_image_is_stored_without_format(store, raw_db):
    data = b"not an image at all"
    store.add_images([Upload(hashlib.sha256(data).hexdigest(), data, "../../etc/passwd")])
    doc = raw_db["images"].find_one({"_id": hashlib.sha256(data).hexdigest()})
    assert doc["format"] is None and doc["name"] == "../../etc/passwd"


def test_add_images_rejects_wrong_sha(store):
    image = make_images(1)[0]
    with pytest.raises(PlatformError, match="sha256"):
        store.add_images([Upload("0" * 64, image.data, "x.png")])


def test_confirm_and_correct_are_recorded_with_model_version(store):
    images = make_images(3)
    store.add_images(images)
    batch_id = store.record_batch([im.sha256 for im in images], predictions(images, "cat", "v1"))
    result = store.save_labels(
        [{"sha256": images[0].sha256, "label": "cat"}, {"sha256": images[1].sha256, "label": "dog"}],
        user="alice",
        known_classes=["cat"],
    )
    assert result == {"saved": 2, "unchanged": 0, "new_classes": ["dog"],
                      "labels": {images[0].sha256: "cat", images[1].sha256: "dog"}}
    assert store.current_labels() == {images[0].sha256: "cat", images[1].sha256: "dog"}
    rows = {row["sha256"]: row for row in store.history()}
    assert rows[images[0].sha256]["predicted"] == "cat" and rows[images[0].sha256]["label"] == "cat"
    assert rows[images[1].sha256]["previous"] is None and rows[images[1].sha256]["model_version"] == "v1"
    assert rows[images[1].sha256]["user"] == "alice"
    stats = store.stats()
    assert stats["per_class"] == {"cat": 1, "dog": 1}
    assert stats["by_model_version"] == [
        {"model_version": "v1", "decisions": 2, "confirmations": 1, "corrections": 1, "without_prediction": 0, "agreement": 0.5}
    ]
    assert [(d["model_version"], d["agreement"]) for d in stats["agreement_by_day"]] == [("v1", 0.5)]
    assert stats["batches"] == {"predicted": 1}
    json.dumps(stats)  # must be JSON-serialisable
    store.save_labels([{"sha256": images[2].sha256, "label": "cat"}])
    assert store.stats()["batches"] == {"labelled": 1}, batch_id


def test_latest_prediction_is_used_for_history(store):
    image = make_images(1)[0]
    store.add_images([image])
    store.record_batch([image.sha256], predictions([image], "cat", "v1"))
    store.record_batch([image.sha256], predictions([image], "dog", "v2"))
    store.save_labels([{"sha256": image.sha256, "label": "dog"}])
    (row,) = store.history(image.sha256)
    assert (row["model_version"], row["predicted"]) == ("v2", "dog")


def test_retry_is_idempotent_and_relabel_keeps_previous(store):
    images = make_images(2)
    store.add_images(images)
    items = [{"sha256": im.sha256, "label": "cat"} for im in images]
    assert store.save_labels(items)["saved"] == 2
    assert store.save_labels(items) == {"saved": 0, "unchanged": 2, "new_classes": [],
                                        "labels": {im.sha256: "cat" for im in images}}
    assert len(store.history()) == 2, "a retry must not add history rows"
    store.save_labels([{"sha256": images[0].sha256, "label": "bird"}])
    latest, first = store.history(images[0].sha256)
    assert (latest["previous"], latest["label"], latest["revision"]) == ("cat", "bird", 2)
    assert (first["previous"], first["label"], first["revision"]) == (None, "cat", 1)


def test_case_variants_map_to_existing_spelling_and_unicode_works(store):
    images = make_images(4)
    store.add_images(images)
    result = store.save_labels(
        [{"sha256": images[0].sha256, "label": "Forêt"}, {"sha256": images[1].sha256, "label": "山"}],
        known_classes=["cat"],
    )
    assert result["new_classes"] == ["Forêt", "山"]
    result = store.save_labels([{"sha256": images[2].sha256, "label": "FORÊT"}, {"sha256": images[3].sha256, "label": "CAT"}], known_classes=["cat"])
    assert result == {"saved": 2, "unchanged": 0, "new_classes": [],
                      "labels": {images[2].sha256: "Forêt", images[3].sha256: "cat"}}
    assert store.current_labels()[images[2].sha256] == "Forêt"
    assert store.current_labels()[images[3].sha256] == "cat"


@pytest.mark.parametrize("bad", ["", "   ", "x" * 10_000, "../../etc", "/", "a\x00b", "tab\x07bell"])
def test_invalid_label_writes_nothing(store, bad):
    images = make_images(2)
    store.add_images(images)
    items = [{"sha256": images[0].sha256, "label": "fine"}, {"sha256": images[1].sha256, "label": bad}]
    with pytest.raises(PlatformError, match="Nothing saved") as caught:
        store.save_labels(items)
    assert images[1].sha256[:12] in str(caught.value)
    assert store.current_labels() == {} and store.history() == []


def test_unknown_image_writes_nothing(store):
    image = make_images(1)[0]
    store.add_images([image])
    with pytest.raises(PlatformError, match="not in the store"):
        store.save_labels([{"sha256": image.sha256, "label": "cat"}, {"sha256": "ab" * 32, "label": "cat"}])
    assert store.current_labels() == {}


def test_batch_without_model_records_no_predictions(store):
    images = make_images(2)
    store.add_images(images)
    rows = [{"file": im.name, "sha256": im.sha256, "label": None, "confidence": None, "top_k": [], "model_version": None} for im in images]
    store.record_batch([im.sha256 for im in images], rows)
    assert store.stats()["batches"] == {"uploaded": 1}
    store.save_labels([{"sha256": im.sha256, "label": "cat"} for im in images])
    (version_row,) = store.stats()["by_model_version"]
    assert version_row["without_prediction"] == 2 and version_row["agreement"] is None
    assert store.history(images[0].sha256)[0]["predicted"] is None
    assert store.stats()["batches"] == {"labelled": 1}


def test_record_batch_validates(store):
    images = make_images(2)
    store.add_images(images[:1])
    with pytest.raises(PlatformError, match="not in the store"):
        store.record_batch([im.sha256 for im in images])
    with pytest.raises(PlatformError, match="1 to 128"):
        store.record_batch([])
    with pytest.raises(PlatformError, match="does not belong"):
        store.record_batch([images[0].sha256], predictions(images[1:], "cat"))
    assert store.stats()["batches"] == {}


def test_concurrent_saves_serialise_last_writer_wins(store):
    image = make_images(1)[0]
    store.add_images([image])
    labels = [f"class{i}" for i in range(8)]
    barrier = threading.Barrier(len(labels))
    errors = []

    def save(label):
        barrier.wait()
        try:
            store.save_labels([{"sha256": image.sha256, "label": label}], user=label)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(label,)) for label in labels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    rows = sorted(store.history(image.sha256), key=lambda r: r["revision"])
    assert [r["revision"] for r in rows] == list(range(1, 9))
    assert sorted(r["label"] for r in rows) == labels
    for before, after in zip(rows, rows[1:]):
        assert after["previous"] == before["label"], "each row must record the label it replaced"
    assert store.current_labels() == {image.sha256: rows[-1]["label"]}


def test_labels_survive_restart_and_samples_read_bytes(settings):
    images = make_images(3)
    with open_store(settings) as first:
        first.add_images(images)
        first.save_labels([{"sha256": im.sha256, "label": "cat" if i else "dog"} for i, im in enumerate(images)])
    assert not (settings.data_dir / PUBLISHED_FILE).exists(), "a clean close unpublishes the server"
    with open_store(settings) as second:
        assert second.current_labels() == {im.sha256: "cat" if i else "dog" for i, im in enumerate(images)}
        samples = list(second.labelled_samples())
        assert all(isinstance(s, LabelledImage) for s in samples)
        by_sha = {s.sha256: s for s in samples}
        assert set(by_sha) == {im.sha256 for im in images}
        assert by_sha[images[0].sha256].read() == images[0].data
        assert by_sha[images[0].sha256].name == "photo_0.png"
        sha, label, name, read = by_sha[images[1].sha256]
        assert (sha, label, name, read()) == (images[1].sha256, "cat", "photo_1.png", images[1].data)
        assert len(second.history()) == 3


def test_second_store_in_same_process_shares_published_server(store, settings):
    image = make_images(1)[0]
    store.add_images([image])
    other = open_store(settings)
    other.save_labels([{"sha256": image.sha256, "label": "cat"}])
    other.close()
    assert store.current_labels() == {image.sha256: "cat"}, "closing a client must not stop the owner's server"


def test_borrower_reopens_database_when_owner_closes(settings):
    images = make_images(2)
    owner = open_store(settings)
    borrower = open_store(settings)
    try:
        owner.add_images(images)
        borrower.save_labels([{"sha256": images[0].sha256, "label": "cat"}])
        owner.close()  # stops the server the borrower was using
        result = borrower.save_labels([{"sha256": images[1].sha256, "label": "dog"}])
        assert result["saved"] == 1
        assert borrower.current_labels() == {images[0].sha256: "cat", images[1].sha256: "dog"}
        assert json.loads((settings.data_dir / PUBLISHED_FILE).read_text())["pid"] == os.getpid()
    finally:
        owner.close()
        borrower.close()
    assert not (settings.data_dir / PUBLISHED_FILE).exists()


def test_newer_schema_version_is_refused(store, raw_db, settings):
    raw_db["meta"].update_one({"_id": "schema"}, {"$set": {"schema_version": 99}})
    with pytest.raises(PlatformError, match="schema version 99"):
        open_store(settings)


_KILLED_CHILD = textwrap.dedent(
    """
    import hashlib, io, os, sys, time
    from PIL import Image
    from labeling.store import open_store
    from settings import load_settings

    class Upload:
        def __init__(self, data, name):
            self.data, self.name, self.sha256 = data, name, hashlib.sha256(data).hexdigest()

    images = []
    for i in range(20):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (i * 12, 255 - i * 12, 99)).save(buffer, "PNG")
        images.append(Upload(buffer.getvalue(), f"k{i}.png"))
    noise = io.BytesIO()  # ~600 kB: several GridFS chunks
    Image.frombytes("RGB", (450, 450), os.urandom(450 * 450 * 3)).save(noise, "PNG")
    images.append(Upload(noise.getvalue(), "noise.png"))
    store = open_store(load_settings({"DATA_DIR": sys.argv[1]}))
    store.add_images(images)
    result = store.save_labels([{"sha256": im.sha256, "label": f"c{i % 3}"} for i, im in enumerate(images)])
    print("ACK", result["saved"], flush=True)
    time.sleep(120)
    """
)


@pytest.mark.slow
def test_acknowledged_labels_survive_sigkill(settings):
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(settings.data_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.split() == ["ACK", "21"]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert (settings.data_dir / PUBLISHED_FILE).exists(), "the killed process could not unpublish"
    with open_store(settings) as reopened:
        labels = reopened.current_labels()
        assert len(labels) == 21
        assert sorted(set(labels.values())) == ["c0", "c1", "c2"]
        assert len(reopened.history(limit=1000)) == 21
        assert all(hashlib.sha256(s.read()).hexdigest() == s.sha256 for s in reopened.labelled_samples())


def test_unreachable_database_names_host_but_not_password(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path), "MONGODB_URI": "mongodb://admin:s3cret@127.0.0.1:1/?authSource=admin"})
    with pytest.raises(PlatformError) as caught:
        open_store(settings)
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "s3cret" not in message and "admin:" not in message


def test_scrub_removes_raw_and_decoded_credentials():
    uri = "mongodb://alice:p%40ss@db.example.com:27017,db2:27018/app?authSource=admin"
    assert uri_hosts(uri) == "db.example.com:27017,db2:27018"
    text = scrub(f"auth failed for alice with p@ss via {uri}; alicexyz untouched", uri)
    assert "p@ss" not in text and "p%40ss" not in text and " alice " not in text
    assert "db.example.com:27017" in text and "alicexyz" in text


# Per-edit labels from the review grid: set, revert, revision check ------------------------------

def test_set_label_reverts_to_no_label_with_a_history_row(store):
    images = make_images(2)
    store.add_images(images)
    store.record_batch([i.sha256 for i in images], predictions(images, "cat"))
    sha = images[0].sha256
    saved = store.set_label(sha, "dog", user="ann", expected_revision=0)
    assert (saved["status"], saved["label"], saved["state"], saved["revision"], saved["updated_by"]) == \
        ("saved", "dog", "corrected", 1, "ann")
    reverted = store.set_label(sha, None, user="ann", expected_revision=1)
    assert (reverted["status"], reverted["label"], reverted["state"], reverted["revision"]) == ("saved", None, "untouched", 2)
    assert store.current_labels() == {} and store.count_labels() == 0 and list(store.labelled_samples()) == []
    assert [(h["revision"], h["previous"], h["label"]) for h in store.history(sha)] == [(2, "dog", None), (1, None, "dog")]
    confirmed = store.set_label(sha, "cat", user="bob", expected_revision=2)
    assert (confirmed["state"], confirmed["revision"]) == ("confirmed", 3)
    assert store.label_states([sha, images[1].sha256]) == {sha: {k: confirmed[k] for k in
                                                                 ("sha256", "label", "state", "revision", "updated_by", "updated_at")}}


def test_set_label_with_a_stale_revision_is_a_conflict_and_writes_nothing(store):
    images = make_images(1)
    store.add_images(images)
    sha = images[0].sha256
    store.set_label(sha, "dog", user="ann", expected_revision=0)
    lost = store.set_label(sha, "cat", user="bob", expected_revision=0)  # bob had not seen ann's edit
    assert (lost["status"], lost["label"], lost["updated_by"], lost["revision"]) == ("conflict", "dog", "ann", 1)
    assert store.current_labels() == {sha: "dog"} and len(store.history(sha)) == 1
    assert store.set_label(sha, "dog", user="bob", expected_revision=1)["status"] == "unchanged"


def test_predictions_of_lists_newest_first(store):
    images = make_images(1)
    store.add_images(images)
    store.record_batch([images[0].sha256], predictions(images, "cat", "v1"))
    store.record_batch([images[0].sha256], predictions(images, "dog", "v2"))
    assert [(p["model_version"], p["label"]) for p in store.predictions_of(images[0].sha256)] == [("v2", "dog"), ("v1", "cat")]
