"""The audit's arithmetic on synthetic embeddings, and the data-health card every version carries."""
from __future__ import annotations

import json

import numpy as np

from training import audit, review_queue


def clustered(per_class: int = 60, classes: int = 4, dims: int = 64, seed: int = 0):
    """Embeddings in well-separated clusters (non-negative, like pooled ReLU features) and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 2.0, (classes, dims))
    y = np.repeat(np.arange(classes), per_class)
    return np.abs(centres[y] + rng.normal(0, 1.0, (len(y), dims))).astype(np.float32), y


def test_flipped_labels_rank_first_and_near_copies_form_one_set():
    x, y = clustered()
    noisy = y.copy()
    flipped = np.array([3, 70, 150, 200])
    noisy[flipped] = (y[flipped] + 1) % 4
    x[5] = x[4] * 1.01  # a near copy: same direction, cosine similarity 1
    result = audit.audit_labels(x, noisy, 4, shas=[f"s{i}" if i != 9 else "s8" for i in range(len(y))])
    assert set(np.argsort(-result.score)[:4]) == set(flipped)
    assert len(flipped) / 2 <= result.estimated_issues <= 2 * len(flipped)  # the confident joint is conservative
    assert list(result.suggested[flipped]) == list(y[flipped])
    assert [4, 5] in result.duplicates and [8, 9] in result.duplicates  # near copy; identical bytes


def test_review_order_puts_outliers_and_doubtful_predictions_first_and_cold_start_spreads_over_clusters():
    everything, labels = clustered(per_class=65)
    is_new = np.arange(len(labels)) % 65 >= 60  # 5 new images per class, in class order
    x, y, new = everything[~is_new], labels[~is_new], everything[is_new]
    new[0] = np.zeros(64, np.float32)
    new[0][:3] = 5.0  # unlike anything labelled
    probs = np.tile(np.array([0.97, 0.01, 0.01, 0.01], np.float32), (len(new), 1))
    probs[7] = [0.40, 0.38, 0.11, 0.11]
    order, wrongness, outlier = review_queue.review_order(probs, new, x, y, 4)
    assert outlier[0] and order[0] == 0 and order[1] == 7
    cold, _, _ = review_queue.review_order(None, new, x[:3], y[:3], 4)
    first_four = {int(i) // 5 for i in cold[:4] if i != 0}
    assert len(first_four) >= 3  # typical examples of different clusters first


def test_the_head_of_the_review_queue_shows_one_of_a_run_of_near_repeats():
    everything, labels = clustered(per_class=70)
    is_new = np.arange(len(labels)) % 70 >= 60  # 10 new images per class
    x, y, new = everything[~is_new], labels[~is_new], everything[is_new].copy()
    rng = np.random.default_rng(1)
    repeats = np.arange(10, 20)  # class 1's new images become near copies of one
    new[repeats] = new[10] * rng.uniform(0.98, 1.02, (10, new.shape[1]))
    probs = np.tile(np.array([0.97, 0.01, 0.01, 0.01], np.float32), (len(new), 1))
    probs[repeats] = [0.40, 0.38, 0.11, 0.11]  # the most doubtful predictions are all the same image
    probs[[0, 25, 35]] = [0.60, 0.30, 0.05, 0.05]  # less doubtful, each different
    order, wrongness, _ = review_queue.review_order(probs, new, x, y, 4)
    assert sorted(order) == list(range(len(new)))
    assert np.isin(order[:10], repeats).sum() == 1 and set(order[1:4]) == {0, 25, 35}
    assert set(order[10:19]) | {order[0]} == set(repeats)  # the passed-over repeats come right after the head


def test_with_few_labels_the_head_of_the_queue_covers_the_largest_groups_no_label_covers_yet():
    rng = np.random.default_rng(2)
    centres = np.abs(rng.normal(0, 1, (4, 32)))
    sizes = [30, 20, 10, 5]  # group 0 is the one the labels cover
    group = np.repeat(np.arange(4), sizes)
    new = (centres[group] + rng.normal(0, 0.05, (len(group), 32))).astype(np.float32)
    x = (centres[[0, 0, 0]] + rng.normal(0, 0.05, (3, 32))).astype(np.float32)
    probs = np.tile(np.array([0.55, 0.45], np.float32), (len(new), 1))
    probs[group == 0] = [0.51, 0.49]  # the covered group is the most doubtful: the head passes it over anyway
    order, _, _ = review_queue.review_order(probs, new, x, np.zeros(3, np.int64), 2)
    assert sorted(order) == list(range(len(new)))
    assert list(group[order[:3]]) == [1, 2, 3] and group[order[3]] == 0


def test_every_version_carries_a_data_health_card_with_the_change_since_the_previous(settings, dataset_dir):
    from classifier.registry import LocalRegistry
    from training.config import TrainConfig
    from training.data import Sample, load_samples
    from training.run import train_version
    registry = LocalRegistry(settings.models_dir)
    samples = load_samples(dataset_dir).samples
    wrong = [Sample(s.sha256, "squares", s.name, s.read) if s.name == "circles_0.jpg" else s for s in samples]
    train_version(wrong, TrainConfig(mode="head", epochs=5), settings, registry)
    second = train_version(samples, TrainConfig(mode="head", epochs=5), settings, registry)
    folder = registry.get(second["version"]).path
    health = json.loads((folder / "metrics.json").read_text())["data_health"]
    assert health["computed"] and health["audited"] == 30
    assert {name: row["count"] for name, row in health["per_class"].items()} == {"circles": 10, "squares": 10, "stripes": 10}
    assert 0 <= health["estimated_noise_rate"] <= 1 and 0 <= health["oof_accuracy"] <= 1
    since = health["since_previous"]
    assert since["version"] == "v1" and since["per_class_counts"] == {"circles": 1, "squares": -1}
    first = json.loads((registry.get("v1").path / "metrics.json").read_text())["data_health"]
    fixed = int(any(f["sha256"] == next(s.sha256 for s in samples if s.name == "circles_0.jpg") for f in first["flagged"]))
    assert since["issues_fixed"] == fixed
    card = (folder / "README.md").read_text()
    assert "## Data health" in card and "estimated label-noise rate" in card and "issues fixed since v1" in card
    assert "| circles | 10 |" in card
