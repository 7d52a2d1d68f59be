"""The label journal (labeling/journal.py) against the Hub stand-in, with the real client."""
import hashlib
import io
import json

import datasets
import pytest
from huggingface_hub import snapshot_download
from PIL import Image

from hub.journal import LabelJournal
from settings import PlatformError
from tests.hub_standin import running_standin

TOKEN = "hf_alice_journal_0123456789"
DATASET = "alice/flower-labels"


@pytest.fixture
def hub(tmp_path, monkeypatch, caplog):
    with running_standin(monkeypatch, tmp_path, caplog, {TOKEN: "alice"}, secrets=[TOKEN]) as standin:
        yield standin


@pytest.fixture
def journals(hub, tmp_path):
    """Factory for journals against the stand-in; closes them all at the end."""
    opened = []

    def open_journal(name, token=TOKEN, every_minutes=1.0):
        journal = LabelJournal(tmp_path / name, DATASET, token, endpoint=hub.endpoint, every_minutes=every_minutes)
        opened.append(journal)
        return journal

    yield open_journal
    for journal in opened:
        journal.close(timeout=5)


def image(seed: int, fmt: str = "PNG") -> tuple[str, bytes]:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 10, 200)).save(buffer, fmt)
    data = buffer.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def change(sha: str, label, previous=None, time=None) -> dict:
    return {"sha256": sha, "label": label, "previous": previous, "user": "alice", "time": time,
            "model_version": "v1"}


def test_second_journal_replays_every_row_once(hub, journals):
    (a, png_a), (b, jpg_b), (c, png_c) = image(1), image(2, "JPEG"), image(3)
    first = journals("first")
    first.append([change(a, "daisy"), change(b, "rose")], {a: png_a, b: jpg_b})
    first.append([change(a, "rose", previous="daisy")], {a: png_a})  # same image again: stored once
    first.append([change(c, "tulip")], {c: png_c})
    assert first.flush(timeout=20) and first.pending() == 0

    files = hub.repo(DATASET, "dataset").files()
    assert hub.repo(DATASET, "dataset").private
    assert sorted(p for p in files if p.startswith("images/") and p.count("/") == 2) == sorted(
        [f"images/{a[:2]}/{a}.png", f"images/{b[:2]}/{b}.jpg", f"images/{c[:2]}/{c}.png"])
    journal_files = [p for p in files if p.startswith("journal/")]
    assert len(journal_files) == 1 and journal_files[0].endswith(".jsonl")

    rows, images = journals("second").replay()
    assert [(r["sha256"], r["label"], r["previous"]) for r in rows] == [
        (a, "daisy", None), (b, "rose", None), (a, "rose", "daisy"), (c, "tulip", None)]
    assert len({r["id"] for r in rows}) == 4
    assert images == {a: png_a, b: jpg_b, c: png_c}
    assert set(rows[0]) == {"id", "sha256", "label", "previous", "user", "time", "model_version"}

    first.close()
    reopened = journals("first")  # same folder: files already on the Hub are not duplicated
    assert reopened.flush(timeout=20)
    assert len(reopened.replay()[0]) == 4
    assert hub.repo(DATASET, "dataset").files() == files


def test_current_labels_load_with_datasets(hub, journals, tmp_path):
    (a, png_a), (b, png_b) = image(4), image(5)
    writer = journals("writer")
    writer.append([change(a, "daisy", time="2026-01-01T10:00:00Z"), change(b, "rose", time="2026-01-01T10:00:01Z")],
                  {a: png_a, b: png_b})
    writer.append([change(a, "tulip", previous="daisy", time="2026-01-01T10:00:02Z")], {})
    assert writer.flush(timeout=20)

    local = snapshot_download(DATASET, repo_type="dataset", endpoint=hub.endpoint, token=TOKEN,
                              local_dir=tmp_path / "clone")
    loaded = datasets.load_dataset(local, split="train", cache_dir=str(tmp_path / "datasets_cache"))
    assert dict(zip(loaded["sha256"], loaded["label"])) == {a: "tulip", b: "rose"}
    assert loaded[0]["image"].size == (8, 8)


def test_labels_stay_local_and_pending_while_the_hub_fails(hub, journals):
    (a, png_a), (b, png_b) = image(6), image(7)
    journal = journals("flaky", every_minutes=0.01)
    assert journal.flush(timeout=20)  # connected; nothing to push yet
    hub.fail_next(1000, status=503, path_contains="/commit/")
    journal.append([change(a, "daisy"), change(b, "rose")], {a: png_a, b: png_b})
    assert not journal.flush(timeout=5)
    assert journal.pending() == 2
    written = [json.loads(line) for path in (journal.dir / "journal").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert [r["label"] for r in written] == ["daisy", "rose"]  # on disk before any push succeeded

    hub.clear_failures()
    assert journal.flush(timeout=20) and journal.pending() == 0
    assert len(journals("after").replay()[0]) == 2


def test_hub_down_at_start_then_back(hub, journals):
    a, png_a = image(8)
    hub.down = True
    journal = journals("offline-start", every_minutes=0.01)
    journal.append([change(a, "daisy")], {a: png_a})  # never waits for the network
    assert journal.pending() == 1
    with pytest.raises(PlatformError, match="unavailable") as info:
        journals("reader").replay()
    assert TOKEN not in str(info.value)
    hub.clear_failures()
    assert journal.flush(timeout=20)
    assert [r["label"] for r in journals("reader2").replay()[0]] == ["daisy"]


def test_without_token_labels_stay_local(hub, journals, caplog):
    a, png_a = image(9)
    journal = journals("no-token", token=None)
    journal.append([change(a, "daisy")], {a: png_a})
    assert not journal.flush(timeout=1) and journal.pending() == 1
    assert "HF_TOKEN is not set" in caplog.text
    assert hub.repo(DATASET, "dataset") is None


def test_bad_input_is_refused(hub, journals):
    a, png_a = image(10)
    journal = journals("strict")
    with pytest.raises(PlatformError, match="sha256"):
        journal.append([change("not-a-sha", "daisy")], {})
    with pytest.raises(PlatformError, match="do not match"):
        journal.append([change(a, "daisy")], {a: png_a + b"tampered"})
    with pytest.raises(PlatformError, match="ISO-8601"):
        journal.append([change(a, "daisy", time="yesterday")], {a: png_a})
    assert journal.pending() == 0
