"""The Gradio app: predict up to 128 images, see and correct them, retrain, serve the new version at once.

Run ``python app.py`` (``--help`` for options). The UI only wires components to :class:`engine.Engine`;
every public endpoint has an explicit ``api_name`` for ``gradio_client``.
"""
from __future__ import annotations

import argparse
import logging
import random
import time

import gradio as gr
import pandas as pd
from starlette.middleware import Middleware

from classifier.images import list_image_files
from engine import Engine, TrainingBusy
from settings import PlatformError, Settings, get_settings
from training.checkpoint import data_health_lines
from training.config import TrainConfig
from ui import auth, plots, review, views
from ui.activity import UploadActivity
from ui.api import register_api
from ui.errors import user_errors
from ui.issues import build_issues_tab

log = logging.getLogger("app")
API_RESULT_KEYS = ("file", "sha256", "label", "confidence", "top_k", "model_version", "human_label")
MODES = ["head", "finetune", "scratch"]
TRAIN_DEFAULTS = TrainConfig()
"""The form's starting values are the training defaults (one place: training/config.py)."""


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
        self.tokens = review.UserTokens()

    def writer(self, session_user, request) -> str:
        return auth.writer(self.settings, session_user, request, _oauth_profile(request))

    # --- predict tab ---
    def show_predictions(self, files, threshold, progress=gr.Progress()):
        """Predict the uploaded files → (review grid value, summary). The charts follow (:meth:`batch_charts`),
        so the grid is on the page before they are drawn."""
        progress(0, desc="reading images")
        result = self.engine.predict(files, progress=lambda f, m: progress(f, desc=m), thumbnails=True, rank=True)
        return review.payload(result, self.class_names(), threshold), views.summary(result, threshold)

    def batch_charts(self, grid_value, threshold):
        """The shown batch's class and confidence charts, from the grid's value → (class chart, confidence chart)."""
        rows = [{"label": r.get("pred"), "confidence": r.get("confidence")} for r in review.rows_of(grid_value)]
        return plots.class_distribution(rows), plots.confidence_histogram(rows, threshold)

    def class_names(self) -> list[str]:
        """The legend's classes: the live model's, then every other human label."""
        return self.engine.class_names()

    def uploaded(self, files, threshold, progress=gr.Progress()):
        """An upload: a compact count of what arrived, then its predictions."""
        files = list(files or [])
        return (files, views.upload_count(files)) + self.show_predictions(files, threshold, progress)

    def sample(self, root_index, count, threshold, progress=gr.Progress()):
        roots = self.settings.sample_roots
        index = _whole_number(root_index)
        if index is None or not 0 <= index < len(roots):
            raise PlatformError("Choose one of the configured sample folders")
        files = list_image_files(roots[index])
        if not files:
            raise PlatformError("That folder holds no images")
        count = max(1, min(_whole_number(count) or 1, self.settings.max_batch, len(files)))
        return self.show_predictions(random.sample(files, count), threshold, progress)

    def import_labelled(self, source, session_user, request: gr.Request):
        """Import a .zip (uploaded) or a server folder of class sub-folders as human labels of this user."""
        user = self.writer(session_user, request)
        if not source:
            raise PlatformError("Choose a .zip of class folders or a server folder to import")
        result = self.engine.import_labelled(source, user=user)
        skipped = "; ".join(f"{n} {why}" for why, n in result["skipped"].items())
        return (f"Imported **{result['imported']}** label(s) as **{views.plain(user)}** in {len(result['classes'])} classes "
                f"({result['unchanged']} already labelled so).{' Skipped: ' + skipped + '.' if skipped else ''} "
                "Train a version in the Train tab to use them."), self.status_text()

    def import_folder(self, root_index, session_user, request: gr.Request):
        index = _whole_number(root_index)
        if index is None or not 0 <= index < len(self.settings.sample_roots):
            raise PlatformError("Choose one of the configured server folders")
        return self.import_labelled(str(self.settings.sample_roots[index]), session_user, request)

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
        except TrainingBusy as exc:  # someone else is training: say so without marking the page as failed
            gr.Warning(str(exc))
            yield unchanged[:5] + (self.status_text(), f"⚠ {exc}", gr.skip())
            return
        # the header follows the run too, so that it says what /status says (training by whom, how far)
        while (snap := self.engine.training_status())["id"] == job_id and snap["finished"] is None:
            progress(snap["progress"], desc=snap["message"] or "training")
            yield unchanged[:5] + (self.status_text(),) + self.training_view(snap)
            time.sleep(1.0)
        if snap["state"] == "failed":
            raise PlatformError(snap["error"])
        if snap["state"] != "done":  # stopped: nothing was registered, and that is all there is to show
            yield unchanged[:5] + (self.status_text(),) + self.training_view(snap)
            return
        yield self.result_view(snap["result"], previous) + (self.models_table(), self.status_text()) + self.training_view(snap)

    def stop_training(self, session_user, request: gr.Request):
        user = self.writer(session_user, request)
        snap = self.engine.cancel_training(user)
        return f"⏹ Stopping {snap['user']}'s run ({snap['progress']:.0%} done): nothing will be registered."

    def result_view(self, result: dict, previous: str | None):
        """The run's verdict (promoted or not, why, by whom, warnings) above the comparison with ``previous``."""
        version = result["version"]
        verdict = (f"### ✅ {version} is live\n" if result.get("promoted") else
                   f"### ⚠ {version} was registered but not promoted\nActivate it anyway in the Models tab if you trust it.\n")
        # warnings name classes, which are user input: shown as text, never as HTML
        lines = [verdict, f"{views.plain(result.get('reason', ''))} · started by **{views.plain(result.get('started_by'))}**"]
        lines += [f"\n⚠ {views.plain(w)}" for w in result.get("warnings") or []]
        text, *plots_ = self.compare(version, previous)
        return ("\n".join(lines) + "\n\n" + text, *plots_)

    def compare(self, version, other):
        """Markdown, confusion matrix, per-class F1 and loss curves of a version next to another. Accuracy, macro-F1
        and per-class F1 are compared only on the images both versions held out, and the table says how many."""
        new = self.engine.version_metrics(version)
        old = self.engine.version_metrics(other) if other and other != version else None
        lines = [f"| | **{version}** | {other if old else '—'} |", "|---|---|---|"]
        f1_new, f1_old = new, old
        if old:
            shared = self.engine.compare_versions(version, other)
            fmt = lambda a: "—" if a is None else f"{a:.1%}"  # noqa: E731
            lines.append(f"| accuracy on the same {shared['images']} held-out images | {fmt(shared[version])} | {fmt(shared[other])} |")
            f1_new, f1_old = shared["scores"][version], shared["scores"][other]
            lines.append(f"| macro-F1 on the same {shared['images']} images | {f1_new['macro_f1']} | {f1_old['macro_f1']} |")
        else:
            lines.append(f"| accuracy (own validation split, {new.get('val_size')} images) | {new.get('accuracy')} | — |")
            lines.append(f"| macro-F1 (own validation split) | {new.get('macro_f1')} | — |")
        rows = [("calibration error (own validation split)", "ece"), ("train / val images", None), ("wall time (s)", "wall_time_s")]
        for name, key in rows:
            get = (lambda m: f"{m.get('train_size')} / {m.get('val_size')}") if key is None else (lambda m, k=key: m.get(k))
            lines.append(f"| {name} | {get(new)} | {get(old) if old else '—'} |")
        text = "\n".join(lines + [""] + data_health_lines(new.get("data_health")))
        return (text, plots.confusion_from_matrix(new.get("confusion_matrix", []), new.get("labels", []),
                                                  f"{version} on its validation images"),
                plots.f1_comparison(f1_new, f1_old, version, other, "on the same held-out images" if old else "own validation split"),
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
                         None if m.get("label_noise") is None else f"{m['label_noise']:.1%}", _hub_state(m.get("hub"))])
        return pd.DataFrame(rows, columns=["version", "active", "mode", "created", "trained by", "gate", "why",
                                           "val accuracy (own split)", "val images", "macro-F1", "train images",
                                           "classes", "est. label noise", "Hub"])

    def models_refresh(self):
        """(table, version picker, header): the header is refreshed with the table, so that an activation made
        by another process shows in both at once."""
        versions = [m["version"] for m in reversed(self.engine.models())]
        return (self.models_table(), gr.update(choices=versions, value=versions[0] if versions else None),
                self.status_text())

    def activate_version(self, version, session_user, request: gr.Request):
        self.writer(session_user, request)
        if not version:
            raise PlatformError("Choose a version to activate")
        self.engine.activate(version)
        return (f"✅ {version} is now active: the next prediction uses it.",) + self.models_refresh()

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
            return user.strip(), f"Logged in as **{user.strip()}**.", self.tokens.element(user.strip())
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

        with gr.Tab("Predict & label"):
            with gr.Row(equal_height=True):
                upload = gr.UploadButton(f"Upload images or a .zip (up to {s.max_batch})", file_count="multiple",
                                         file_types=["image", ".zip"], elem_id="upload", variant="primary", scale=2)
                upload_count = gr.Markdown(elem_id="upload-count")
                predict_btn = gr.Button("Predict", elem_id="predict-btn", scale=1)
                threshold = gr.Slider(0, 1, value=0.6, step=0.05, label="low-confidence threshold", scale=2)
            if s.sample_roots:
                with gr.Row():
                    root = gr.Dropdown([(str(p), i) for i, p in enumerate(s.sample_roots)], value=0,
                                       label="server folder")
                    count = gr.Number(value=min(128, s.max_batch), precision=0, minimum=1, maximum=s.max_batch,
                                      label="images to sample")
                    sample_btn = gr.Button("Sample & predict", elem_id="sample-btn")
                    import_folder_btn = gr.Button("Import this folder's class sub-folders as labels",
                                                  elem_id="import-folder-btn")
            summary = gr.Markdown(elem_id="batch-summary")
            review_user = gr.HTML("", elem_id="review-user", padding=False)
            grid = review.review_grid(engine, h.writer, h.tokens, h.class_names)
            gr.Markdown("Each change is saved at once; press **?** in the grid for every key. Only what you set or "
                        "confirm becomes a label: untouched predictions are never saved.")
            with gr.Row(equal_height=True):
                import_zip = gr.UploadButton("Import a .zip of class folders as labels", file_types=[".zip"],
                                             elem_id="import-zip", scale=1)
                import_msg = gr.Markdown(elem_id="import-msg")
            with gr.Accordion("Batch charts", open=False):
                with gr.Row():
                    dist_plot = gr.Plot(label="predicted classes")
                    conf_plot = gr.Plot(label="confidence")

        with gr.Tab("Train") as train_tab:
            gr.Markdown("Trains on " + (f"the dataset `{s.dataset}` plus " if s.dataset else "") +
                        "every label saved in the store. The new version goes live only if it is not worse than the "
                        f"active one by more than {s.promotion_tolerance:.0%} on the same held-out images; otherwise it "
                        "is kept, not promoted, and can be activated in the Models tab. 0 in a field means the mode's default.")
            with gr.Row():
                mode = gr.Radio(MODES, value="head", label="mode", info="head: seconds · finetune/scratch: minutes")
                lr = gr.Number(0, label="learning rate", minimum=0, info="0 = the mode's default")
                batch_size = gr.Number(0, precision=0, label="batch size", minimum=0, info="0 = the mode's default")
                epochs = gr.Number(0, precision=0, label="epochs", minimum=0, info="0 = the mode's default")
                val_fraction = gr.Slider(0, 0.5, value=TRAIN_DEFAULTS.val_fraction, step=0.05, label="validation fraction")
            with gr.Accordion("finetune / scratch options", open=False):
                with gr.Row():
                    unfreeze = gr.Number(TRAIN_DEFAULTS.unfreeze_blocks, precision=0, label="finetune: blocks to unfreeze (-1 = all)")
                    filters = gr.Number(TRAIN_DEFAULTS.filters, precision=0, label="scratch: filters")
                    filter_size = gr.Number(TRAIN_DEFAULTS.filter_size, precision=0, label="scratch: filter size (px)")
                    depth = gr.Number(TRAIN_DEFAULTS.depth, precision=0, label="scratch: depth (stages)")
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

        build_issues_tab(engine, h.writer, session_user)

        # hidden components backing the API endpoints
        api_files = gr.File(file_count="multiple", visible=False)
        api_out = gr.JSON(visible=False)
        api_btn = gr.Button(visible=False)

        files = gr.State([])
        if s.app_users:
            login_btn.click(user_errors(h.login), [login_user, login_pw], [session_user, login_msg, review_user],
                            api_visibility="private")
        predict_outputs = [grid, summary]
        # Progress shows on one small component, not as an overlay on the 128-card grid: Gradio's tracker redraws
        # its timer every animation frame, and over the grid that cost a browser ~1 core while it waited (the
        # grid also stays readable meanwhile).

        def then_charts(event):  # drawn after the grid is on the page (two charts cost ~0.4 s)
            event.success(h.batch_charts, [grid, threshold], [dist_plot, conf_plot], api_visibility="private",
                          concurrency_id="charts", concurrency_limit=1, show_progress="hidden")
        then_charts(upload.upload(user_errors(h.uploaded), [upload, threshold], [files, upload_count] + predict_outputs,
                                  concurrency_id="predict", concurrency_limit=2, api_visibility="private",
                                  show_progress_on=[upload_count]))
        then_charts(predict_btn.click(user_errors(h.show_predictions), [files, threshold], predict_outputs,
                                      concurrency_id="predict", concurrency_limit=2, api_visibility="private",
                                      show_progress_on=[summary]))
        if s.sample_roots:
            then_charts(sample_btn.click(user_errors(h.sample), [root, count, threshold], predict_outputs,
                                         concurrency_id="predict", concurrency_limit=2, api_visibility="private",
                                         show_progress_on=[summary]))
            import_folder_btn.click(user_errors(h.import_folder), [root, session_user], [import_msg, status],
                                    concurrency_id="import", concurrency_limit=1, api_visibility="private")
        import_zip.upload(user_errors(h.import_labelled), [import_zip, session_user], [import_msg, status],
                          concurrency_id="import", concurrency_limit=1, api_visibility="private")
        # No queue of our own in front of training: a second Train click reaches the engine at once and is
        # refused there with who is training and how far (never silently queued behind the first).
        train_btn.click(user_errors(h.train), [mode, lr, batch_size, epochs, val_fraction, unfreeze, filters,
                                               filter_size, depth, session_user],
                        [compare_md, train_conf, train_f1, train_loss, models_df, status, train_status, live_loss],
                        concurrency_id="train", concurrency_limit=8, api_visibility="private")
        stop_btn.click(user_errors(h.stop_training), [session_user], train_status, concurrency_limit=None,
                       api_visibility="private")
        # Other tabs follow a run with a timer that runs only while a job does (no polling when idle).
        train_timer = gr.Timer(2.0, active=False)
        # The header follows the same timer (so it runs only while a job does), and otherwise refreshes on load
        # and after the events that change it (train, activate, opening the Train or Models tab): an idle page makes
        # no periodic server calls.
        train_timer.tick(h.poll_training, None, [train_status, live_loss, train_timer], api_visibility="private") \
            .then(h.status_text, None, status, api_visibility="private")
        # Labels are saved card by card without touching the header; where a person decides to train, it is current.
        train_tab.select(h.status_text, None, status, api_visibility="private")
        refresh_btn.click(h.models_refresh, None, [models_df, version_pick, status], api_visibility="private")
        models_tab.select(h.models_refresh, None, [models_df, version_pick, status], api_visibility="private")
        activate_btn.click(user_errors(h.activate_version), [version_pick, session_user],
                           [activate_msg, models_df, version_pick, status], api_visibility="private")
        if s.hub_model_id:
            push_btn.click(user_errors(h.retry_push), [version_pick, session_user],
                           [activate_msg, models_df, version_pick, status], api_visibility="private")
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
    # Gradio's queue polls for work every 1 ms and for progress every 10 ms while idle (about 4% of a core with no
    # tab open); at 20 ms and 100 ms the idle app's event loop still took 1.6% of a core on a slower CPU. 50 ms and
    # 250 ms cost an event at most 50 ms before it starts (a 128-image request takes seconds) and progress bars move
    # four times a second.
    demo._queue.sleep_when_free, demo._queue.progress_update_sleep_when_free = 0.05, 0.25
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                    max_file_size=f"{max(settings.max_upload_mb, settings.max_archive_mb)}mb", allowed_paths=[str(engine.thumbs_dir)],
                    show_error=True, app_kwargs={"middleware": [Middleware(UploadActivity, engine=engine)]})
        engine.serving()  # background warm-ups start once the server answers
        demo.block_thread()
    finally:
        engine.close()


if __name__ == "__main__":
    main()
