"""The public endpoints for ``gradio_client``, each with an explicit ``api_name``:
``/predict`` ``/save_labels`` ``/labels`` ``/retrain`` ``/cancel`` ``/models`` ``/activate`` ``/status`` ``/audit``.
Writes check the caller."""
from __future__ import annotations

import gradio as gr

from engine import Engine
from training.config import TrainConfig
from ui.errors import user_errors


_D = TrainConfig()  # the endpoint's defaults are the training defaults


def register_api(engine: Engine, h, api_btn, api_files, api_out) -> None:
    """The public endpoints for gradio_client: /predict /save_labels /labels /retrain /cancel /models /activate /status."""
    api_btn.click(user_errors(h.api_predict), api_files, api_out, api_name="predict",
                  concurrency_id="predict", concurrency_limit=2)

    @user_errors
    def save_labels(labels: list[dict], request: gr.Request) -> dict:
        """Save human labels: a list of {"sha256": ..., "label": ...} → {saved, new_classes, rejected}
        (each rejected item with its reason; the others are saved)."""
        result = engine.save_labels(labels, user=h.writer(None, request))
        return {"saved": result["saved"], "new_classes": result["new_classes"], "rejected": result["rejected"]}

    @user_errors
    def labels(sha256s: list[str] | None = None) -> list[dict]:
        """The current human labels [{sha256, label, state, revision, updated_by, updated_at}] (state: confirmed =
        the prediction when saved, corrected = not); only those of the given sha256s when a list is passed."""
        return engine.labels(sha256s)

    @user_errors
    def retrain(mode: str = "head", lr: float | None = None, batch_size: int | None = None, epochs: int | None = None,
                val_fraction: float = _D.val_fraction, unfreeze_blocks: int = _D.unfreeze_blocks, filters: int = _D.filters,
                filter_size: int = _D.filter_size, depth: int = _D.depth, request: gr.Request = None) -> dict:
        """Train on DATASET + every human label and register the new version; it goes live only if it is not
        worse than the active one on the same held-out images → {version, metrics, promoted, reason, started_by,
        compared_on, warnings}. Refused with who is training and how far while another run is going."""
        user = h.writer(None, request)
        params = {"mode": mode, "lr": lr, "batch_size": batch_size, "epochs": epochs, "val_fraction": val_fraction,
                  "unfreeze_blocks": unfreeze_blocks, "filters": filters, "filter_size": filter_size, "depth": depth}
        return engine.retrain({k: v for k, v in params.items() if v is not None}, user=user)

    @user_errors
    def cancel(request: gr.Request = None) -> dict:
        """Stop the running training job; it registers nothing → the job's {id, state, user, progress, …}."""
        return engine.cancel_training(user=h.writer(None, request))

    def models() -> list[dict]:
        """Every version with its metrics: [{version, active, created, metrics}]."""
        return engine.models()

    @user_errors
    def activate(version: str, request: gr.Request) -> dict:
        """Make a version (e.g. "v1") the active one → {active}."""
        h.writer(None, request)
        return engine.activate(version)

    def status() -> dict:
        """Active version, classes, labelled-image count, whether training is running, upload batches still being
        recorded (``uploads_recording``), uploaded images still being embedded ahead of their prediction
        (``uploads_embedding``), how the active version computes (``model_runtime``)."""
        return engine.status()

    @user_errors
    def audit() -> dict:
        """Audit DATASET + every human label → {items: [{file, sha256, given, suggested, kind, score}] worst
        first, estimated_issues, audited, seconds}. (No folder argument: clients never name server paths.)"""
        return engine.audit()

    gr.api(audit, api_name="audit", concurrency_id="train", concurrency_limit=1)
    gr.api(save_labels, api_name="save_labels")
    gr.api(labels, api_name="labels")
    gr.api(retrain, api_name="retrain", concurrency_id="train", concurrency_limit=8)
    gr.api(cancel, api_name="cancel", concurrency_limit=None)
    gr.api(models, api_name="models")
    gr.api(activate, api_name="activate")
    gr.api(status, api_name="status", concurrency_limit=None)
