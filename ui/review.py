"""The review workspace: one keyboard-first grid of cards (thumbnail, prediction, human label, state) in a
``gr.HTML``, saved per edit through the engine.

Side by side here: the template and styles, the payload the grid is drawn from (:func:`payload`), and the
Python functions its script calls (:func:`server_functions`: ``save_edits``, ``label_detail``), and the
script :data:`JS`; the offer to relabel similar images after a correction is :mod:`ui.review_offer`. The
script writes every user-typed string (labels, class and file names, badges, user names) with
``textContent``/``setAttribute``, never ``innerHTML``, so a label such as ``<img src=x onerror=alert(1)>``
shows as text.

The script keeps the page's state: the batch's rows, each card's label, the undo stack and the queue of edits
not yet saved. Each edit is sent at once through ``save_edits`` (coalesced while a call is in flight) with
the revision the card last saw; a failure stays queued and is retried with backoff. DOM contract for tests: the grid's ``elem_id`` is
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
from ui import review_offer

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
.rv-bar select { max-width: 15em; }
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


# The script (``js_on_load``): ``element``, ``props``, ``watch`` and ``server`` come from gr.HTML.
JS = r"""
const KEYS = [['1–9, 0', 'set the class with that key (legend) on the focused card or the selection, then go on'],
  ['/', 'type a class: more classes or a new name'], ['Enter, Space', 'confirm the prediction, then go on'],
  ['x, Delete', 'remove the human label'], ['u, Ctrl+Z', 'undo the last change (a bulk change at once)'],
  ['arrows, Home, End', 'move'], ['Shift+arrows, Shift+click', 'extend the selection'],
  ['a, Ctrl+A', 'select every card in this view'], ['Esc', 'clear the selection, close a panel'],
  ['p', 'show only the focused card\u2019s predicted class (again: all)'], ['s', 'show untouched / confirmed / corrected / all'],
  ['r', 'reverse the order'], ['C (Shift+c)', 'confirm all untouched cards in this view'],
  ['o, double-click', 'details: full image, top-k, label history'], ['?', 'this help'],
  ['y', 'after a correction: relabel the similar images it offers too (Esc: no)']];
const STATES = ['', 'untouched', 'confirmed', 'corrected'], MEMORY = 'review-last-batch';
const S = {rows: [], by: {}, classes: [], order: [], focus: 0, sel: new Set(), anchor: null, undo: [],
  f: {pred: '', human: '', state: '', lo: 0, hi: 100}, sort: 'upload', dir: 1, pending: new Map(),
  inflight: false, retry: null, delay: 500, cards: {}, batch: null, touched: new Set(), offer: {seq: 0, shas: [], label: null, old: null}};
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text); return e; };
const pct = c => (c === null || c === undefined) ? '' : Math.round(c * 100) + '%';
const stateOf = r => r.human === null ? 'untouched' : (r.human === r.pred ? 'confirmed' : 'corrected');
const q = s => element.querySelector(s);
const token = () => { const t = document.querySelector('#review-user [data-token]'); return t ? t.dataset.token : ''; };

function load(text) {
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (err) { data = null; }
  if (!data || !data.rows) { q('.rv-root').replaceChildren(el('p', 'rv-empty', 'Upload images to predict and review them here.')); return; }
  dismissOffer(); S.touched = new Set();
  S.batch = data.batch_id; S.classes = data.classes || []; S.undo = []; S.sel.clear(); S.cards = {};
  if (data.batch_id) try { localStorage.setItem(MEMORY, JSON.stringify({batch_id: data.batch_id, threshold: data.threshold})); } catch (err) {}
  S.rows = data.rows.map((r, i) => ({...r, i, human: r.human_label ?? null, save: r.human_label ? 'saved' : '', note: ''}));
  S.by = Object.fromEntries(S.rows.map(r => [r.sha256, r]));
  S.sort = 'suggested'; S.dir = 1;  // rank when the audit gives one, else lowest confidence first
  build(); refresh(); focusAt(0);
}

function build() {
  const root = q('.rv-root'); root.replaceChildren(); root.dataset.batch = S.batch || '';
  const bar = el('div', 'rv-bar');
  const select = (name, title) => { const s = el('select'); s.dataset.f = name; s.title = title; s.setAttribute('aria-label', title); bar.append(s); return s; };
  select('pred', 'predicted class'); select('human', 'human label'); select('state', 'state');
  for (const [name, title, value] of [['lo', 'confidence from (%)', 0], ['hi', 'confidence to (%)', 100]]) {
    const i = el('input'); i.type = 'number'; i.min = 0; i.max = 100; i.value = S.f[name] ?? value; i.dataset.f = name;
    i.title = title; i.setAttribute('aria-label', title); i.className = 'rv-num'; bar.append(i); }
  const sort = select('sort', 'order');
  for (const [v, t] of [['suggested', 'suggested order'], ['upload', 'upload order'], ['confidence', 'confidence'],
                        ['predicted', 'predicted class'], ['label', 'human label']]) { const o = el('option', '', t); o.value = v; sort.append(o); }
  const dir = el('button', 'rv-btn rv-dir', '\u2191\u2193'); dir.title = 'reverse the order (r)'; bar.append(dir);
  const confirm = el('button', 'rv-btn rv-confirm-all', 'Confirm all untouched in view'); confirm.title = 'Shift+C'; bar.append(confirm);
  const undo = el('button', 'rv-btn rv-undo', 'Undo'); undo.title = 'u or Ctrl+Z'; bar.append(undo);
  const help = el('button', 'rv-btn rv-help-btn', '? keys'); bar.append(help);
  bar.addEventListener('change', e => { const f = e.target.dataset.f; if (!f) return;
    if (f === 'sort') S.sort = e.target.value; else S.f[f] = (f === 'lo' || f === 'hi') ? Number(e.target.value) : e.target.value;
    refresh(); });
  dir.onclick = () => { S.dir = -S.dir; refresh(); };
  confirm.onclick = confirmUntouched; undo.onclick = undoLast; help.onclick = () => toggle('.rv-help');
  const legend = el('div', 'rv-legend'); legend.id = 'review-legend';
  const counts = el('div', 'rv-counts'); counts.setAttribute('aria-live', 'polite');
  const grid = el('div', 'rv-grid'); grid.setAttribute('role', 'grid'); grid.setAttribute('aria-label', 'predicted images');
  const helpBox = el('div', 'rv-help rv-panel'); helpBox.hidden = true; helpBox.append(el('h3', '', 'Keys'));
  const list = el('dl'); for (const [k, t] of KEYS) list.append(el('dt', '', k), el('dd', '', t)); helpBox.append(list);
  const type = el('div', 'rv-type rv-panel'); type.hidden = true;
  const box = el('input'); box.setAttribute('list', 'rv-classes'); box.placeholder = 'class name, Enter to set, Esc to cancel';
  box.setAttribute('aria-label', 'class name'); const opts = el('datalist'); opts.id = 'rv-classes'; type.append(box, opts);
  box.addEventListener('keydown', e => { e.stopPropagation();
    if (e.key === 'Enter' && box.value.trim()) { const v = box.value.trim(); type.hidden = true; setLabel(targets(), v); }
    else if (e.key === 'Escape') { type.hidden = true; focusAt(S.focus); } });
  const detail = el('div', 'rv-detail rv-panel'); detail.hidden = true; detail.tabIndex = -1;
  detail.addEventListener('keydown', e => { if (e.key === 'Escape' || e.key === 'o') { e.stopPropagation(); detail.hidden = true; focusAt(S.focus); } });
  root.append(bar, legend, counts, grid, el('div', 'rv-stats'), helpBox, type, detail);
  grid.addEventListener('keydown', onKey);
  grid.addEventListener('click', e => { const c = e.target.closest('.rv-card'); if (!c) return;
    const pos = S.order.indexOf(S.by[c.dataset.sha256]);
    if (e.shiftKey) extend(pos); else if (e.ctrlKey || e.metaKey) { const r = S.order[pos]; S.sel.has(r.sha256) ? S.sel.delete(r.sha256) : S.sel.add(r.sha256); }
    else { S.sel.clear(); S.anchor = pos; }
    focusAt(pos); paintAll(); });
  grid.addEventListener('dblclick', e => { const c = e.target.closest('.rv-card'); if (c) openDetail(S.by[c.dataset.sha256]); });
}

function card(r) {
  if (S.cards[r.sha256]) return S.cards[r.sha256];
  const c = el('div', 'rv-card'); c.dataset.sha256 = r.sha256; c.tabIndex = -1; c.setAttribute('role', 'gridcell');
  const img = el('img'); img.loading = 'lazy'; img.alt = r.file || ''; if (r.thumb) img.src = r.thumb;
  const pred = el('div', 'rv-pred'); pred.append(el('span', 'rv-pred-label', r.pred ?? 'no model yet'), el('span', 'rv-conf', pct(r.confidence)));
  if (r.low) pred.classList.add('rv-low');
  const badges = el('div', 'rv-badges'); for (const b of (r.badges || [])) { const s = el('span', 'rv-badge', b.text); s.dataset.kind = String(b.kind ?? ''); s.title = String(b.text ?? ''); badges.append(s); }
  c.append(img, pred, el('div', 'rv-human'), badges, el('div', 'rv-save'));
  c.title = (r.file || '') + ' \u2014 ' + (r.pred ?? '') + ' ' + pct(r.confidence);
  return (S.cards[r.sha256] = c);
}

function paint(r) {
  const c = card(r), st = stateOf(r); c.dataset.state = st; c.dataset.save = r.save;
  const human = c.querySelector('.rv-human'); human.title = r.human ?? '';
  human.textContent = r.human === null ? '' : (st === 'confirmed' ? '\u2713 ' : '\u2192 ') + r.human;
  c.querySelector('.rv-save').textContent = {saved: '\u2713 saved', pending: 'saving\u2026', error: '\u26a0 not saved: ' + r.note + ' \u2014 retrying',
    conflict: '\u26a0 ' + r.note}[r.save] || '';
  c.classList.toggle('rv-selected', S.sel.has(r.sha256)); c.setAttribute('aria-selected', S.sel.has(r.sha256) ? 'true' : 'false');
}
const paintAll = () => { S.rows.forEach(paint); stats(); };

function visible(r) {
  const f = S.f, conf = r.confidence === null || r.confidence === undefined ? null : r.confidence * 100;
  return (!f.pred || r.pred === f.pred) && (!f.human || (f.human === '\u2014none' ? r.human === null : r.human === f.human))
    && (!f.state || stateOf(r) === f.state) && (conf === null || (conf >= f.lo - 1e-9 && conf <= f.hi + 1e-9));
}
function sortKey(r) {
  const c = r.confidence ?? -1;
  return {upload: [r.i], confidence: [c, r.i], predicted: [r.pred ?? '', -c, r.i], label: [r.human ?? '\uffff', r.i],
    suggested: Number.isInteger(r.rank) ? [r.rank, r.i] : [Infinity, c, r.i]}[S.sort] || [r.i];
}
function cmp(a, b) { const x = sortKey(a), y = sortKey(b);
  for (let k = 0; k < x.length; k++) if (x[k] !== y[k]) return (x[k] < y[k] ? -1 : 1) * S.dir; return 0; }

function refresh() {
  const focused = S.order[S.focus];
  S.order = S.rows.filter(visible).sort(cmp);
  const grid = q('.rv-grid'); grid.replaceChildren(...S.order.map(card));
  if (!S.order.length) grid.append(el('p', 'rv-empty', 'No card matches these filters.'));
  const pos = focused ? S.order.indexOf(focused) : -1; S.focus = pos >= 0 ? pos : 0;
  for (const sha of [...S.sel]) if (!S.order.includes(S.by[sha])) S.sel.delete(sha);
  controls(); paintAll(); roving();
}

function controls() {
  const count = (test) => S.rows.filter(test).length, bar = q('.rv-bar');
  const fill = (name, entries) => { const s = bar.querySelector('[data-f="' + name + '"]'); s.replaceChildren();
    for (const [v, t] of entries) { const o = el('option', '', t); o.value = v; s.append(o); } s.value = S.f[name]; };
  const preds = [...new Set(S.rows.map(r => r.pred).filter(p => p !== null && p !== undefined))].sort();
  fill('pred', [['', 'predicted: all (' + S.rows.length + ')'], ...preds.map(p => [p, p + ' (' + count(r => r.pred === p) + ')'])]);
  const humans = [...new Set(S.rows.map(r => r.human).filter(h => h !== null))].sort();
  fill('human', [['', 'label: all'], ['\u2014none', 'no label (' + count(r => r.human === null) + ')'], ...humans.map(h => [h, h + ' (' + count(r => r.human === h) + ')'])]);
  fill('state', STATES.map(s => [s, (s || 'state: all') + ' (' + count(r => !s || stateOf(r) === s) + ')']));
  bar.querySelector('[data-f="sort"]').value = S.sort;
  const legend = q('.rv-legend'); legend.replaceChildren(el('span', 'rv-legend-title', 'Keys:'));
  classList().forEach((name, k) => { if (k > 9) return; const e = el('span', 'rv-key');
    e.dataset.key = String((k + 1) % 10); e.dataset.label = name; e.append(el('kbd', '', (k + 1) % 10), el('span', '', name)); legend.append(e); });
  legend.append(el('span', 'rv-legend-more', '/ more or new \u00b7 Enter confirm \u00b7 u undo \u00b7 ? all keys'));
  const opts = q('#rv-classes'); opts.replaceChildren(...classList().map(n => { const o = el('option'); o.value = n; return o; }));
}
const classList = () => [...new Set([...S.classes, ...S.rows.map(r => r.human).filter(h => h !== null)])];

function stats() {
  const reviewed = S.rows.filter(r => r.human !== null && r.pred !== null && r.pred !== undefined);
  const box = q('.rv-stats'); box.replaceChildren();
  const shown = el('div', 'rv-summary', 'showing ' + S.order.length + ' of ' + S.rows.length + ' \u00b7 ' +
    STATES.slice(1).map(s => s + ' ' + S.rows.filter(r => stateOf(r) === s).length).join(' \u00b7 ') + (S.sel.size ? ' \u00b7 selected ' + S.sel.size : ''));
  q('.rv-counts').replaceChildren(shown);
  if (!reviewed.length) { box.append(el('p', '', 'Batch accuracy: confirm or correct cards to measure it (0 reviewed).')); return; }
  const right = reviewed.filter(r => r.human === r.pred).length;
  box.append(el('p', 'rv-acc', 'Accuracy on the ' + reviewed.length + ' reviewed card(s) of ' + S.rows.length + ': ' + right + '/' +
    reviewed.length + ' = ' + (100 * right / reviewed.length).toFixed(1) + '%'));
  const names = [...new Set(reviewed.flatMap(r => [r.human, r.pred]))].sort(), t = el('table', 'rv-confusion');
  const head = el('tr'); head.append(el('th', '', 'human \u2193 / predicted \u2192'), ...names.map(n => el('th', '', n))); t.append(head);
  for (const h of names) { const tr = el('tr'); tr.append(el('th', '', h));
    for (const p of names) { const n = reviewed.filter(r => r.human === h && r.pred === p).length; tr.append(el('td', n && h !== p ? 'rv-off' : '', n || '')); }
    t.append(tr); }
  box.append(t);
}

function roving() { S.order.forEach((r, k) => { card(r).tabIndex = k === S.focus ? 0 : -1; }); }
function focusAt(pos) {
  if (!S.order.length) return; S.focus = Math.max(0, Math.min(S.order.length - 1, pos)); roving();
  const c = card(S.order[S.focus]); c.focus({preventScroll: true}); c.scrollIntoView({block: 'nearest'});
}
function columns() { const cards = [...q('.rv-grid').children]; if (!cards.length) return 1;
  const top = cards[0].offsetTop; const n = cards.findIndex(c => c.offsetTop !== top); return n > 0 ? n : cards.length; }
function extend(pos) { if (S.anchor === null) S.anchor = S.focus; S.sel.clear();
  const [a, b] = [Math.min(S.anchor, pos), Math.max(S.anchor, pos)]; for (let k = a; k <= b; k++) S.sel.add(S.order[k].sha256); }
function targets() { return S.sel.size ? S.order.filter(r => S.sel.has(r.sha256)) : (S.order[S.focus] ? [S.order[S.focus]] : []); }
function toggle(sel) { const p = q(sel); p.hidden = !p.hidden; if (p.hidden) focusAt(S.focus); }

function change(rows, labelOf) {
  const step = []; dismissOffer();
  for (const r of rows) { const after = labelOf(r); if (after === r.human) continue; step.push({r, before: r.human}); r.human = after; S.touched.add(r.sha256); queue(r); }
  if (step.length) S.undo.push(step);
  return step.length;
}
function advance(rows) {
  const bulk = S.sel.size > 0; S.sel.clear(); S.anchor = null;
  const last = Math.max(...rows.map(r => S.order.indexOf(r)));
  refresh(); if (!bulk) focusAt(Math.min(last + 1, S.order.length - 1)); else focusAt(S.focus);
}
function setLabel(rows, name) { if (!rows.length) return; change(rows, () => name); advance(rows); if (rows.length === 1) offerAfter(rows[0], name); }
function confirmRows(rows) { rows = rows.filter(r => r.pred !== null && r.pred !== undefined); if (!rows.length) return; change(rows, r => r.pred); advance(rows); }
function confirmUntouched() { const rows = S.order.filter(r => r.human === null && r.pred !== null && r.pred !== undefined);
  if (rows.length) { change(rows, r => r.pred); S.sel.clear(); refresh(); focusAt(S.focus); } }
function undoLast() { dismissOffer(); const step = S.undo.pop(); if (!step) return; for (const {r, before} of step) { r.human = before; queue(r); } refresh(); focusAt(S.focus); }

function queue(r) { r.save = 'pending'; r.note = ''; S.pending.set(r.sha256, r); flush(); }
async function flush() {
  if (S.inflight || !S.pending.size) return;
  clearTimeout(S.retry); S.retry = null; S.inflight = true;
  const sent = [...S.pending.values()]; S.pending.clear();
  const edits = sent.map(r => ({sha256: r.sha256, label: r.human, revision: r.revision ?? null}));
  const wanted = new Map(sent.map(r => [r.sha256, r.human]));
  let results = null, failure = 'the server did not answer';
  try { results = await server.save_edits({edits, token: token(), batch_id: S.batch}); }
  catch (err) { failure = String((err && err.message) || err).slice(0, 200); }
  S.inflight = false;
  const byId = new Map((Array.isArray(results) ? results : []).map(x => [x.sha256, x]));
  let failed = false;
  for (const r of sent) {
    const x = byId.get(r.sha256), again = S.pending.has(r.sha256);
    if (!x || x.status === 'error') { failed = true; r.note = x ? x.error : failure; if (!again) { S.pending.set(r.sha256, r); r.save = 'error'; } continue; }
    r.revision = x.revision;
    if (again) continue;  // a newer edit of this card is queued: it carries the new revision
    if (x.status === 'conflict' && x.label !== wanted.get(r.sha256)) {
      r.human = x.label; r.save = 'conflict';  // the edit never landed: nothing of it to undo
      S.undo = S.undo.map(step => step.filter(c => c.r !== r)).filter(step => step.length);
      r.note = 'changed meanwhile by ' + (x.updated_by || 'someone') + ' to ' + (x.label ?? 'no label') + ': press a key to set yours';
    } else { r.human = x.label; r.save = x.label === null ? '' : 'saved'; r.note = ''; }
  }
  S.delay = failed ? Math.min(S.delay * 2, 10000) : 500;
  paintAll(); controls();
  if (failed) S.retry = setTimeout(flush, S.delay); else flush();
}

async function openDetail(r) {
  if (!r) return; const box = q('.rv-detail'); box.replaceChildren(el('p', '', 'loading\u2026')); box.hidden = false; box.focus();
  let d = null; try { d = await server.label_detail({sha256: r.sha256}); } catch (err) { d = {error: String(err)}; }
  box.replaceChildren();
  const img = el('img', 'rv-full'); img.alt = r.file || ''; img.src = (d && d.image) || r.thumb || ''; box.append(el('h3', '', r.file || r.sha256.slice(0, 12)), img);
  const top = el('ol', 'rv-topk'); for (const t of (r.top_k || [])) top.append(el('li', '', t.label + ' \u00b7 ' + pct(t.score))); box.append(el('h4', '', 'top-k'), top);
  const hist = el('table', 'rv-history'); const h = el('tr');
  for (const t of ['when', 'who', 'label', 'before', 'model', 'it predicted']) h.append(el('th', '', t)); hist.append(h);
  for (const x of ((d && d.history) || [])) { const tr = el('tr');
    for (const v of [String(x.time || '').replace('T', ' ').slice(0, 19) + ' UTC', x.user, x.label ?? '(removed)', x.previous ?? '', x.model_version ?? '', x.predicted ?? '']) tr.append(el('td', '', v)); hist.append(tr); }
  box.append(el('h4', '', 'label history'), hist, el('p', 'rv-hint', (d && d.error) ? d.error : 'Esc or o closes'));
}

function onKey(e) {
  const t = e.target; if (t.closest('input, select, textarea, [contenteditable]')) return;
  if (offerKey(e)) return;
  const k = e.key, n = S.order.length; let handled = true;
  if (k === 'ArrowRight' || k === 'ArrowLeft' || k === 'ArrowDown' || k === 'ArrowUp' || k === 'Home' || k === 'End') {
    const step = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns(), Home: -n, End: n}[k];
    const to = Math.max(0, Math.min(n - 1, S.focus + step));
    if (e.shiftKey) extend(to); else { S.sel.clear(); S.anchor = null; }
    focusAt(to); paintAll();
  } else if (/^[0-9]$/.test(k) && !e.ctrlKey && !e.metaKey && !e.altKey) {
    const name = classList()[(Number(k) + 9) % 10]; if (name !== undefined) setLabel(targets(), name);
  } else if (k === 'Enter' || k === ' ') confirmRows(targets());
  else if (k === 'x' || k === 'Delete' || k === 'Backspace') { const rows = targets(); change(rows, () => null); advance(rows); }
  else if (k === 'u' || ((e.ctrlKey || e.metaKey) && (k === 'z' || k === 'Z'))) undoLast();
  else if (k === 'a' || ((e.ctrlKey || e.metaKey) && k === 'A') || ((e.ctrlKey || e.metaKey) && k === 'a')) { S.order.forEach(r => S.sel.add(r.sha256)); paintAll(); }
  else if (k === 'Escape') { S.sel.clear(); S.anchor = null; q('.rv-help').hidden = true; paintAll(); }
  else if (k === 'p') { const r = S.order[S.focus]; S.f.pred = S.f.pred || !r ? '' : (r.pred ?? ''); refresh(); focusAt(S.focus); }
  else if (k === 's') { S.f.state = STATES[(STATES.indexOf(S.f.state) + 1) % STATES.length]; refresh(); focusAt(S.focus); }
  else if (k === 'r') { S.dir = -S.dir; refresh(); focusAt(S.focus); }
  else if (k === 'C') confirmUntouched();
  else if (k === 'o') openDetail(S.order[S.focus]);
  else if (k === '?') toggle('.rv-help');
  else if (k === '/') { const p = q('.rv-type'); p.hidden = false; const b = p.querySelector('input'); b.value = ''; b.focus(); }
  else handled = false;
  if (handled) { e.preventDefault(); e.stopPropagation(); }
}

window.addEventListener('beforeunload', e => { if (S.pending.size || S.inflight) { e.preventDefault(); e.returnValue = ''; } });
// A reload shows the last batch again, with the labels as they are in the store now.
async function restore() {
  let last = null; try { last = JSON.parse(localStorage.getItem(MEMORY) || 'null'); } catch (err) { last = null; }
  if (!last || !last.batch_id) return load(null);
  let text = ''; try { text = await server.load_batch(last); } catch (err) { text = ''; }
  if (!props.value) load(text);
}
watch('value', () => load(props.value));
if (props.value) load(props.value); else restore();
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
                       "classes": list(classes), "threshold": threshold, "rows": rows})


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


def rows_of(value) -> list[dict]:
    """The rows of a grid value made by :func:`payload` (its JSON text, or already parsed); [] for anything else."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    rows = value.get("rows") if isinstance(value, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _data_url(data: bytes) -> str | None:
    if len(data) > MAX_FULL_IMAGE_BYTES:
        return None
    mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}" if mime else None


def server_functions(engine, writer, tokens: UserTokens, classes=lambda: []) -> list:
    """The Python functions the grid's script calls; ``writer(session_user, request)`` names the user or refuses,
    ``classes()`` gives the legend's classes."""

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

    def load_batch(body: dict) -> str:
        """The grid's value for a batch predicted earlier ``{batch_id, threshold}`` (a reloaded page); "" if gone."""
        body = body if isinstance(body, dict) else {}
        threshold = body.get("threshold") if isinstance(body.get("threshold"), (int, float)) else 0.6
        try:
            return payload(engine.batch_results(str(body.get("batch_id"))), classes(), float(threshold))
        except PlatformError as exc:
            log.info("batch %s not restored: %s", str(body.get("batch_id"))[:40], exc)
            return ""

    return [save_edits, label_detail, load_batch, review_offer.server_function(engine)]


def review_grid(engine, writer, tokens: UserTokens, classes) -> gr.HTML:
    """The grid component (``elem_id`` ``review``), wired to its server functions."""
    return gr.HTML(None, html_template=TEMPLATE, css_template=CSS + review_offer.CSS, js_on_load=JS + review_offer.JS, elem_id="review",
                   server_functions=server_functions(engine, writer, tokens, classes), padding=False)
