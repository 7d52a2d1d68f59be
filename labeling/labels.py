"""Label names: validation, case canonicalisation and safe directory names.

A label is what a user types for a class ("cat", "forêt", "山"). It is stored as typed
(after :func:`normalize_label`), shown in the UI, written into model configs and used as
a directory name on export, so it must be unambiguous and harmless as a path component.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable
from urllib.parse import unquote

from settings import PlatformError

MAX_LABEL_CHARS = 64
"""Longest label, in Unicode characters after normalisation."""

MAX_DIRNAME_BYTES = 255
"""Longest directory name most file systems accept, in UTF-8 bytes (NAME_MAX)."""

_WHITESPACE_RUN = re.compile(r"\s+")
# Punctuation that is a legal file-name character on Linux, macOS and Windows alike.
_SAFE_PUNCTUATION = frozenset(" _-.,()+&'!=@#~[]")
# Bidirectional overrides and zero-width characters make two labels look identical or
# render misleadingly; joiners (U+200C/U+200D) stay because some scripts need them.
_INVISIBLE_MARKS = frozenset("\u200b\u200e\u200f\u2060\ufeff\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _describe(raw: str) -> str:
    """A short, printable rendering of a (possibly huge or hostile) label for messages."""
    shown = raw if len(raw) <= 40 else raw[:37] + "..."
    return ascii(shown) if any(not ch.isprintable() for ch in shown) else repr(shown)


def normalize_label(raw: str) -> str:
    """Return the canonical spelling of a label typed by a user, or raise PlatformError.

    Trims surrounding whitespace, collapses inner whitespace runs to one space and applies
    Unicode NFC. The result must be 1..64 characters, free of control characters, free of
    ``/`` and ``\\``, and must not be ``.``/``..`` or start with ``.``.
    """
    if not isinstance(raw, str):
        raise PlatformError(f"A label must be text, got {type(raw).__name__}")
    bad = [ch for ch in raw if _is_forbidden_char(ch)]
    if bad:
        raise PlatformError(f"Label {_describe(raw)} contains control characters ({ascii(bad[0])})")
    label = unicodedata.normalize("NFC", _WHITESPACE_RUN.sub(" ", raw).strip())
    if not label:
        raise PlatformError("A label must not be empty")
    if len(label) > MAX_LABEL_CHARS:
        raise PlatformError(f"Label {_describe(label)} is {len(label)} characters long; the limit is {MAX_LABEL_CHARS}")
    if "/" in label or "\\" in label:
        raise PlatformError(f"Label {_describe(label)} must not contain '/' or '\\'")
    if label.startswith("."):
        raise PlatformError(f"Label {_describe(label)} must not start with '.'")
    return label


def canonical_label(raw: str, known_classes: Iterable[str]) -> str:
    """Normalise ``raw`` and map it onto a known class spelled the same apart from case.

    ``canonical_label("CAT", ["cat"]) == "cat"``; a label matching no known class keeps the
    case the user typed. Known classes are compared after normalisation and casefolding.
    """
    label = normalize_label(raw)
    key = label.casefold()
    for known in known_classes:
        if known == label:
            return known
    for known in known_classes:
        if unicodedata.normalize("NFC", known).casefold() == key:
            return known
    return label


def label_to_dirname(label: str) -> str:
    """A directory name for ``label`` that cannot escape its parent directory.

    Letters and digits of any script, space and a few portable punctuation marks are kept;
    every other character (including ``%``) is percent-encoded as UTF-8, so
    :func:`dirname_to_label` reverses it. A name over 255 UTF-8 bytes is cut and given a
    hash suffix so distinct labels stay distinct.
    """
    label = normalize_label(label)
    name = "".join(ch if ch.isalnum() or ch in _SAFE_PUNCTUATION else _percent(ch) for ch in label)
    if name.endswith((" ", ".")):
        # Windows strips trailing spaces and dots from names, which would merge classes.
        name = name[:-1] + _percent(name[-1])
    if len(name.encode("utf-8")) > MAX_DIRNAME_BYTES:
        digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:16]
        encoded = name.encode("utf-8")[: MAX_DIRNAME_BYTES - len(digest) - 1]
        name = encoded.decode("utf-8", errors="ignore") + "~" + digest
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise PlatformError(f"Label {_describe(label)} cannot be used as a directory name")
    return name


def dirname_to_label(name: str) -> str:
    """Inverse of :func:`label_to_dirname` for names that were not shortened."""
    return unquote(name, encoding="utf-8", errors="strict")


def _is_forbidden_char(ch: str) -> bool:
    """Control characters (except tab/newline-like whitespace, which is collapsed) and invisible marks."""
    if ch in "\t\n\r\x0b\x0c":
        return False
    return unicodedata.category(ch) == "Cc" or ch in _INVISIBLE_MARKS


def _percent(ch: str) -> str:
    return "".join(f"%{byte:02X}" for byte in ch.encode("utf-8"))
