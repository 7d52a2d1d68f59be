"""The Gradio app: predict up to 128 images, see and correct them, retrain, serve the new version at once.

Run ``python app.py`` (``--help`` for options). The UI only wires components to :class:`engine.Engine`;
every public endpoint has an explicit ``api_name`` for ``gradio_client``.
"""
from __future__ import annotations

import argparse
import functools
import logging
import random
import time

import gradio as gr
import pandas as pd

from classifier.images import list_image_files
from engine import Engine
from settings import PlatformError, Settings, get_settings
from ui import auth, plots, views
from ui.api import register_api
from ui.errors import user_errors

log = logging.getLogger("app")
API_RESULT_KEYS = ("file", "sha256", "label", "confidence", "top_k", "model_version")
MODES = ["head", "finetune", "scratch"]


def _hub_state(push: dict | None) -> str:
    if not push:
        return ""
    return push["state"] + (f": {push['reason']}" if push.get("reason") else "")


def _whole_number(value) -> int | None:
    """``value`` as an int if it is one (0, 3.0, "2"); None for anything else ("../x", 1.5, True, None)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _oauth_profile(request):
    try:
        return ((request.session or {}).get("oauth_info") or {}).get("userinfo")
    except (AssertionError, AttributeError):  # no session middleware: OAuth is off
        return None


class Handlers:
    """Thin adapters from component values to the engine and back."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.settings: Settings = engine.settings

    def writer(self, session_user, request) -> str:
        return auth.writer(self.settings, session_user, request, _oauth_profile(request))

    # --- predict tab ---
    def _views(self, batch, threshold, sort, class_filter, labels=None):
        results = batch["results"]
        return (views.gallery(results, sort, class_filter, threshold),
                views.table(results, sort, class_filter, threshold, labels or batch.get("saved")))

    def show_predictions(self, files, threshold, sort, progress=gr.Progress()):
        progress(0, desc="reading images")
        result = self.engine.predict(files, progress=lambda f, m: progress(f, desc=m), thumbnails=True)
        batch = {"results": result["results"], "batch_id": result["batch_id"], "saved": {}}
        gallery, table = self._views(batch, threshold, sort, "all")
        classes = sorted({r["label"] for r in result["results"] if r.get("label")})
        text, _, _ = views.batch_accuracy(batch["results"], {})
        return (batch, gallery, table, views.summary(result, threshold),
                plots.class_distribution(batch["results"]), plots.confidence_histogram(batch["results"], threshold),
                gr.update(choices=["all"] + classes, value="all"), text, None, "", self.class_choices())

    def class_choices(self):
        """The bulk-assign dropdown: the live model's classes plus every human label."""
        return gr.update(choices=self.engine.class_names())

    def sample(self, root_index, count, threshold, sort, progress=gr.Progress()):
        roots = self.settings.sample_roots
        index = _whole_number(root_index)
        if index is None or not 0 <= index < len(roots):
            raise PlatformError("Choose one of the configured sample folders")
        files = list_image_files(roots[index])
        if not files:
            raise PlatformError("That folder holds no images")
        count = max(1, min(_whole_number(count) or 1, self.settings.max_batch, len(files)))
        return self.show_predictions(random.sample(files, count), threshold, sort, progress)

    def reorder(self, batch, threshold, sort, class_filter, frame):
        if not batch:
            return [], views.table([], sort, class_filter, threshold)
        labels = dict(batch.get("saved", {}), **views.edited_labels(frame, batch["results"]))
        return self._views(batch, threshold, sort, class_filter, labels)

    def bulk(self, frame, label, only_low):
        return views.bulk_assign(frame, label, only_low)

    def save(self, batch, frame, session_user, request: gr.Request, only_changed: bool = False):
        if not batch or not batch["results"]:
            raise PlatformError("Predict a batch first")
        user = self.writer(session_user, request)
        labels = views.edited_labels(frame, batch["results"], only_changed=bool(only_changed))
        if not labels:
            raise PlatformError("There are no labels to save: type or choose labels in the 'label' column"
                                + (" (only rows whose label differs from the prediction are saved)" if only_changed else ""))
        result = self.engine.save_labels([{"sha256": s, "label": lab} for s, lab in labels.items()], user=user)
        batch = dict(batch, saved=dict(batch.get("saved", {}), **result.get("labels", labels)))
        text, human, predicted = views.batch_accuracy(batch["results"], batch["saved"])
        new = f" New classes: {', '.join(result['new_classes'])}." if result.get("new_classes") else ""
        rejected = result.get("rejected") or []
        bad = (f"\n\n⚠ Not saved ({len(rejected)}): " + "; ".join(r["error"] for r in rejected[:5])
               + (" …" if len(rejected) > 5 else "") + " — fix these rows and save again.") if rejected else ""
        message = (f"Saved {result['saved']} label(s) as **{user}** ({result.get('unchanged', 0)} unchanged).{new} "
                   f"Retrain in the Train tab to use them.{bad}")
        return (batch, message, text, plots.confusion(human, predicted, "This batch: human label vs prediction"),
                self.class_choices(), self.status_text())

    # --- train tab ---
    def train(self, mode, lr, batch_size, epochs, val_fraction, unfreeze_blocks, filters, filter_size, depth,
              session_user, request: gr.Request, progress=gr.Progress()):
        """Start a run (refused at once, naming who, while another runs) and stream its progress until it ends;
        closing the tab leaves the run going."""
        user = self.writer(session_user, request)
        # Gradio 6's Number sends 0 for an empty field, so 0 means "the mode's default" here.
        lr, batch_size, epochs = (v or None for v in (lr, batch_size, epochs))
        previous = self.engine.active_version()
        params = {"mode": mode, "lr": lr, "batch_size": batch_size, "epochs": epochs, "val_fraction": val_fraction,
                  "unfreeze_blocks": unfreeze_blocks, "filters": filters, "filter_size": filter_size, "depth": depth}
        unchanged = (gr.skip(),) * 6
        try:
            job_id = self.engine.start_training({k: v for k, v in params.items() if v is not None}, user).id
        except PlatformError as exc:  # busy or bad parameters: say so without marking the page as failed
            gr.Warning(str(exc))
            yield unchanged + (f"⚠ {exc}", gr.skip())
            return
        while (snap := self.engine.training_status())["id"] == job_id and snap["finished"] is None:
            progress(snap["progress"], desc=snap["message"] or "training")
            yield unchanged + self.training_view(snap)
            time.sleep(1.0)
        if snap["state"] == "failed":
            raise PlatformError(snap["error"])
        if snap["state"] != "done":  # stopped: nothing was registered, and that is all there is to show
            yield unchanged[:5] + (self.status_text(),) + self.training_view(snap)
            return
        yield self.result_view(snap["result"], previous) + (self.models_table(), self.status_text()) + self.training_view(snap)

    def cancel(self, session_user, request: gr.Request):
        user = self.writer(session_user, request)
        snap = self.engine.cancel_training(user)
        return f"⏹ Stopping {snap['user']}'s run ({snap['progress']:.0%} done): nothing will be registered."

    def result_view(self, result: dict, previous: str | None):
        """The run's verdict (promoted or not, why, by whom, warnings) above the comparison with ``previous``."""
        version = result["version"]
        verdict = (f"### ✅ {version} is live\n" if result.get("promoted") else
                   f"### ⚠ {version} was registered but not promoted\nActivate it anyway in the Models tab if you trust it.\n")
        lines = [verdict, f"{result.get('reason', '')} · started by **{result.get('started_by')}**"]
        lines += [f"\n⚠ {w}" for w in result.get("warnings") or []]
        text, *plots_ = self.compare(version, previous)
        return ("\n".join(lines) + "\n\n" + text, *plots_)

    def compare(self, version, other):
        """Markdown, confusion matrix, per-class F1 and loss curves of a version next to another. Accuracies are
        compared only on the images both versions held out, and the table says how many."""
        new = self.engine.version_metrics(version)
        old = self.engine.version_metrics(other) if other and other != version else None
        lines = [f"| | **{version}** | {other if old else '—'} |", "|---|---|---|"]
        if old:
            shared = self.engine.compare_versions(version, other)
            fmt = lambda a: "—" if a is None else f"{a:.1%}"  # noqa: E731
            lines.append(f"| accuracy on the same {shared['images']} held-out images | {fmt(shared[version])} | {fmt(shared[other])} |")
        else:
            lines.append(f"| accuracy (own validation split, {new.get('val_size')} images) | {new.get('accuracy')} | — |")
        rows = [("macro-F1 (own validation split)", "macro_f1"), ("calibration error", "ece"),
                ("train / val images", None), ("wall time (s)", "wall_time_s")]
        for name, key in rows:
            get = (lambda m: f"{m.get('train_size')} / {m.get('val_size')}") if key is None else (lambda m, k=key: m.get(k))
            lines.append(f"| {name} | {get(new)} | {get(old) if old else '—'} |")
        text = "\n".join(lines)
        return (text, plots.confusion_from_matrix(new.get("confusion_matrix", []), new.get("labels", []),
                                                  f"{version} on its validation images"),
                plots.f1_comparison(new, old, version, other),
                plots.loss_curves({version: new.get("loss_curve", []), **({other: old.get("loss_curve", [])} if old else {})}))

    def training_view(self, snap: dict | None = None):
        """The latest run's state line and live loss plot."""
        snap = snap if snap is not None else self.engine.training_status()
        if snap is None:
            return "No training run yet in this session of the server.", None
        state = {"running": f"⏳ training ({snap['progress']:.0%}): {snap['message']}", "queued": "⏳ starting",
                 "done": f"✅ {snap['message']}", "failed": f"❌ {snap['error']}",
                 "cancelled": f"⏹ {snap['error']}"}.get(snap["state"], snap["state"])
        return f"**Latest run** by {snap['user']}: {state}", plots.live_loss([e["loss"] for e in snap["losses"]])

    def poll_training(self):
        """Timer tick for tabs that did not start the run: the state, and the timer stops once nothing runs."""
        snap = self.engine.training_status()
        running = snap is not None and snap["finished"] is None
        return self.training_view(snap) + (gr.Timer(active=running),)

    # --- models tab ---
    def models_table(self):
        rows = []
        for m in reversed(self.engine.models()):
            promo = m.get("promotion") or {}
            verdict = "" if not promo else ("promoted" if promo.get("promoted") else "not promoted")
            rows.append([m["version"], "✅" if m["active"] else "", m["mode"], m["created"], m.get("trained_by"),
                         verdict, promo.get("reason", ""), m["metrics"].get("accuracy"), m["metrics"].get("val_size"),
                         m["metrics"].get("macro_f1"), m["metrics"].get("train_size"), len(m["classes"]),
                         _hub_state(m.get("hub"))])
        return pd.DataFrame(rows, columns=["version", "active", "mode", "created", "trained by", "gate", "why",
                                           "val accuracy (own split)", "val images", "macro-F1", "train images",
                                           "classes", "Hub"])

    def models_refresh(self):
        versions = [m["version"] for m in reversed(self.engine.models())]
        return self.models_table(), gr.update(choices=versions, value=versions[0] if versions else None)

    def activate_version(self, version, session_user, request: gr.Request):
        self.writer(session_user, request)
        if not version:
            raise PlatformError("Choose a version to activate")
        self.engine.activate(version)
        return (f"✅ {version} is now active: the next prediction uses it.",) + self.models_refresh() + (self.status_text(),)

    def retry_push(self, version, session_user, request: gr.Request):
        self.writer(session_user, request)
        if not version:
            raise PlatformError("Choose a version to push")
        self.engine.retry_push(version)
        return (f"Pushing {version} to the Hub again…",) + self.models_refresh()

    def version_details(self, version):
        """The chosen version next to the active one, on the same held-out images."""
        if not version:
            return "", None, None, None
        return self.compare(version, self.engine.active_version())

    def status_text(self):
        s = self.engine.status()
        training = f"**training** by {s['training_by']} ({s['training_progress']:.0%})" if s["training"] else "idle"
        parts = [f"**Model:** {s['active_version'] or 'none trained yet'}", f"**classes:** {len(s['classes'])}",
                 f"**labelled images:** {s['labelled_images'] if s['labelled_images'] is not None else '?'}", training]
        notes = [n for n in (s.get("model_warning"), s.get("store_error"), s.get("hub_error")) if n]
        if s.get("labels_not_pushed"):
            notes.append(f"{s['labels_not_pushed']} label change(s) not yet pushed to the Hub")
        if not s["active_version"]:
            where = f"the dataset `{s['dataset']}`" if s["dataset"] else "the images you label"
            notes.append(f"No model is trained yet: predict a batch to label it, or train now on {where} (Train tab).")
        return " · ".join(parts) + "".join(f"\n\n⚠ {n}" for n in notes)

    def login(self, user, password):
        if auth.check_password(self.settings, user, password):
            return user.strip(), f"Logged in as **{user.strip()}**."
        raise PlatformError("Wrong user name or password")

    # --- API (gradio_client) ---
    def api_predict(self, files):
        result = self.engine.predict(files)
        rows = [{k: r[k] for k in API_RESULT_KEYS} for r in result["results"]]
        if not rows and result["errors"]:
            raise PlatformError("; ".join(e["error"] for e in result["errors"][:10]))
        return rows + [{"file": e["file"], "error": e["error"]} for e in result["errors"]]


def build_app(engine: Engine) -> gr.Blocks:
    h = Handlers(engine)
    s = engine.settings
    with gr.Blocks(title="Image classifier — label, retrain, serve", delete_cache=(3600, 86400)) as demo:
        session_user = gr.State(None)
        batch = gr.State(None)
        gr.Markdown("# Image classifier\nPredict a batch, fix the wrong labels, retrain, and the new version is live at once.")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            if s.space_id and s.oauth_allowed:
                gr.LoginButton()
            if s.app_users:
                with gr.Accordion("Log in to save labels, train and activate versions", open=False):
                    with gr.Row():
                        login_user = gr.Textbox(label="user", scale=1)
                        login_pw = gr.Textbox(label="password", type="password", scale=1)
                        login_btn = gr.Button("Log in", scale=0)
                    login_msg = gr.Markdown()
                login_btn.click(user_errors(h.login), [login_user, login_pw], [session_user, login_msg],
                                api_visibility="private")

        with gr.Tab("Predict & label"):
            with gr.Row():
                files = gr.File(label=f"Images or a .zip (up to {s.max_batch})", file_count="multiple",
                                file_types=["image", ".zip"], elem_id="upload", scale=3)
                with gr.Column(scale=1):
                    predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
                    threshold = gr.Slider(0, 1, value=0.6, step=0.05, label="low-confidence threshold")
                    if s.sample_roots:
                        root = gr.Dropdown([(str(p), i) for i, p in enumerate(s.sample_roots)], value=0,
                                           label="server folder")
                        count = gr.Number(value=min(128, s.max_batch), precision=0, minimum=1, maximum=s.max_batch,
                                          label="images to sample")
                        sample_btn = gr.Button("Sample & predict", elem_id="sample-btn")
            summary = gr.Markdown(elem_id="batch-summary")
            with gr.Row():
                sort = gr.Radio(views.SORTS, value=views.SORTS[0], label="order")
                class_filter = gr.Dropdown(["all"], value="all", label="show predicted class")
            gallery = gr.Gallery(label="Predictions", columns=8, height=520, object_fit="contain",
                                 allow_preview=True, elem_id="gallery")
            with gr.Row():
                dist_plot = gr.Plot(label="predicted classes")
                conf_plot = gr.Plot(label="confidence")
            gr.Markdown("**Correct the labels** in the *label* column (an existing class or a new name), "
                        "or tick *select* and assign a class to many rows at once. Then **Save labels**.")
            with gr.Row():
                bulk_label = gr.Dropdown(engine.classes(), allow_custom_value=True, label="class to assign", scale=2)
                bulk_sel_btn = gr.Button("Assign to selected rows", scale=1)
                bulk_low_btn = gr.Button("Assign to all low-confidence rows", scale=1)
            editor = gr.Dataframe(headers=views.COLUMNS, datatype=views.DATATYPES, interactive=True,
                                  static_columns=[0, 1, 2, 3, 4, 5], max_height=600, elem_id="editor",
                                  label="label editor")
            with gr.Row():
                save_btn = gr.Button("Save labels", variant="primary", elem_id="save-btn")
                only_changed = gr.Checkbox(False, label="save only rows I changed",
                                           info="off: every row is saved; unchanged rows count as confirmed predictions")
                save_msg = gr.Markdown(elem_id="save-msg")
            with gr.Row():
                batch_acc = gr.Markdown()
                batch_conf = gr.Plot(label="batch confusion matrix")

        with gr.Tab("Train"):
            gr.Markdown("Trains on " + (f"the dataset `{s.dataset}` plus " if s.dataset else "") +
                        "every label saved in the store. The new version goes live only if it is not worse than the "
                        f"active one by more than {s.promotion_tolerance:.0%} on the same held-out images; otherwise it "
                        "is kept, not promoted, and can be activated in the Models tab. 0 in a field means the mode's default.")
            with gr.Row():
                mode = gr.Radio(MODES, value="head", label="mode", info="head: seconds · finetune/scratch: minutes")
                lr = gr.Number(0, label="learning rate", minimum=0, info="0 = the mode's default")
                batch_size = gr.Number(0, precision=0, label="batch size", minimum=0, info="0 = the mode's default")
                epochs = gr.Number(0, precision=0, label="epochs", minimum=0, info="0 = the mode's default")
                val_fraction = gr.Slider(0, 0.5, value=0.2, step=0.05, label="validation fraction")
            with gr.Accordion("finetune / scratch options", open=False):
                with gr.Row():
                    unfreeze = gr.Number(4, precision=0, label="finetune: blocks to unfreeze (-1 = all)")
                    filters = gr.Number(32, precision=0, label="scratch: filters")
                    filter_size = gr.Number(3, precision=0, label="scratch: filter size (px)")
                    depth = gr.Number(3, precision=0, label="scratch: depth (stages)")
            with gr.Row():
                train_btn = gr.Button("Train a new version", variant="primary", elem_id="train-btn")
                stop_btn = gr.Button("Stop training", variant="stop", elem_id="stop-btn")
            train_status = gr.Markdown(elem_id="train-status")
            live_loss = gr.Plot(label="live loss")
            compare_md = gr.Markdown(elem_id="train-result")
            with gr.Row():
                train_conf = gr.Plot(label="confusion matrix")
                train_f1 = gr.Plot(label="per-class F1")
                train_loss = gr.Plot(label="loss curve")

        with gr.Tab("Models") as models_tab:
            models_df = gr.Dataframe(h.models_table(), interactive=False, label="versions", elem_id="models")
            with gr.Row():
                version_pick = gr.Dropdown([m["version"] for m in reversed(engine.models())], label="version")
                activate_btn = gr.Button("Activate (rollback / activate anyway)", elem_id="activate-btn")
                refresh_btn = gr.Button("Refresh")
                if s.hub_model_id:
                    push_btn = gr.Button("Retry Hub push")
            activate_msg = gr.Markdown()
            details_md = gr.Markdown()
            with gr.Row():
                details_conf, details_f1, details_loss = gr.Plot(), gr.Plot(), gr.Plot()

        # hidden components backing the API endpoints
        api_files = gr.File(file_count="multiple", visible=False)
        api_out = gr.JSON(visible=False)
        api_btn = gr.Button(visible=False)

        predict_outputs = [batch, gallery, editor, summary, dist_plot, conf_plot, class_filter, batch_acc, batch_conf,
                           save_msg, bulk_label]
        predict_btn.click(user_errors(h.show_predictions), [files, threshold, sort], predict_outputs,
                          concurrency_id="predict", concurrency_limit=2, api_visibility="private")
        if s.sample_roots:
            sample_btn.click(user_errors(h.sample), [root, count, threshold, sort], predict_outputs,
                             concurrency_id="predict", concurrency_limit=2, api_visibility="private")
        for trigger in (sort.change, class_filter.change, threshold.release):
            trigger(user_errors(h.reorder), [batch, threshold, sort, class_filter, editor], [gallery, editor],
                    api_visibility="private")
        bulk_sel_btn.click(user_errors(functools.partial(h.bulk, only_low=False)), [editor, bulk_label], editor,
                           api_visibility="private")
        bulk_low_btn.click(user_errors(functools.partial(h.bulk, only_low=True)), [editor, bulk_label], editor,
                           api_visibility="private")
        save_btn.click(user_errors(h.save), [batch, editor, session_user, only_changed],
                       [batch, save_msg, batch_acc, batch_conf, bulk_label, status], api_visibility="private")
        # No queue of our own in front of training: a second Train click reaches the engine at once and is
        # refused there with who is training and how far (never silently queued behind the first).
        train_btn.click(user_errors(h.train), [mode, lr, batch_size, epochs, val_fraction, unfreeze, filters,
                                               filter_size, depth, session_user],
                        [compare_md, train_conf, train_f1, train_loss, models_df, status, train_status, live_loss],
                        concurrency_id="train", concurrency_limit=8, api_visibility="private")
        stop_btn.click(user_errors(h.cancel), [session_user], train_status, concurrency_limit=None,
                       api_visibility="private")
        # Other tabs follow a run with a timer that runs only while a job does (no polling when idle).
        train_timer = gr.Timer(2.0, active=False)
        train_timer.tick(h.poll_training, None, [train_status, live_loss, train_timer], api_visibility="private")
        gr.Timer(5.0).tick(h.status_text, None, status, api_visibility="private")
        refresh_btn.click(h.models_refresh, None, [models_df, version_pick], api_visibility="private")
        models_tab.select(h.models_refresh, None, [models_df, version_pick], api_visibility="private")
        activate_btn.click(user_errors(h.activate_version), [version_pick, session_user],
                           [activate_msg, models_df, version_pick, status], api_visibility="private")
        if s.hub_model_id:
            push_btn.click(user_errors(h.retry_push), [version_pick, session_user],
                           [activate_msg, models_df, version_pick], api_visibility="private")
        version_pick.change(user_errors(h.version_details), version_pick,
                            [details_md, details_conf, details_f1, details_loss], api_visibility="private")
        demo.load(h.status_text, None, status, api_visibility="private")
        demo.load(h.poll_training, None, [train_status, live_loss, train_timer], api_visibility="private")

        register_api(engine, h, api_btn, api_files, api_out)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python app.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs internet)")
    parser.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = get_settings()
    except PlatformError as exc:
        raise SystemExit(f"error: {exc}")
    engine = Engine(settings)
    engine.start()
    demo = build_app(engine)
    demo.queue(max_size=64, default_concurrency_limit=4)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                    max_file_size=f"{settings.max_upload_mb}mb", allowed_paths=[str(engine.thumbs_dir)],
                    show_error=True)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
