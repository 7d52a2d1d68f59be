"""The review workspace: one keyboard-first grid of cards (thumbnail, prediction, human label, state) in a
``gr.HTML``, saved per edit through the engine.

Side by side here: the template and styles, the payload the grid is drawn from (:func:`payload`), and the
Python functions its script calls (:func:`server_functions`: ``save_edits``, ``label_detail``). The script
is :data:`ui.review_js.JS`; it writes every user-typed string with ``textContent``, so a label such as
``<img src=x onerror=alert(1)>`` shows as text. DOM contract for tests: the grid's ``elem_id`` is
``review``; each card is a focusable ``.rv-card`` with ``data-sha256`` and ``data-state``
(untouched/confirmed/corrected) in display order, plus ``data-save`` (saved/pending/error/conflict); the legend
``#review-legend`` has entries with ``data-key`` and ``data-label``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import secrets
from urllib.parse import quote

import gradio as gr

from settings import PlatformError
from ui.review_js import JS

log = logging.getLogger(__name__)

TEMPLATE = '<div class="rv-root"></div>'
MAX_FULL_IMAGE_BYTES = 8 * 1024 * 1024
"""Largest original sent to the detail view (bytes); a larger one shows its thumbnail."""
_IMAGE_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"),
                (b"RIFF", "image/webp"), (b"BM", "image/bmp"))

CSS = """
.rv-root { font-size: 14px; }
.rv-bar { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-bottom: 6px; }
.rv-bar select, .rv-num, .rv-btn { padding: 3px 6px; border: 1px solid var(--border-color-primary); border-radius: 6px;
  background: var(--background-fill-primary); color: var(--body-text-color); }
.rv-num { width: 5em; }
.rv-btn { cursor: pointer; font-size: 13px; font-weight: normal; }
.rv-legend { display: flex; flex-wrap: wrap; gap: 10px; margin: 4px 0; align-items: center; }
.rv-key kbd { display: inline-block; min-width: 1.4em; text-align: center; margin-right: 3px; padding: 0 4px;
  border: 1px solid var(--border-color-primary); border-radius: 4px; background: var(--background-fill-secondary); }
.rv-legend-more, .rv-counts, .rv-hint { color: var(--body-text-color-subdued); }
.rv-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(128px, 1fr)); gap: 6px;
  max-height: 70vh; overflow-y: auto; padding: 4px; }
.rv-card { border: 2px solid var(--border-color-primary); border-radius: 8px; padding: 4px; outline: none;
  background: var(--background-fill-primary); cursor: pointer; min-width: 0; }
.rv-card img { width: 100%; aspect-ratio: 1; object-fit: contain; display: block; background: #eee; }
.rv-card:focus { border-color: #2563eb; box-shadow: 0 0 0 3px #93c5fd; }
.rv-card.rv-selected { background: #dbeafe; }
.rv-card[data-state="confirmed"] { border-color: #16a34a; }
.rv-card[data-state="corrected"] { border-color: #ea580c; }
.rv-card[data-state="confirmed"]:focus, .rv-card[data-state="corrected"]:focus { border-color: #2563eb; }
.rv-pred, .rv-human, .rv-save { font-size: 12px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.rv-pred { display: flex; justify-content: space-between; gap: 4px; }
.rv-low .rv-conf { color: #b45309; font-weight: 600; }
.rv-human { font-weight: 600; min-height: 1.2em; }
.rv-card[data-state="corrected"] .rv-human { color: #c2410c; }
.rv-card[data-state="confirmed"] .rv-human { color: #15803d; }
.rv-save { color: #15803d; min-height: 1.2em; }
.rv-card[data-save="pending"] .rv-save { color: #6b7280; }
.rv-card[data-save="error"] .rv-save, .rv-card[data-save="conflict"] .rv-save { color: #b91c1c; white-space: normal; }
.rv-badges { display: flex; flex-wrap: wrap; gap: 2px; }
.rv-badge { font-size: 11px; padding: 0 4px; border-radius: 4px; background: #fef3c7; color: #92400e;
  max-width: 100%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.rv-panel { position: fixed; z-index: 50; top: 8vh; left: 50%; transform: translateX(-50%); max-width: 760px;
  width: 92vw; max-height: 84vh; overflow: auto; padding: 16px; border-radius: 10px;
  background: var(--background-fill-primary); border: 1px solid var(--border-color-primary); box-shadow: 0 10px 40px #0005; }
.rv-panel[hidden] { display: none; }
.rv-type { top: 30vh; max-width: 420px; }
.rv-type input { width: 100%; padding: 6px; font-size: 16px; }
.rv-help dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; }
.rv-help dt { font-family: monospace; font-weight: 600; }
.rv-full { width: min(100%, 384px); height: auto; max-height: 50vh; object-fit: contain; background: #eee; }
.rv-history, .rv-confusion { border-collapse: collapse; font-size: 12px; }
.rv-history td, .rv-history th, .rv-confusion td, .rv-confusion th { border: 1px solid var(--border-color-primary); padding: 2px 6px; }
.rv-confusion td { text-align: right; min-width: 2em; }
.rv-confusion td.rv-off { background: #fee2e2; }
.rv-stats { margin-top: 8px; }
.rv-empty { color: var(--body-text-color-subdued); padding: 12px; }
"""


def _thumb_url(path: str | None) -> str | None:
    """A root-relative URL under which Gradio serves a thumbnail file (its folder is in ``allowed_paths``)."""
    return f"gradio_api/file={quote(str(path))}" if path else None


def payload(result: dict, classes: list[str], threshold: float) -> str:
    """The grid's value (JSON text) for a predicted batch: one row per image with its thumbnail, prediction,
    the current human label from the store and its revision, and the optional ``rank``/``badges`` that the
    audit queue may add (``rank``: int, lower = review first; ``badges``: ``[{kind, text}]``)."""
    rows = []
    for r in result["results"]:
        conf = r.get("confidence")
        row = {"sha256": r["sha256"], "file": str(r.get("file") or ""), "thumb": _thumb_url(r.get("thumbnail")),
               "pred": r.get("label"), "confidence": conf, "top_k": r.get("top_k") or [],
               "human_label": r.get("human_label"), "revision": r.get("label_revision"),
               "low": conf is not None and conf < threshold}
        if isinstance(r.get("rank"), int) and not isinstance(r.get("rank"), bool):
            row["rank"] = r["rank"]
        if isinstance(r.get("badges"), list):
            row["badges"] = [{"kind": str(b.get("kind", "")), "text": str(b.get("text", ""))}
                             for b in r["badges"] if isinstance(b, dict)]
        rows.append(row)
    return json.dumps({"batch_id": result.get("batch_id"), "model_version": result.get("model_version"),
                       "classes": list(classes), "rows": rows})


class UserTokens:
    """Signed tokens naming the user logged in through the app's form, so the grid's server calls (which do not
    see the page's session state) can name the writer: ``user.hmac``; the key lives and dies with the process."""

    def __init__(self):
        self._key = secrets.token_bytes(32)

    def issue(self, user: str) -> str:
        return f"{user}.{self._sign(user)}"

    def user(self, token) -> str | None:
        user, _, signature = str(token or "").rpartition(".")
        return user if user and hmac.compare_digest(signature, self._sign(user)) else None

    def _sign(self, user: str) -> str:
        return hmac.new(self._key, user.encode("utf-8"), hashlib.sha256).hexdigest()

    def element(self, user: str | None) -> str:
        """The hidden HTML the script reads the token from (the token is hex after a checked user name)."""
        return f'<span data-token="{html.escape(self.issue(user), quote=True)}"></span>' if user else ""


def _data_url(data: bytes) -> str | None:
    if len(data) > MAX_FULL_IMAGE_BYTES:
        return None
    mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}" if mime else None


def server_functions(engine, writer, tokens: UserTokens) -> list:
    """The Python functions the grid's script calls; ``writer(session_user, request)`` names the user or refuses."""

    def save_edits(body: dict, request: gr.Request) -> list[dict]:
        """Save the grid's edits ``{edits: [{sha256, label (None: remove), revision}], token}`` one by one; each
        result is ``LabelStore.set_label``'s row with ``status`` saved/unchanged/conflict, or ``status``
        "error" with a message (the grid keeps such an edit and retries it)."""
        edits = body.get("edits") if isinstance(body, dict) else None
        if not isinstance(edits, list):
            return []
        try:
            user = writer(tokens.user(body.get("token")), request)
        except PlatformError as exc:
            return [{"sha256": e.get("sha256"), "status": "error", "error": str(exc)} for e in edits if isinstance(e, dict)]
        results = []
        for edit in edits:
            if not isinstance(edit, dict):
                continue
            # An unknown revision counts as "saw no label": a label someone else saved shows as a conflict.
            revision = edit.get("revision") if isinstance(edit.get("revision"), int) else 0
            try:
                results.append(engine.set_label(edit.get("sha256"), edit.get("label"), user=user, expected_revision=revision))
            except PlatformError as exc:
                results.append({"sha256": edit.get("sha256"), "status": "error", "error": str(exc)})
        return results

    def label_detail(body: dict) -> dict:
        """``{image (data URL or None), label, history, predictions}`` for the detail view of one card."""
        sha = body.get("sha256") if isinstance(body, dict) else None
        try:
            detail = engine.label_detail(str(sha))
            detail["image"] = _data_url(engine.image_bytes(str(sha)))
        except PlatformError as exc:
            return {"error": str(exc)}
        return detail

    return [save_edits, label_detail]


def review_grid(engine, writer, tokens: UserTokens) -> gr.HTML:
    """The grid component (``elem_id`` ``review``), wired to its server functions."""
    return gr.HTML(None, html_template=TEMPLATE, css_template=CSS, js_on_load=JS, elem_id="review",
                   server_functions=server_functions(engine, writer, tokens), padding=False)
