"""Read and decode images robustly: paths, bytes or PIL images → RGB pixels, with a decoded-size cap.

Handles JPEG/PNG/WebP/GIF/BMP/TIFF, grayscale, palette, RGBA/LA (composited on white), CMYK, 16-bit,
and EXIF orientation. Anything undecodable raises :class:`settings.PlatformError` naming the file.
"""
from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from settings import PlatformError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


LARGE_FILE_BYTES = 1 << 20
"""Files at least this large (phone photos) are hashed as they stream in and read again when needed, instead of
being held in memory from upload until the store has them: 128 phone photos are about 480 MB of bytes."""
READ_BLOCK = 1 << 20


class ImageInput:
    """An image as received: where it came from (data only, never a path we write to), bytes, sha256 hex.

    ``data`` is the bytes; for a large file they are read from it on each use (see :data:`LARGE_FILE_BYTES`),
    and whoever stores them checks them against ``sha256`` (the store does)."""

    __slots__ = ("name", "sha256", "size", "_data", "_read")

    def __init__(self, name: str, data: bytes = b"", sha256: str = "", read=None, size: int | None = None):
        self.name, self.sha256, self._data, self._read = name, sha256, data, read
        self.size = len(data) if size is None else size
        """Bytes (as first read)."""

    @property
    def data(self) -> bytes:
        if self._read is None:
            return self._data
        try:
            return self._read()
        except (OSError, zipfile.BadZipFile, KeyError) as exc:
            raise PlatformError(f"{self.name}: the uploaded file is no longer readable ({exc}); upload it again") from None

    def __repr__(self) -> str:
        return f"ImageInput({self.name!r}, sha256={self.sha256[:12]!r})"

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "image") -> "ImageInput":
        return cls(name=name, data=data, sha256=hashlib.sha256(data).hexdigest())

    @classmethod
    def from_stream(cls, name: str, open_stream, limit: int, reopen=None) -> "ImageInput":
        """An image read from ``open_stream()`` (a binary file object), hashed block by block. At most ``limit``
        + 1 bytes are read (the caller refuses more). From :data:`LARGE_FILE_BYTES` on, the bytes are not kept:
        ``data`` opens the stream again, with ``reopen()`` where given (``open_stream`` may only work now)."""
        digest, blocks, size = hashlib.sha256(), [], 0
        with open_stream() as fh:
            while size <= limit:
                block = fh.read(min(READ_BLOCK, limit + 1 - size))
                if not block:
                    break
                digest.update(block)
                size += len(block)
                if blocks is not None:
                    blocks.append(block)
                    if size >= LARGE_FILE_BYTES:
                        blocks = None
        if blocks is not None:
            return cls(name, b"".join(blocks), digest.hexdigest())

        def read() -> bytes:
            with (reopen or open_stream)() as again:
                return again.read(limit + 1)
        return cls(name, b"", digest.hexdigest(), read=read, size=size)


def read_input(source, name: str | None = None) -> ImageInput:
    """Turn a path, bytes or PIL image into an :class:`ImageInput` (PIL images are stored as PNG)."""
    if isinstance(source, ImageInput):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return ImageInput.from_bytes(bytes(source), name or "image")
    if isinstance(source, Image.Image):
        buf = io.BytesIO()
        source.save(buf, format="PNG")
        return ImageInput.from_bytes(buf.getvalue(), name or "image.png")
    path = Path(source)
    try:
        return ImageInput.from_stream(name or path.name, lambda: open(path, "rb"), path.stat().st_size)
    except OSError as exc:
        raise PlatformError(f"{name or path.name}: cannot read the file ({exc.strerror or exc})") from None


def _flatten(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) grayscale: scale to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        high = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / high * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = (arr.max() - arr.min()) or 1.0
        return Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def decode(image: ImageInput, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode to an RGB PIL image, first frame only, EXIF-rotated.

    ``max_pixels`` caps width × height before any pixel is decoded (decompression bombs);
    ``draft_size`` lets JPEG decoding shrink by a power of two when the image is far larger.
    """
    data = image.data  # once: a large file's bytes are read again from its file or archive on each access
    if not data:
        raise PlatformError(f"{image.name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise PlatformError(
                    f"{image.name}: {width}×{height} pixels is over the limit of {max_pixels:,} pixels")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _flatten(img)
    except PlatformError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard fires inside Image.open, before our check sees the size.
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        raise PlatformError(f"{image.name}: the image is over the limit of {limit:,} pixels") from None
    except UnidentifiedImageError:
        raise PlatformError(f"{image.name}: not a readable image (JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise PlatformError(f"{image.name}: the image is damaged or truncated ({exc})") from None


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` pixels (bilinear) and crop the centre ``size``×``size``."""
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def crop(img: Image.Image, size: int) -> np.ndarray:
    """The model's input before normalising: uint8 (size, size, 3), shorter side resized then centre-cropped."""
    return np.asarray(resize_center_crop(img, size), dtype=np.uint8)


def to_array(img: Image.Image, size: int, mean, std) -> np.ndarray:
    """Pixels as a normalised float32 array of shape (3, size, size)."""
    return normalise_pixels(crop(img, size), mean, std)


def normalise_pixels(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 RGB pixels (..., size, size, 3) → normalised float32, channels first (..., 3, size, size), in numpy:
    finetune and scratch training read images this way. Predictions normalise in torch
    (:meth:`classifier.embeddings.FeatureModel.features_of_crops`), bit for bit the same in float32 (tested)."""
    arr = np.asarray(pixels, dtype=np.float32) * (1.0 / 255.0)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(arr, -1, -3))


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files skipped)."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def save_thumbnail(image: ImageInput, folder: Path, max_pixels: int, size: int = 192) -> Path:
    """Write (once) a small JPEG of the image, at most ``size`` pixels per side, named by its sha256.

    A JPEG that already is one (RGB or grayscale, upright, no side over ``size``) is its own thumbnail: its bytes
    are written as they are. Decoding and encoding it again cost about 1 ms an image on the request's path,
    0.13 s for a batch of 128 150-px photos, for a copy that is no smaller."""
    path = folder / image.sha256[:2] / f"{image.sha256}.jpg"
    if not path.is_file():
        # Only a file held in memory is looked at: a large one's bytes would be read again by decode().
        if image.size < LARGE_FILE_BYTES and _is_small_jpeg(image.data, size):
            data = image.data
        else:
            img = decode(image, max_pixels, draft_size=size)
            img.thumbnail((size, size), Image.Resampling.BILINEAR)
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=85)
            data = out.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def _is_small_jpeg(data: bytes, size: int) -> bool:
    """Whether ``data`` is a JPEG a browser shows as its thumbnail would: RGB or grayscale, no side over ``size``
    pixels, no EXIF rotation (only the header is read)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return (img.format == "JPEG" and img.mode in ("RGB", "L") and max(img.size) <= size
                    and img.getexif().get(0x0112, 1) == 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
