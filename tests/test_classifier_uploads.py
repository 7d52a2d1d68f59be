"""Uploads and large photos (classifier/uploads.py, classifier/images.py): the per-image and the archive size
limits apply separately, archive entries are hashed as read, and a phone-sized JPEG is decoded at reduced size."""
from __future__ import annotations

import hashlib
import io
import os
import zipfile

import pytest
from PIL import Image, ImageFile

from classifier.embeddings import Embedder
from classifier.images import ImageInput, decode
from classifier.uploads import expand_uploads
from settings import PlatformError

MB = 1024 * 1024


def _noise_file(path, size: int):
    path.write_bytes(os.urandom(size))  # expand_uploads reads and hashes; it never decodes
    return path


def test_an_archive_over_the_per_image_limit_is_accepted_under_its_own_limit(tmp_path):
    parts = [_noise_file(tmp_path / f"photo{i}.jpg", MB // 2) for i in range(3)]
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in parts:
            zf.write(p, p.name)
    assert archive.stat().st_size > MB  # over the per-image limit below
    images, errors = expand_uploads([archive], max_batch=8, max_image_mb=1, max_archive_mb=2)
    assert errors == []
    assert [i.name for i in images] == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    assert [i.sha256 for i in images] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in parts]


def test_a_file_over_the_per_image_limit_and_an_archive_over_its_limit_are_error_rows(tmp_path):
    big = _noise_file(tmp_path / "big.jpg", MB + 1)
    small = _noise_file(tmp_path / "small.jpg", 1000)
    archive = tmp_path / "huge.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.jpg", os.urandom(MB - 10))
        zf.writestr("b.jpg", os.urandom(MB - 10))
    images, errors = expand_uploads([small, big, archive], max_batch=8, max_image_mb=1, max_archive_mb=1)
    assert [i.name for i in images] == ["small.jpg"]
    assert errors == [{"file": "big.jpg", "error": "big.jpg: the file is over the per-image limit of 1 MB (MAX_UPLOAD_MB)"},
                      {"file": "huge.zip", "error": "huge.zip: the archive is over the limit of 1 MB (MAX_ARCHIVE_MB); split it"}]


def test_large_files_and_entries_are_hashed_as_they_stream_and_not_held_in_memory(tmp_path):
    big, small = _noise_file(tmp_path / "big.jpg", 3 * MB), _noise_file(tmp_path / "small.jpg", 1000)
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.write(big, "entry.jpg")
    images, errors = expand_uploads([big, small, archive], max_batch=8, max_image_mb=4)
    assert errors == []
    by_name = {i.name: i for i in images}
    for name in ("big.jpg", "entry.jpg"):
        image = by_name[name]
        assert image._data == b"" and image.size == 3 * MB  # nothing held: read from the upload when needed
        assert image.data == big.read_bytes() and image.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert by_name["small.jpg"]._data == small.read_bytes()
    big.unlink()
    with pytest.raises(PlatformError, match="no longer readable"):
        by_name["big.jpg"].data  # noqa: B018


def _phone_jpeg() -> ImageInput:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((4032, 3024)).convert("RGB").save(buf, "JPEG", quality=90)
    return ImageInput.from_bytes(buf.getvalue(), "phone.jpg")


def test_a_phone_photo_is_decoded_at_reduced_size_on_the_prediction_path(backbone_dir):
    from classifier.backbone import load_model_and_processor
    from classifier.embeddings import FeatureModel
    photo = _phone_jpeg()
    assert decode(photo, 40_000_000).size == (4032, 3024)
    # JPEG draft scales by 1/2, 1/4 or 1/8 while keeping both sides ≥ the requested size
    assert decode(photo, 40_000_000, draft_size=224).size == (504, 378)
    model, processor = load_model_and_processor(str(backbone_dir))
    embedder = Embedder(FeatureModel(model, processor, "test"), None, 40_000_000)
    seen = []
    original = ImageFile.ImageFile.load

    def spy(img):  # the size each decode produces, without changing it
        out = original(img)
        seen.append(img.size)
        return out
    try:
        ImageFile.ImageFile.load = spy
        feats, failed = embedder.embed([photo])
    finally:
        ImageFile.ImageFile.load = original
    assert not failed and feats[photo.sha256].ndim == 1
    assert set(seen) == {(504, 378)}  # decoded at 1/8 scale: never 12 MP of pixels
