"""The audit as a user meets it: ``python -m labeling audit --json`` and the engine's review actions
(accept a suggestion, keep one of a duplicate set), on real images, the real backbone and the embedded
database."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from settings import load_settings

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {"file", "sha256", "given", "suggested", "kind", "score"}


def noisy_dataset(dest: Path) -> Path:
    """60 Fashion-MNIST images (trousers, bags, sneakers; 150-px JPEGs) in class folders, with one pair of trousers
    filed under bags, an identical copy of one sneaker file and a re-encoded (quality 70), rescaled (−10 %)
    copy of another."""
    from bench.data import load_split, to_jpeg
    images, labels = load_split("train")
    for cls, name in ((1, "trousers"), (8, "bags"), (7, "sneakers")):
        (dest / name).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == cls)[:20]):
            (dest / name / f"{name}_{i}.jpg").write_bytes(to_jpeg(images[index]))
    (dest / "trousers" / "trousers_0.jpg").rename(dest / "bags" / "moved_trousers_0.jpg")
    shutil.copy(dest / "sneakers" / "sneakers_0.jpg", dest / "sneakers" / "copy_of_sneakers_0.jpg")
    with Image.open(dest / "sneakers" / "sneakers_1.jpg") as img:
        buffer = io.BytesIO()
        img.resize((135, 135)).save(buffer, "JPEG", quality=70)
    (dest / "sneakers" / "rescaled_sneakers_1.jpg").write_bytes(buffer.getvalue())
    return dest


@pytest.mark.slow
def test_audit_cli_prints_one_json_object_per_flagged_image_then_a_summary(tmp_path, settings):
    data = noisy_dataset(tmp_path / "noisy")
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "HF_TOKEN", "HUB_DATASET_ID", "DATASET")}
    env["DATA_DIR"] = str(settings.data_dir)
    result = subprocess.run([sys.executable, "-m", "labeling", "audit", "--data", str(data), "--json"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert set(summary) == {"estimated_issues", "audited", "seconds"}
    assert summary["audited"] == 61  # 62 files, two of them identical
    assert summary["estimated_issues"] >= 1 and summary["seconds"] > 0
    assert rows and all(set(r) == ROW_KEYS for r in rows)
    assert all(r["kind"] in ("label", "duplicate", "outlier") for r in rows)
    kinds = [r["kind"] for r in rows]
    assert kinds == sorted(kinds, key=["duplicate", "label", "outlier"].index), "worst first: duplicates, labels, outliers"
    for kind in set(kinds):
        scores = [r["score"] for r in rows if r["kind"] == kind]
        assert scores == sorted(scores, reverse=True)
    moved = next(r for r in rows if r["file"] == "moved_trousers_0.jpg")
    assert (moved["kind"], moved["given"], moved["suggested"]) == ("label", "bags", "trousers")
    assert moved == max((r for r in rows if r["kind"] == "label"), key=lambda r: r["score"])
    duplicates = {r["file"] for r in rows if r["kind"] == "duplicate"}
    assert duplicates == {"sneakers_0.jpg", "sneakers_1.jpg"}  # each set's other member is the one kept


@pytest.fixture
def audited_engine(tmp_path, settings):
    from engine import Engine
    data = noisy_dataset(tmp_path / "noisy")
    engine = Engine(load_settings({"DATA_DIR": str(settings.data_dir), "DATASET": str(data)}))
    yield engine, engine.audit()
    engine.close()


def test_accept_suggestion_saves_a_human_label_with_history_and_undo_restores_the_given_one(audited_engine):
    engine, result = audited_engine
    row = next(r for r in result["items"] if r["file"] == "moved_trousers_0.jpg")
    done = engine.audit_accept([{"sha256": row["sha256"], "label": row["suggested"]}], user="ana")
    store = engine.store()
    assert done["saved"] == 1 and store.current_labels()[row["sha256"]] == "trousers"
    change = store.history(row["sha256"])[0]
    assert (change["previous"], change["label"], change["user"]) == (None, "trousers", "ana")
    assert not any(r["sha256"] == row["sha256"] and r["kind"] == "label" for r in engine.audit()["items"])

    engine.audit_undo(done["undo"], user="ana")
    assert store.current_labels()[row["sha256"]] == "bags"
    assert [h["label"] for h in store.history(row["sha256"])] == ["bags", "trousers"]


def test_keep_one_excludes_the_other_copies_from_training_and_undo_brings_them_back(audited_engine):
    from training.data import drop_excluded, load_samples
    engine, result = audited_engine
    row = next(r for r in result["items"] if r["kind"] == "duplicate" and r["file"] == "sneakers_1.jpg")
    done = engine.audit_keep_one(row["duplicate_of"], [row["sha256"]], user="ben")
    store = engine.store()
    assert store.excluded() == {row["sha256"]}
    assert store.decisions()[row["duplicate_of"]] == "keep"
    removal = store.decision_history(row["sha256"])[0]
    assert (removal["decision"], removal["duplicate_of"], removal["user"]) == ("remove", row["duplicate_of"], "ben")
    samples = load_samples(engine.settings.dataset).samples
    assert row["sha256"] not in {s.sha256 for s in drop_excluded(samples, store.excluded())}
    assert not any(r["sha256"] == row["sha256"] for r in engine.audit()["items"])

    engine.audit_undo(done["undo"], user="ben")
    assert store.excluded() == set() and row["duplicate_of"] not in store.decisions()
    assert [h["decision"] for h in store.decision_history(row["sha256"])] == ["clear", "remove"]


def test_review_queue_ranks_every_predicted_image_and_badges_a_near_copy_of_a_labelled_one(audited_engine, tmp_path):
    engine, _ = audited_engine
    folder = Path(engine.settings.dataset) / "sneakers"
    with Image.open(folder / "sneakers_2.jpg") as img:
        img.resize((160, 160)).save(tmp_path / "new_copy.jpg", "JPEG", quality=70)
    batch = engine.predict([str(tmp_path / "new_copy.jpg"), str(folder / "sneakers_3.jpg"),
                            str(Path(engine.settings.dataset) / "trousers" / "trousers_5.jpg")])
    queue = engine.review_queue(batch["results"])
    assert sorted(q["rank"] for q in queue.values()) == [1, 2, 3]
    by_file = {r["file"]: queue[r["sha256"]] for r in batch["results"]}
    assert {"kind": "duplicate", "text": "near-duplicate of sneakers_2.jpg (sneakers)"} in by_file["new_copy.jpg"]["badges"]
    assert not any("sneakers_3.jpg" in b["text"] for b in by_file["sneakers_3.jpg"]["badges"])  # not its own twin
    assert all(b["kind"] in ("label", "duplicate", "outlier") for q in queue.values() for b in q["badges"])


def test_a_serving_engine_prepares_the_review_order_before_the_first_batch(tmp_path, settings):
    """Engine.serving() (called once the server answers) loads what ranking a batch needs in the background (the
    first browser upload paid 0.4 s for it): the first prediction's review queue finds the labelled set already
    gathered. Nothing is built before it."""
    from engine import Engine
    engine = Engine(load_settings({"DATA_DIR": str(settings.data_dir), "DATASET": str(noisy_dataset(tmp_path / "noisy"))}))
    try:
        engine.start()
        engine.serving()
        engine.warming.join(120)
        prepared = engine._audit_cache
        assert prepared is not None and len(prepared[1].entries) > 0
        engine._labelled_set(embed_missing=False)
        assert engine._audit_cache is prepared  # the request path reuses it
    finally:
        engine.close()


def test_label_by_cluster_offers_close_unreviewed_images_of_the_old_prediction_and_undo_reverts_them(tmp_path, settings):
    """Sneakers (a class the labelled set lacks) predicted as bags: correcting one offers the other sneakers
    predicted bags that nobody reviewed, never the real bags, the human-labelled or touched ones, or images
    predicted otherwise; accepting saves human labels, and reverting them (the grid's undo) leaves the history."""
    from bench.data import load_split, to_jpeg
    from engine import Engine
    from settings import PlatformError
    images, labels = load_split("train")
    labelled = tmp_path / "labelled"
    for cls, name in ((1, "trousers"), (8, "bags")):
        (labelled / name).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == cls)[:12]):
            (labelled / name / f"{name}_{i}.jpg").write_bytes(to_jpeg(images[index]))
    batch_dir = tmp_path / "batch"
    batch_dir.mkdir()
    for cls, name, count in ((7, "sneaker", 8), (8, "bag", 6)):
        for i, index in enumerate(np.flatnonzero(labels == cls)[100:100 + count]):
            (batch_dir / f"{name}_{i}.jpg").write_bytes(to_jpeg(images[index]))
    engine = Engine(load_settings({"DATA_DIR": str(settings.data_dir), "DATASET": str(labelled)}))
    try:
        engine.audit()  # embeds the labelled set, as training a version would
        batch = engine.predict(sorted(str(p) for p in batch_dir.iterdir()))  # no version yet: stored, not predicted
        sha = {r["file"]: r["sha256"] for r in batch["results"]}
        sneakers = [sha[f"sneaker_{i}.jpg"] for i in range(8)]
        bags = [sha[f"bag_{i}.jpg"] for i in range(6)]
        # what an earlier version predicted: every bag and sneaker as bags, except two sneakers as trousers
        results = [{"sha256": s, "label": "trousers" if s in sneakers[6:] else "bags"} for s in sneakers + bags]
        engine.save_labels([{"sha256": sneakers[1], "label": "sneakers"}], user="ana")  # reviewed earlier
        engine.set_label(sneakers[0], "sneakers", user="ana", expected_revision=0)  # the correction
        store = engine.store()
        history_before = len(store.history())

        offer = engine.similar_unreviewed(sneakers[0], "bags", results, reviewed=[sneakers[2]])
        offered = [o["sha256"] for o in offer]
        assert offered and set(offered) <= set(sneakers[3:6]), [(o, o in bags) for o in offered]
        assert [o["similarity"] for o in offer] == sorted((o["similarity"] for o in offer), reverse=True)
        assert len(store.history()) == history_before  # asking writes nothing
        unknown = {"sha256": "0" * 64, "label": "bags"}  # a row the store never saw is skipped, junk refused
        assert engine.similar_unreviewed(sneakers[0], "bags", results + [unknown], reviewed=[sneakers[2]]) == offer
        with pytest.raises(PlatformError):
            engine.similar_unreviewed(sneakers[0], None, results)

        for s in offered:  # accepting: one per-edit save each, as the grid sends them
            assert engine.set_label(s, "sneakers", user="ana", expected_revision=0)["status"] == "saved"
        assert not set(offered) & {o["sha256"] for o in engine.similar_unreviewed(sneakers[0], "bags", results)}
        for s in offered:  # the grid's one undo of the group
            assert engine.set_label(s, None, user="ana", expected_revision=1)["status"] == "saved"
        current = store.current_labels()
        assert current[sneakers[0]] == current[sneakers[1]] == "sneakers"
        assert not set(offered) & set(current)
        for s in offered:
            assert [(h["label"], h["previous"], h["user"]) for h in store.history(s)] == [
                (None, "sneakers", "ana"), ("sneakers", None, "ana")]
    finally:
        engine.close()
