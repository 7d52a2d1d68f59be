"""Reading and decoding images (classifier/images.py): every common format and mode, and bad files."""
from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from classifier.images import (ImageInput, decode, list_image_files, read_input, resize_center_crop, save_thumbnail,
                               to_array)
from settings import PlatformError

LIMIT = 40_000_000


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width``×``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def decoded(data: bytes, name: str = "image") -> Image.Image:
    return decode(ImageInput.from_bytes(data, name), LIMIT)


RED = (220, 30, 30)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_common_formats_decode_to_rgb_pixels(fmt):
    img = decoded(encode(Image.new("RGB", (30, 20), RED), fmt))
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.allclose(img.getpixel((15, 10)), RED, atol=12)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (12, 12), RED), Image.new("RGB", (12, 12), (20, 20, 230))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    img = decoded(data, "anim.gif")
    assert img.mode == "RGB"
    assert np.allclose(img.getpixel((6, 6)), RED, atol=12)


def test_grayscale_and_palette_become_rgb():
    gray = decoded(encode(Image.new("L", (10, 10), 128), "PNG"))
    palette = decoded(encode(Image.new("RGB", (10, 10), RED).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"))
    assert gray.mode == palette.mode == "RGB"
    assert gray.getpixel((5, 5)) == (128, 128, 128)
    assert palette.getpixel((5, 5)) == RED


def test_transparent_pixels_are_composited_on_white():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.putpixel((2, 2), (0, 0, 255, 255))
    out = decoded(encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((2, 2)) == (0, 0, 255)


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG")  # pure red in CMYK
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decoded(data)
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped():
    arr = np.zeros((8, 16), dtype=np.uint16)
    arr[:, 8:] = 32768  # half of the 16-bit range: mid-grey, not white
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decoded(data)
    assert out.mode == "RGB" and out.size == (16, 8)
    assert out.getpixel((2, 2)) == (0, 0, 0)
    assert 120 <= out.getpixel((12, 2))[0] <= 135


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste(RED, (0, 0, 10, 20))  # red band on the left edge
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decoded(encode(img, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    # After a clockwise turn the left edge is at the top.
    assert out.getpixel((10, 2))[0] > 180 and out.getpixel((10, 2))[1] < 90
    assert out.getpixel((10, 37))[1] > 180


def test_one_pixel_image_decodes_and_preprocesses():
    out = decoded(encode(Image.new("RGB", (1, 1), RED), "PNG"))
    assert out.size == (1, 1)
    arr = to_array(out, 32, [0.5] * 3, [0.5] * 3)
    assert arr.shape == (3, 32, 32) and arr.dtype == np.float32 and np.isfinite(arr).all()


@pytest.mark.parametrize("name,data,fragment", [
    ("empty.jpg", b"", "empty"),
    ("notes.jpg", b"this is a text file, not a picture\n" * 4, "not a readable image"),
    ("cut.jpg", encode(Image.new("RGB", (64, 64), RED), "JPEG")[:300], "damaged or truncated"),
])
def test_bad_files_raise_platform_error_naming_the_file(name, data, fragment):
    with pytest.raises(PlatformError) as err:
        decoded(data, name)
    assert name in str(err.value) and fragment in str(err.value)


@pytest.mark.parametrize("side", [30_000, 7_000])  # beyond Pillow's own guard, and only beyond ours
def test_decompression_bomb_is_refused_from_its_header(side):
    data = png_with_header(side, side)
    assert len(data) < 200
    with pytest.raises(PlatformError) as err:
        decoded(data, "bomb.png")
    message = str(err.value)
    assert "bomb.png" in message and "limit" in message and "pixels" in message
    # The header alone fails the check: the pixel data (64 bytes of a claimed 2.7 GB) was never decoded.
    assert "truncated" not in message


def test_pixel_limit_comes_from_the_caller():
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    assert decode(ImageInput.from_bytes(data), 10_000).size == (100, 100)
    with pytest.raises(PlatformError, match="limit of 9,999 pixels"):
        decode(ImageInput.from_bytes(data, "big.png"), 9_999)


def test_read_input_accepts_paths_bytes_and_pil_images(tmp_path):
    data = encode(Image.new("RGB", (8, 8), RED), "JPEG")
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    from_path, from_bytes = read_input(path), read_input(data, name="upload.jpg")
    assert from_path.name == "photo.jpg" and from_path.data == data
    assert from_path.sha256 == from_bytes.sha256 == hashlib.sha256(data).hexdigest()
    from_pil = read_input(Image.new("RGB", (8, 8), RED))
    assert from_pil.sha256 == hashlib.sha256(from_pil.data).hexdigest()
    assert decode(from_pil, LIMIT).getpixel((4, 4)) == RED
    with pytest.raises(PlatformError, match="missing.jpg"):
        read_input(tmp_path / "missing.jpg")


def test_a_small_upright_jpeg_is_its_own_thumbnail_and_others_are_made_smaller(tmp_path):
    small = encode(Image.new("RGB", (150, 150), RED), "JPEG", quality=90)
    assert save_thumbnail(ImageInput.from_bytes(small, "small.jpg"), tmp_path, LIMIT).read_bytes() == small
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° to show
    cases = {"large.jpg": encode(Image.new("RGB", (400, 300), RED), "JPEG"),
             "rotated.jpg": encode(Image.new("RGB", (64, 32), RED), "JPEG", exif=exif.tobytes()),
             "cmyk.jpg": encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"),
             "small.png": encode(Image.new("RGB", (64, 64), RED), "PNG")}
    for name, data in cases.items():
        path = save_thumbnail(ImageInput.from_bytes(data, name), tmp_path, LIMIT)
        assert path.read_bytes() != data, name
        with Image.open(path) as thumb:
            assert thumb.format == "JPEG" and thumb.mode == "RGB" and max(thumb.size) <= 192, name
            if name == "rotated.jpg":
                assert thumb.size == (32, 64)


def test_resize_center_crop_keeps_the_middle():
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste(RED, (100, 0, 200, 100))
    out = resize_center_crop(img, 50)
    assert out.size == (50, 50)
    assert np.allclose(out.getpixel((25, 25)), RED, atol=2)
    assert np.allclose(out.getpixel((1, 25)), RED, atol=2)


def test_list_image_files_skips_hidden_and_other_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.JPG", "a/b/two.png", "a/.hidden.jpg", "a/readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in list_image_files(tmp_path)) == ["one.JPG", "two.png"]
