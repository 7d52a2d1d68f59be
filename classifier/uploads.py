"""Turn what a user uploaded (image files, .zip archives) into images, enforcing the batch limit.

Archives are read in memory: entry names are only ever shown as names, never used as paths, so
``../x.jpg`` or absolute entries cannot write anywhere. Nested archives and oversized entries are skipped.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path, PurePosixPath

from classifier.images import IMAGE_SUFFIXES, ImageInput, read_input
from settings import PlatformError

MAX_ENTRY_BYTES = 50 * 1024 * 1024
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
UNREADABLE_ENTRY = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)
"""What reading one damaged, encrypted or oddly compressed archive entry raises."""


def _zip_images(path: Path, errors: list[dict]) -> list[ImageInput]:
    out, total = [], 0
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        errors.append({"file": path.name, "error": f"{path.name}: not a readable .zip file"})
        return out
    with archive:
        for member in archive.infolist():
            name = PurePosixPath(member.filename.replace("\\", "/")).name
            if member.is_dir() or not name or name.startswith("."):
                continue
            suffix = PurePosixPath(name).suffix.lower()
            if suffix == ".zip":
                errors.append({"file": name, "error": f"{name}: archives inside archives are not opened"})
                continue
            if suffix not in IMAGE_SUFFIXES:
                errors.append({"file": name, "error": f"{name}: not an image file"})
                continue
            if member.file_size > MAX_ENTRY_BYTES or total + member.file_size > MAX_ARCHIVE_BYTES:
                errors.append({"file": name, "error": f"{name}: too large once unpacked"})
                continue
            try:
                with archive.open(member) as fh:
                    data = fh.read(MAX_ENTRY_BYTES + 1)
            except UNREADABLE_ENTRY:  # bad CRC or sizes (a lying header), corrupt stream, encrypted, odd method
                errors.append({"file": name, "error": f"{name}: damaged or unsupported entry in the archive"})
                continue
            if len(data) > MAX_ENTRY_BYTES:  # the header lied about the size (zip bomb)
                errors.append({"file": name, "error": f"{name}: too large once unpacked"})
                continue
            total += len(data)
            out.append(ImageInput.from_bytes(data, name))
    return out


def expand_uploads(sources, max_batch: int) -> tuple[list[ImageInput], list[dict]]:
    """Images from files and .zip archives; more than ``max_batch`` images is refused as a whole."""
    sources = [s for s in (sources or []) if s is not None]
    if not sources:
        raise PlatformError("No images were given: upload image files or a .zip of images")
    images: list[ImageInput] = []
    errors: list[dict] = []
    for src in sources:
        path = Path(src) if isinstance(src, (str, Path)) else None
        if path is not None and path.suffix.lower() == ".zip":
            images += _zip_images(path, errors)
        else:
            try:
                images.append(read_input(src))
            except PlatformError as exc:
                errors.append({"file": path.name if path else "image", "error": str(exc)})
        if len(images) > max_batch:
            raise PlatformError(f"Too many images: at most {max_batch} per batch; "
                                f"split the upload into batches of {max_batch} or fewer")
    if not images and not errors:
        raise PlatformError("No images were found in the upload")
    return images, errors
