"""Prediction with a trained version (classifier/predict.py, embeddings.py): result fields, inputs of
every kind, bad files in a batch, and the on-disk embedding cache."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from classifier.backbone import load_model_and_processor
from classifier.embeddings import EmbeddingCache, FeatureModel
from classifier.live import LiveModel
from classifier.predict import Predictor
from classifier.registry import LocalRegistry
from conftest import CLASS_STYLES, make_image
from test_classifier_pipeline import assert_pipeline_agrees, probe_images

CLASSES = sorted(CLASS_STYLES)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def fresh_images(count_per_class: int = 3, seed: int = 9000) -> list[tuple[str, Image.Image]]:
    """Images the model has never seen, with their true class."""
    return [(name, make_image(kind, color, seed=seed + 10 * c + i))
            for c, (name, (color, kind)) in enumerate(sorted(CLASS_STYLES.items())) for i in range(count_per_class)]


def load_v1(head_version, cache_root) -> Predictor:
    return Predictor.load(head_version.models_dir / "v1", "v1", cache_root, head_version.max_image_pixels)


def count_feature_calls(predictor: Predictor) -> list[int]:
    """Wrap the predictor's FeatureModel.features_of_crops: the list grows by the batch size at every call."""
    calls: list[int] = []
    original = predictor.fm.features_of_crops

    def counting(crops):
        calls.append(len(crops))
        return original(crops)
    predictor.fm.features_of_crops = counting
    return calls


@pytest.fixture(scope="module")
def predictor(head_version, tmp_path_factory) -> Predictor:
    return load_v1(head_version, tmp_path_factory.mktemp("predict-cache"))


def test_results_have_every_field_and_sound_values(predictor):
    labelled = fresh_images()
    results, errors = predictor.predict_batch([img for _, img in labelled], top_k=3)
    assert errors == [] and len(results) == len(labelled)
    for row in results:
        assert set(row) == {"file", "sha256", "label", "confidence", "top_k", "model_version"}
        assert row["model_version"] == "v1"
        assert [t["label"] for t in row["top_k"]] != [] and sorted(t["label"] for t in row["top_k"]) == CLASSES
        scores = [t["score"] for t in row["top_k"]]
        assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] and scores[0] <= 1
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == row["top_k"][0]["label"] and row["confidence"] == scores[0]
    correct = sum(row["label"] == truth for row, (truth, _) in zip(results, labelled))
    assert correct >= 0.8 * len(labelled)


def test_top_k_is_limited(predictor):
    results, _ = predictor.predict_batch([make_image("ellipse", (220, 60, 40), seed=1)], top_k=1)
    assert len(results[0]["top_k"]) == 1
    results, _ = predictor.predict_batch([make_image("ellipse", (220, 60, 40), seed=1)], top_k=10)
    assert len(results[0]["top_k"]) == 3


def test_paths_bytes_and_pil_images_give_the_same_prediction(predictor, tmp_path):
    img = make_image("rectangle", CLASS_STYLES["squares"][0], seed=4242)
    data = encode(img, "PNG")
    path = tmp_path / "square.png"
    path.write_bytes(data)
    results, errors = predictor.predict_batch([str(path), path, data, img])
    assert errors == [] and len(results) == 4
    assert results[0]["file"] == results[1]["file"] == "square.png"
    # Every form is identified by the sha256 of the bytes that were predicted.
    digest = hashlib.sha256(data).hexdigest()
    assert results[0]["sha256"] == results[2]["sha256"] == digest
    assert results[3]["sha256"] == hashlib.sha256(encode(img, "PNG")).hexdigest()
    assert {r["label"] for r in results} == {"squares"}
    assert len({r["confidence"] for r in results}) == 1


def _bomb_png(side: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_every_format_and_mode_is_predicted(predictor, tmp_path):
    circle = make_image("ellipse", CLASS_STYLES["circles"][0], seed=77, size=96)
    rgba = circle.convert("RGBA")
    rotated = circle.resize((96, 64))
    exif = rotated.getexif()
    exif[0x0112] = 6
    gray16 = Image.fromarray((np.asarray(circle.convert("L"), dtype="uint16") * 257))
    files = {
        "a.jpg": encode(circle, "JPEG"), "b.png": encode(circle, "PNG"), "c.webp": encode(circle, "WEBP"),
        "d.gif": encode(circle, "GIF", save_all=True, append_images=[Image.new("RGB", (96, 96))], duration=50),
        "e.bmp": encode(circle, "BMP"), "f.png": encode(circle.convert("L"), "PNG"), "g.png": encode(rgba, "PNG"),
        "h.jpg": encode(circle.convert("CMYK"), "JPEG"), "i.png": encode(gray16, "PNG"),
        "j.jpg": encode(rotated, "JPEG", exif=exif), "k.png": encode(Image.new("RGB", (1, 1), (200, 50, 40)), "PNG"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    results, errors = predictor.predict_batch(sorted(tmp_path.iterdir()))
    assert errors == []
    assert [r["file"] for r in results] == sorted(files)
    by_file = {r["file"]: r for r in results}
    for name in ("a.jpg", "b.png", "c.webp", "d.gif", "e.bmp", "g.png", "h.jpg"):
        assert by_file[name]["label"] == "circles", name


def test_bad_files_are_errors_and_the_rest_of_the_batch_is_predicted(predictor, tmp_path):
    good = [make_image("rectangle", CLASS_STYLES["squares"][0], seed=s) for s in (501, 502)]
    (tmp_path / "good.jpg").write_bytes(encode(good[0], "JPEG"))
    (tmp_path / "cut.jpg").write_bytes(encode(good[1], "JPEG")[:400])
    (tmp_path / "notes.jpg").write_text("not an image at all\n")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(_bomb_png(30_000))
    sources = [tmp_path / "good.jpg", tmp_path / "cut.jpg", tmp_path / "notes.jpg", tmp_path / "empty.png",
               tmp_path / "bomb.png", tmp_path / "missing.jpg", encode(good[1], "PNG")]
    results, errors = predictor.predict_batch(sources)
    assert [r["file"] for r in results] == ["good.jpg", "image"]
    assert {r["label"] for r in results} == {"squares"}
    messages = {e["file"]: e["error"] for e in errors}
    assert set(messages) == {"cut.jpg", "notes.jpg", "empty.png", "bomb.png", "missing.jpg"}
    assert "truncated" in messages["cut.jpg"] and "not a readable image" in messages["notes.jpg"]
    assert "empty" in messages["empty.png"] and "cannot read" in messages["missing.jpg"]
    assert "limit" in messages["bomb.png"] and "pixels" in messages["bomb.png"]
    assert all("Traceback" not in m for m in messages.values())


def test_only_bad_files_give_no_results(predictor):
    results, errors = predictor.predict_batch([b"", b"junk"])
    assert results == [] and len(errors) == 2


def test_same_images_are_embedded_once_and_the_cache_survives_a_restart(head_version, tmp_path):
    cache_root = tmp_path / "embeddings"
    images = [img for _, img in fresh_images(2, seed=31000)]
    first = load_v1(head_version, cache_root)
    calls = count_feature_calls(first)
    results1, _ = first.predict_batch(images + images[:2])  # duplicates inside a batch are embedded once
    assert sum(calls) == len(images)
    results2, _ = first.predict_batch(images)
    assert sum(calls) == len(images)
    assert [r["top_k"] for r in results2] == [r["top_k"] for r in results1[:len(images)]]
    assert len(results1) == len(images) + 2

    restarted = load_v1(head_version, cache_root)
    restarted_calls = count_feature_calls(restarted)
    results3, _ = restarted.predict_batch(images)
    assert restarted_calls == []
    assert [r["top_k"] for r in results3] == [r["top_k"] for r in results2]
    assert list(cache_root.iterdir()) == [cache_root / restarted.fm.cache_key]
    assert len(EmbeddingCache(cache_root, restarted.fm.cache_key)) == len(images)


def test_cache_key_holds_backbone_id_and_resolution(head_version, tmp_path):
    cache_root = tmp_path / "embeddings"
    images = [img for _, img in fresh_images(1, seed=32000)]
    folder = head_version.models_dir / "v1"
    base = load_v1(head_version, cache_root)
    res = base.fm.resolution
    assert base.fm.backbone_id in base.fm.cache_key and f"{res}px" in base.fm.cache_key
    base.predict_batch(images)

    def predictor_with(backbone_id: str, resolution: int) -> Predictor:
        model, processor = load_model_and_processor(str(folder))
        processor.crop_size = {"height": resolution, "width": resolution}
        return Predictor("v1", FeatureModel(model, processor, backbone_id, base.fm.precision), cache_root, 10**8)

    same = predictor_with(base.fm.backbone_id, res)
    other_resolution = predictor_with(base.fm.backbone_id, res + 32)
    other_backbone = predictor_with("another-backbone", res)
    counts = {}
    for name, p in (("same", same), ("resolution", other_resolution), ("backbone", other_backbone)):
        calls = count_feature_calls(p)
        p.predict_batch(images)
        counts[name] = sum(calls)
    assert counts == {"same": 0, "resolution": len(images), "backbone": len(images)}
    assert len(list(cache_root.iterdir())) == 3


def test_training_fills_the_cache_that_prediction_uses(head_version, dataset_dir):
    """v1 was trained in head mode: its training images are already embedded under DATA_DIR/embeddings."""
    predictor = load_v1(head_version, head_version.embeddings_dir)
    calls = count_feature_calls(predictor)
    results, errors = predictor.predict_batch(sorted(dataset_dir.rglob("*.jpg")))
    assert len(results) == 30 and errors == [] and calls == []


def test_live_model_serves_the_active_version(head_version):
    live = LiveModel(LocalRegistry(head_version.models_dir), head_version)
    predictor = live.require()
    assert predictor.version == "v1" and predictor.labels == CLASSES
    assert live.current() is predictor and live.warning is None


def input_shapes(predictor: Predictor) -> list[tuple]:
    """Wrap the predictor's FeatureModel.features_of_crops: the list grows by each batch's crop shape."""
    shapes: list[tuple] = []
    original = predictor.fm.features_of_crops

    def recording(crops):
        shapes.append(tuple(crops.shape))
        return original(crops)
    predictor.fm.features_of_crops = recording
    return shapes


@pytest.mark.parametrize("resolution", [None, 96])
def test_a_version_records_its_input_choice_and_prediction_uses_it(resolution, settings, dataset_dir):
    """Head mode's input resolution (default: HEAD_RESOLUTION, chosen on validation data) and precision are in
    version.json and the model card, and the loaded version computes features at that size."""
    from classifier import runtime
    from training.config import HEAD_PRECISION, HEAD_RESOLUTION, TrainConfig
    from training.data import load_samples
    from training.run import train_version
    registry = LocalRegistry(settings.models_dir)
    version = train_version(load_samples(dataset_dir).samples, TrainConfig(mode="head", resolution=resolution),
                            settings, registry)["version"]
    expected = resolution or HEAD_RESOLUTION
    precision = HEAD_PRECISION if runtime.bfloat16_native() else "float32"  # per machine, recorded
    folder = settings.models_dir / version
    info = json.loads((folder / "version.json").read_text())
    assert (info["resolution"], info["precision"]) == (expected, precision)
    assert json.loads((folder / "params.json").read_text())["resolution"] == resolution  # as asked; None = default
    assert f"Input: {expected} px, {precision}" in (folder / "README.md").read_text()
    predictor = LiveModel(registry, settings).require()
    assert predictor.runtime["resolution"] == expected and predictor.runtime["precision"] == precision
    shapes = input_shapes(predictor)
    results, errors = predictor.predict_batch([img for _, img in fresh_images(1, seed=33000)])
    assert errors == [] and len(results) == len(CLASSES)
    assert shapes and {s[1:] for s in shapes} == {(expected, expected, 3)}
    # the saved processor reads images the same way at that size: a stock pipeline agrees (non-square images too)
    assert_pipeline_agrees(folder, version, probe_images())
