"""Turn what a user uploaded (image files, .zip archives) into images, enforcing the batch and size limits.

Two size limits apply: one per image (a file, or an archive entry once unpacked: ``MAX_UPLOAD_MB``) and one
per archive (its size, and what its images unpack to: ``MAX_ARCHIVE_MB``), so a .zip of 128 phone photos
travels as one upload while a single 300 MB "image" is still refused. Entry names are only ever shown as
names, never used as paths, so ``../x.jpg`` or absolute entries cannot write anywhere. Nested archives and
oversized entries are skipped; each entry and file is hashed as it is read, and large ones are read again from
the upload when needed instead of being held in memory (:meth:`classifier.images.ImageInput.from_stream`).
"""
from __future__ import annotations

import contextlib
import functools
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from classifier.images import IMAGE_SUFFIXES, ImageInput, read_input
from settings import PlatformError

MB = 1024 * 1024
UNREADABLE_ENTRY = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)
"""What reading one damaged, encrypted or oddly compressed archive entry raises."""


@contextlib.contextmanager
def _open_member(path: Path, member: zipfile.ZipInfo):
    """One archive entry as a binary stream (opened again for each read of a large entry)."""
    with zipfile.ZipFile(path) as archive, archive.open(member) as fh:
        yield fh


def _zip_images(path: Path, errors: list[dict], max_image: int, max_archive: int) -> list[ImageInput]:
    out, total = [], 0
    if path.stat().st_size > max_archive:
        errors.append({"file": path.name, "error": f"{path.name}: the archive is over the limit of "
                                                   f"{max_archive // MB} MB (MAX_ARCHIVE_MB); split it"})
        return out
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
            if member.file_size > max_image or total + member.file_size > max_archive:
                errors.append({"file": name, "error": f"{name}: too large once unpacked"})
                continue
            try:
                # Read through the archive already open; a large entry's later reads open it again (reading the
                # central directory once per entry made 128 entries cost 0.14 s).
                image = ImageInput.from_stream(name, functools.partial(archive.open, member), max_image,
                                               reopen=functools.partial(_open_member, path, member))
            except UNREADABLE_ENTRY:  # bad CRC or sizes (a lying header), corrupt stream, encrypted, odd method
                errors.append({"file": name, "error": f"{name}: damaged or unsupported entry in the archive"})
                continue
            if image.size > max_image:  # the header lied about the size (zip bomb)
                errors.append({"file": name, "error": f"{name}: too large once unpacked"})
                continue
            total += image.size
            out.append(image)
    return out


def expand_uploads(sources, max_batch: int, max_image_mb: int = 50, max_archive_mb: int = 1024
                   ) -> tuple[list[ImageInput], list[dict]]:
    """Images from files and .zip archives; more than ``max_batch`` images is refused as a whole.

    A file over ``max_image_mb`` MB, or an archive over ``max_archive_mb`` MB, becomes an error row (the rest
    of the batch goes on); so does an archive entry over ``max_image_mb`` once unpacked."""
    max_image, max_archive = max_image_mb * MB, max_archive_mb * MB
    sources = [s for s in (sources or []) if s is not None]
    if not sources:
        raise PlatformError("No images were given: upload image files or a .zip of images")
    images: list[ImageInput] = []
    errors: list[dict] = []
    for src in sources:
        path = Path(src) if isinstance(src, (str, Path)) else None
        if path is not None and path.suffix.lower() == ".zip":
            images += _zip_images(path, errors, max_image, max_archive)
        elif path is not None and path.is_file() and path.stat().st_size > max_image:
            errors.append({"file": path.name, "error": f"{path.name}: the file is over the per-image limit of "
                                                       f"{max_image_mb} MB (MAX_UPLOAD_MB)"})
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
