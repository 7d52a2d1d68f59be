"""Label by cluster in the review grid (issue 14 item 6): after a person corrects one card, offer its unreviewed
close neighbours that were predicted the same, to relabel in one action.

Side by side here: the offer bar's styles (:data:`CSS`), its script (:data:`JS`, joined to
``ui.review.JS``: it uses that script's ``S``, ``el``, ``q``, ``card``, ``change``, ``refresh``, ``focusAt``)
and the Python function it calls (:func:`server_function`: ``similar_images`` → ``Engine.similar_unreviewed``).

Flow: a class key or the type-ahead box corrects one card (a label other than its prediction) → the grid moves
on as always, and asks for similar images in the background → if there are any, a bar above the grid says how
many and which label, and rings those cards; nothing takes the focus. ``y`` (or the bar's button) relabels them
all as ONE change (one undo step; each card saved through the per-edit path like any other edit); ``Esc`` or the
bar's "No" dismisses it, and so does any other edit (the person just keeps labelling). Enter is not the accept
key: it already confirms the focused card, which is what a person keeps pressing right after a correction. DOM
contract for tests: the grid's root carries ``data-offer`` ("asking", "none", "open"; absent when there is no
offer), the bar is ``.rv-offer`` and each offered card has the class ``rv-offered``.
"""
from __future__ import annotations

import logging

from settings import PlatformError

log = logging.getLogger(__name__)

CSS = """
.rv-offer { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 4px 0; padding: 4px 8px;
  border-radius: 6px; background: #ede9fe; color: #3b0764; font-size: 13px; }
.rv-offer[hidden] { display: none; }
.rv-offer b { font-weight: 600; }
.rv-card.rv-offered { outline: 3px dashed #7c3aed; outline-offset: -3px; }
"""

JS = r"""
// --- label by cluster (ui/review_offer.py) ---
function offerAfter(r, name) {
  const old = r.pred, o = S.offer, seq = o.seq;
  if (old === null || old === undefined || name === old) return;
  const rows = S.rows.filter(x => x !== r && x.pred === old && x.human === null && !S.touched.has(x.sha256))
    .map(x => ({sha256: x.sha256, label: x.pred}));
  if (!rows.length) return;
  q('.rv-root').dataset.offer = 'asking';
  server.similar_images({sha256: r.sha256, old, rows, reviewed: [...S.touched]}).then(res => {
    if (seq !== o.seq || S.offer !== o) return;  // the person has moved on: another edit, another batch
    const shas = ((res && res.shas) || []).filter(s => S.by[s] && S.by[s].human === null && !S.touched.has(s));
    if (!shas.length) { q('.rv-root').dataset.offer = 'none'; return; }
    o.shas = shas; o.label = name; o.old = old; showOffer();
  }).catch(() => { if (seq === o.seq && S.offer === o) q('.rv-root').dataset.offer = 'none'; });
}
function offerBar() {
  let bar = q('.rv-offer'); if (bar) return bar;
  bar = el('div', 'rv-offer'); bar.hidden = true; bar.setAttribute('role', 'status'); bar.setAttribute('aria-live', 'polite');
  q('.rv-grid').before(bar); return bar;
}
function showOffer() {
  const o = S.offer, bar = offerBar(), n = o.shas.length;
  const yes = el('button', 'rv-btn rv-offer-yes', 'Relabel ' + n); yes.title = 'y';
  const no = el('button', 'rv-btn rv-offer-no', 'No'); no.title = 'Esc';
  yes.onclick = () => { acceptOffer(); focusAt(S.focus); }; no.onclick = () => { dismissOffer(); focusAt(S.focus); };
  const text = el('span', 'rv-offer-text');
  text.append(n + (n === 1 ? ' similar image is' : ' similar images are') + ' also predicted ', el('b', '', o.old),
    ' \u2014 relabel as ', el('b', '', o.label), '? [y] yes \u00b7 [Esc] no');
  bar.replaceChildren(text, yes, no);
  for (const sha of o.shas) card(S.by[sha]).classList.add('rv-offered');
  bar.hidden = false; q('.rv-root').dataset.offer = 'open';
}
function dismissOffer() {
  const o = S.offer; for (const sha of o.shas) if (S.cards[sha]) S.cards[sha].classList.remove('rv-offered');
  S.offer = {seq: o.seq + 1, shas: [], label: null, old: null};
  const bar = q('.rv-offer'); if (bar) bar.hidden = true;
  const root = q('.rv-root'); if (root) delete root.dataset.offer;
}
function acceptOffer() {
  const o = S.offer, rows = o.shas.map(s => S.by[s]).filter(r => r && r.human === null), label = o.label;
  dismissOffer(); if (!rows.length || label === null) return;
  change(rows, () => label); refresh(); focusAt(S.focus);  // one undo step; the focus stays where it was
}
// Keys while an offer is shown: y accepts; Esc dismisses (and still does what it does elsewhere).
function offerKey(e) {
  if (!S.offer.shas.length || e.ctrlKey || e.metaKey || e.altKey) return false;
  if (e.key === 'y') { e.preventDefault(); e.stopPropagation(); acceptOffer(); return true; }
  if (e.key === 'Escape') dismissOffer();
  return false;
}
"""


def server_function(engine):
    """The grid's ``similar_images`` call, answered by :meth:`engine.Engine.similar_unreviewed`."""

    def similar_images(body: dict) -> dict:
        """``{sha256, old, rows: [{sha256, label}], reviewed: [sha256]}`` → ``{shas}`` nearest first (``{shas: [],
        error}`` when the engine cannot say): the rows to offer after correcting ``sha256``, predicted ``old``."""
        body = body if isinstance(body, dict) else {}
        reviewed = body.get("reviewed") if isinstance(body.get("reviewed"), list) else []
        try:
            found = engine.similar_unreviewed(body.get("sha256"), body.get("old"), body.get("rows"), reviewed)
        except PlatformError as exc:
            log.info("no similar images offered: %s", exc)
            return {"shas": [], "error": str(exc)}
        return {"shas": [f["sha256"] for f in found]}

    return similar_images
