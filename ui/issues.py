"""The "Label issues" tab: the audit of the labelled set, worst first, with accept-suggestion / keep /
remove / keep-one actions (each recorded in the history and undoable) and an embedding map.

Mount it inside the app's ``gr.Blocks`` with ``build_issues_tab(engine, h.writer, session_user)``.
Engine calls used: ``audit``, ``audit_accept``, ``audit_decide``, ``audit_keep_one``, ``audit_undo``.
"""
from __future__ import annotations

from typing import Callable

import gradio as gr
import matplotlib

from engine import Engine
from ui import plots
from ui.errors import user_errors
from ui.views import plain

COLUMNS = ["#", "kind", "file", "given", "suggested", "score", "done"]
KIND_TEXT = {"label": "label may be wrong", "duplicate": "near-duplicate", "outlier": "unlike the training data"}


def table_rows(items: list[dict]) -> list[list]:
    """Dataframe rows for audit items (worst first)."""
    return [[i + 1, KIND_TEXT[it["kind"]] + (f" of {it.get('duplicate_of_file')}" if it["kind"] == "duplicate" else ""),
             it["file"], it["given"], it["suggested"] or "", it["score"], it.get("done", "")] for i, it in enumerate(items)]


def embedding_map(points: dict | None):
    """Scatter of the 2-D projection, coloured by label, flagged images ringed; None when nothing to draw."""
    if not points or not points.get("x"):
        return None
    fig, ax = plots.figure(6, 4.5)
    labels = sorted(set(points["label"]))
    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    for n, name in enumerate(labels):
        sel = [i for i, lab in enumerate(points["label"]) if lab == name]
        ax.scatter([points["x"][i] for i in sel], [points["y"][i] for i in sel], s=8, color=cmap(n % cmap.N), label=name)
    flagged = [i for i, f in enumerate(points["flagged"]) if f]
    ax.scatter([points["x"][i] for i in flagged], [points["y"][i] for i in flagged], s=60, facecolors="none",
               edgecolors="black", linewidths=1.0, label="flagged")
    ax.set_title("Embedding map (first two principal components)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.5, loc="best", ncols=2)
    return fig


def build_issues_tab(engine: Engine, writer: Callable, session_user: gr.State) -> gr.Tab:
    """The tab, declared inside the caller's Blocks; ``writer(session_user, request)`` names (and checks) the user."""
    with gr.Tab("Label issues") as tab:
        items = gr.State([])
        undo_stack = gr.State([])
        selected = gr.State(None)
        gr.Markdown("Labelled images most likely to be wrong come first: a suggested label, a near-duplicate, or "
                    "an image unlike the rest. Select a row, then act on it; every action goes into the history "
                    "and **Undo** reverts the last one.")
        with gr.Row():
            run_btn = gr.Button("Audit the labelled images", variant="primary", elem_id="audit-btn")
            summary = gr.Markdown(elem_id="audit-summary")
        table = gr.Dataframe(headers=COLUMNS, interactive=False, max_height=480, elem_id="issues-table",
                             label="flagged images, worst first")
        with gr.Row():
            accept_btn = gr.Button("Accept suggestion", elem_id="issue-accept")
            keep_btn = gr.Button("Keep (label is right)", elem_id="issue-keep")
            remove_btn = gr.Button("Remove from training", elem_id="issue-remove")
            keep_one_btn = gr.Button("Keep one of the duplicates", elem_id="issue-keep-one")
            undo_btn = gr.Button("Undo", elem_id="issue-undo")
        action_msg = gr.Markdown(elem_id="issue-msg")
        plot = gr.Plot(label="embedding map")

        def run_audit(progress=gr.Progress()):
            progress(0.1, desc="embedding and auditing")
            result = engine.audit(with_map=True)
            text = (f"**{len(result['items'])}** flagged of {result['audited']} labelled images · estimated label "
                    f"issues **{result['estimated_issues']}** · {result['seconds']} s")
            return result["items"], table_rows(result["items"]), text, embedding_map(result.get("points")), None

        def select(evt: gr.SelectData):
            return evt.index[0] if evt.index else None

        def act(kind: str, rows: list[dict], index, stack: list, user_state, request: gr.Request):
            user = writer(user_state, request)
            if index is None or not 0 <= index < len(rows):
                raise gr.Error("Select a row of the table first")
            item = rows[index]
            if kind == "accept":
                if not item["suggested"]:
                    raise gr.Error("This row has no suggested label")
                done = engine.audit_accept([{"sha256": item["sha256"], "label": item["suggested"]}], user=user)
                note = f"relabelled {item['suggested']}"
            elif kind == "keep_one":
                if item["kind"] != "duplicate":
                    raise gr.Error("Select a near-duplicate row")
                done = engine.audit_keep_one(item["duplicate_of"], [item["sha256"]], user=user)
                note = f"removed; kept {item.get('duplicate_of_file')}"
            else:
                done = engine.audit_decide([item["sha256"]], kind, user=user)
                note = "kept" if kind == "keep" else "removed from training"
            rows = [dict(r, done=note) if i == index else r for i, r in enumerate(rows)]
            stack = stack + [{"undo": done["undo"], "index": index}]
            return rows, table_rows(rows), stack, plain(f"{item['file']}: {note}")

        def undo(rows: list[dict], stack: list, user_state, request: gr.Request):
            user = writer(user_state, request)
            if not stack:
                raise gr.Error("Nothing to undo")
            last = stack[-1]
            engine.audit_undo(last["undo"], user=user)
            rows = [dict(r, done="") if i == last["index"] else r for i, r in enumerate(rows)]
            return rows, table_rows(rows), stack[:-1], "Undone"

        run_btn.click(user_errors(run_audit), None, [items, table, summary, plot, selected], api_visibility="private")
        table.select(select, None, selected, api_visibility="private")
        for button, kind in ((accept_btn, "accept"), (keep_btn, "keep"), (remove_btn, "remove"), (keep_one_btn, "keep_one")):
            button.click(user_errors(_bind(act, kind)), [items, selected, undo_stack, session_user],
                         [items, table, undo_stack, action_msg], api_visibility="private")
        undo_btn.click(user_errors(undo), [items, undo_stack, session_user], [items, table, undo_stack, action_msg],
                       api_visibility="private")
    return tab


def _bind(act: Callable, kind: str) -> Callable:
    """``act`` with its action kind fixed, keeping the ``request: gr.Request`` parameter Gradio injects."""
    def handler(rows, index, stack, user_state, request: gr.Request):
        return act(kind, rows, index, stack, user_state, request)
    return handler
