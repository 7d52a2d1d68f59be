"""Datasets on the Hub: loading one by its id, pushing an export of the labelled images, and the label journal's
current revision."""
from __future__ import annotations

import logging
from pathlib import Path

from hub.models import hub_errors
from settings import PlatformError, Settings

logger = logging.getLogger(__name__)


def push_export(out_dir: Path, format: str, settings: Settings) -> str:
    """Push an export made by :func:`export_samples` to ``settings.hub_dataset_id``; returns the repo id."""
    repo_id, token = settings.hub_dataset_id, settings.hf_token
    if not repo_id or not token:
        raise PlatformError("Pushing needs HUB_DATASET_ID and HF_TOKEN to be set")
    try:
        if format == "datasets":
            import datasets

            datasets.load_from_disk(str(out_dir)).push_to_hub(repo_id, token=token, private=True)
        else:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
            api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(out_dir), commit_message="Export labelled images")
    except Exception as exc:  # network and Hub libraries raise many types; report any as one line
        message = str(exc).replace(token, "***").split("\n")[0][:300]
        raise PlatformError(f"Pushing to the Hub dataset {repo_id} failed: {message}") from None
    logger.info("pushed the export in %s to the Hub dataset %s", out_dir, repo_id)
    return repo_id


def dataset_revision(settings: Settings) -> str | None:
    """The current commit of ``settings.hub_dataset_id`` (for a model card), or None when it cannot be read."""
    from huggingface_hub import HfApi
    api = HfApi(endpoint=settings.hub_endpoint, token=settings.hf_token or False)
    try:
        with hub_errors("reading the label dataset's revision", settings.hub_dataset_id, settings.hf_token):
            return api.repo_info(settings.hub_dataset_id, repo_type="dataset").sha
    except PlatformError as exc:  # the card just omits the revision
        logger.info("No dataset revision for the model card: %s", exc)
        return None


def load_hub_dataset(repo_id: str, split: str = "train"):
    """The ``split`` of the Hub dataset ``repo_id`` as a ``datasets.Dataset`` (downloaded, or read from the local
    Hugging Face cache when offline); PlatformError saying why when it cannot be loaded."""
    import datasets
    try:
        return datasets.load_dataset(repo_id, split=split)
    except Exception as exc:  # network and Hub libraries raise many types; report any as one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PlatformError(f"Could not load the dataset {repo_id!r}: {type(exc).__name__}: {first}") from None
