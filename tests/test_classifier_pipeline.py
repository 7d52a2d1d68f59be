"""A saved version is a stock Hugging Face checkpoint: ``transformers.pipeline`` loads it as it is and
agrees with our own Predictor."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import pipeline

from classifier.backbone import load_model_and_processor
from classifier.embeddings import FeatureModel
from classifier.images import read_input
from classifier.predict import Predictor
from conftest import CLASS_STYLES, make_image


def probe_images() -> list[Image.Image]:
    """Clear cases, non-square ones (resize + crop must match) and ambiguous ones (scores far from 0/1)."""
    clear = [make_image(kind, color, seed=600 + i) for i, (color, kind) in enumerate(CLASS_STYLES.values())]
    wide = make_image("rectangle", CLASS_STYLES["squares"][0], seed=610, size=96).resize((150, 70))
    tall = make_image("stripes", CLASS_STYLES["stripes"][0], seed=611, size=96).resize((50, 120))
    blend = Image.blend(clear[0], clear[2], 0.5)
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    return clear + [wide, tall, blend, grey]


def float32_twin(folder: Path, version: str) -> Predictor:
    """The version computing its features in float32, the stock pipeline's arithmetic (a head version of the
    bundled backbone serves in bfloat16-mixed where the CPU has native bfloat16)."""
    model, processor = load_model_and_processor(str(folder))
    return Predictor(version, FeatureModel(model, processor, "twin", "float32"), None, 10**8)


def assert_pipeline_agrees(folder: Path, version: str, images: list[Image.Image]) -> None:
    """Same top-1 as the version as served; same scores (1e-3) as its float32 arithmetic: the saved processor
    reads images exactly as ours does."""
    classify = pipeline("image-classification", model=str(folder))
    served = Predictor.load(folder, version, None, 10**8)
    ours, errors = float32_twin(folder, version).predict_batch(images, top_k=len(served.labels))
    as_served, _ = served.predict_batch(images, top_k=len(served.labels))
    assert errors == []
    for image, row, live in zip(images, ours, as_served):
        theirs = classify(image, top_k=len(served.labels))
        assert theirs[0]["label"] == row["label"] == live["label"]
        assert theirs[0]["score"] == pytest.approx(row["confidence"], abs=1e-3)
        assert {t["label"]: t["score"] for t in theirs} == pytest.approx(
            {t["label"]: t["score"] for t in row["top_k"]}, abs=1e-3)


def test_head_version_loads_in_a_plain_pipeline_and_agrees(head_version):
    folder = head_version.models_dir / "v1"
    images = probe_images()
    assert_pipeline_agrees(folder, "v1", images)
    classify = pipeline("image-classification", model=str(folder))
    assert classify.model.config.id2label == {0: "circles", 1: "squares", 2: "stripes"}
    # Scores of a confident head saturate near 1; raw logits show whether preprocessing really matches.
    predictor = float32_twin(folder, "v1")
    feats, _ = predictor.embedder.embed([read_input(i) for i in images])
    for image in images:
        with torch.inference_mode():
            ours = predictor.fm.logits(torch.from_numpy(feats[read_input(image).sha256][None]))[0]
        theirs = {t["label"]: t["score"] for t in classify(image, top_k=3, function_to_apply="none")}
        assert [theirs[label] for label in predictor.labels] == pytest.approx(ours.tolist(), abs=1e-2)
