"""Turn a predicted batch into the page's text: the batch summary and the upload count (the cards are ui/review.py);
:func:`plain` for any user-typed string (label, class or file name) that goes into Markdown."""
from __future__ import annotations

import html
import re

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|#])")


def plain(value) -> str:
    """``value`` as Markdown that shows it literally: HTML escaped (``<img …>`` is text, not an element), Markdown's
    emphasis, link and table characters backslash-escaped."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(str(value), quote=False))


def summary(result: dict, threshold: float) -> str:
    rows = result["results"]
    low = sum(1 for r in rows if r.get("confidence") is not None and r["confidence"] < threshold)
    parts = [f"**{len(rows)} images** predicted by **{result['model_version'] or 'no model yet'}**"]
    if result["model_version"]:
        parts.append(f"{low} below the {threshold:.0%} confidence threshold")
    if result["errors"]:
        parts.append(f"{len(result['errors'])} skipped: " + "; ".join(plain(e["error"]) for e in result["errors"][:5])
                     + (" …" if len(result["errors"]) > 5 else ""))
    if result.get("store_error"):
        parts.append(f"⚠ {result['store_error']}")
    return " · ".join(parts)


def upload_count(files: list) -> str:
    """A one-line account of an upload ("**128 files** ready"), instead of a list as long as the upload."""
    if not files:
        return ""
    zips = sum(1 for f in files if str(getattr(f, "name", f)).lower().endswith(".zip"))
    return f"**{len(files)} file{'s' if len(files) != 1 else ''}**" + (f" ({zips} .zip)" if zips else "") + " uploaded"
