"""The engine's labelling side: saving, reading, reverting and importing human labels, and exporting them."""
from __future__ import annotations

import logging
from pathlib import Path

from hub.datasets import push_export
from settings import PlatformError
from training.data import load_samples

log = logging.getLogger(__name__)


class LabelsMixin:
    """Mixed into :class:`engine.Engine`; uses its ``settings``, ``store()``, ``registry``, ``live``, ``jobs``,
    ``publisher`` and ``journal``."""

    # --- labels ----------------------------------------------------------------------------------
    def save_labels(self, items: list[dict], user: str = "anonymous") -> dict:
        """Save ``[{sha256, label}]`` once durably written; returns ``{saved, unchanged, new_classes, labels,
        rejected}``. A bad item (invalid label, unknown image) is skipped with its reason in ``rejected``;
        if no item can be saved, PlatformError says why and nothing is written."""
        from labeling.records import nothing_saved, partition_items

        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise PlatformError("Labels must be a list of {\"sha256\": …, \"label\": …} objects")
        if not items:
            raise PlatformError("No labels to save")
        good, rejected = partition_items(items)
        try:
            self.recorder.wait([i["sha256"] for i in good])  # images predicted moments ago: stored first
        except PlatformError:
            pass  # an image whose write was given up is rejected below as not in the store
        store = self.store()
        known = store.known_images([i["sha256"] for i in good]) if good else set()
        rejected += [dict(i, error=f"image {i['sha256'][:12]} is not in the store: predict it first")
                     for i in good if i["sha256"] not in known]
        good = [i for i in good if i["sha256"] in known]
        if not good:
            raise nothing_saved(rejected)
        result = store.save_labels(good, user=user, known_classes=self.classes())
        result["rejected"] = rejected
        # as saved: normalised, case mapped onto known classes
        self._journal(store, [{"sha256": sha, "label": lab} for sha, lab in result["labels"].items()], user)
        return result

    def _journal(self, store, changes: list[dict], user: str) -> None:
        """Append saved label changes ``[{sha256, label (None: reverted)}]`` to the Hub journal, if there is one."""
        if self.journal is None or not changes:
            return
        predictor = self.live.current()
        rows = [{"sha256": c["sha256"], "label": c["label"], "user": user,
                 "model_version": predictor.version if predictor else None} for c in changes]
        self.journal.append(rows, {c["sha256"]: store.image_bytes(c["sha256"]) for c in changes if c["label"] is not None})

    def labels(self, shas: list[str] | None = None) -> list[dict]:
        """The current human labels ``[{sha256, label, state, revision, updated_by, updated_at}]`` (``shas``:
        only those images), sorted by sha256; ``state`` is "confirmed" (the prediction when saved) or "corrected"."""
        if shas is not None and (not isinstance(shas, list) or not all(isinstance(s, str) for s in shas)):
            raise PlatformError("sha256s must be a list of strings")
        rows = self.store().label_states(shas)
        return [rows[sha] for sha in sorted(rows)]

    def label_states(self, shas: list[str]) -> dict[str, dict]:
        """Like :meth:`labels` for an editor: sha256 → row, reverted images included (label None) with their
        revision, which an edit must name."""
        return self.store().label_states(shas, include_reverted=True)

    def set_label(self, sha256: str, label: str | None, user: str = "anonymous",
                  expected_revision: int | None = None) -> dict:
        """One person's edit of one image: ``label`` (None reverts to no human label), saved durably once
        ``expected_revision`` (the revision the editor saw) is still current; see ``LabelStore.set_label``."""
        if not isinstance(sha256, str) or (label is not None and not isinstance(label, str)):
            raise PlatformError("An edit needs a sha256 and a label (or null to revert)")
        self.recorder.wait([sha256])  # the image predicted moments ago is stored before its label
        store = self.store()
        result = store.set_label(sha256, label, user=user, expected_revision=expected_revision,
                                 known_classes=self.classes())
        if result["status"] == "saved":
            self._journal(store, [result], user)
        return result

    def label_detail(self, sha256: str) -> dict:
        """What a person needs to judge one image: ``{label, history (who, when, which version predicted
        what; newest first), predictions (each version's top-k, newest first)}``."""
        self.recorder.wait([sha256])
        store = self.store()
        state = store.label_states([sha256], include_reverted=True).get(sha256)
        return {"label": state, "history": store.history(sha256, limit=50), "predictions": store.predictions_of(sha256)}

    def image_bytes(self, sha256: str) -> bytes:
        """The stored bytes of an image; PlatformError if unknown."""
        self.recorder.wait([sha256])
        return self.store().image_bytes(sha256)

    def import_labelled(self, source, user: str = "anonymous") -> dict:
        """Import a folder or ``.zip`` of class sub-folders as human labels by ``user`` (images stored once,
        labels saved like any edit). Returns ``{imported, unchanged, classes, new_classes, skipped}``."""
        from classifier.images import ImageInput

        loaded = load_samples(source)
        if not loaded.samples:
            raise PlatformError(f"No labelled images found in {Path(str(source)).name}: expected one sub-folder "
                                "per class holding images")
        store = self.store()
        origin = "folder" if Path(str(source)).is_dir() else "upload"
        images = [ImageInput(s.name, s.read(), s.sha256) for s in loaded.samples]
        store.add_images(images, source=origin)
        result = store.save_labels([{"sha256": s.sha256, "label": s.label} for s in loaded.samples], user=user,
                                   known_classes=self.classes())
        self._journal(store, [{"sha256": sha, "label": lab} for sha, lab in result["labels"].items()], user)
        return {"imported": result["saved"], "unchanged": result["unchanged"], "classes": loaded.classes,
                "new_classes": result["new_classes"], "skipped": loaded.skipped}


    # --- labelled data for the CLIs -----------------------------------------------------------------
    def label_stats(self) -> dict:
        """Counts of images, labels, classes and batches in the store (``python -m labeling stats``)."""
        return self.store().stats()

    def export_labels(self, out_dir, format: str = "imagefolder", push: bool = False) -> dict:
        """Write the labelled images as an ``imagefolder`` tree or a saved ``datasets`` folder; with ``push``,
        also to ``HUB_DATASET_ID``. Returns the counts."""
        if push and not (self.settings.hub_dataset_id and self.settings.hf_token):
            raise PlatformError("--push needs HUB_DATASET_ID and HF_TOKEN to be set")
        counts = self.store().export(out_dir, format=format)
        if push:
            counts["pushed_to"] = push_export(Path(counts["out_dir"]), format, self.settings)
        return counts

