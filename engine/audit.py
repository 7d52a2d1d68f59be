"""The engine's data audit: label issues, duplicates, outliers, the review order, and a person's decisions on
them (accept a suggestion, keep, remove, keep one of a duplicate set, undo)."""
from __future__ import annotations

import time

import numpy as np

from engine.samples import human_samples, load_base
from settings import PlatformError


class AuditMixin:
    """Mixed into :class:`engine.Engine`; uses its ``settings``, ``store()``, ``registry``, ``live``, ``jobs``,
    ``publisher`` and ``journal``."""

    # --- data audit (issue 14): label issues, duplicates, outliers, review order ---------------------
    def _labelled_set(self, data: str | None = None, embed_missing: bool = True):
        """The labelled set the audit sees (dataset folder + human labels − removed) and its embeddings on the
        base backbone; the set is remembered until a label or an audit decision changes (the dataset folder is
        read once). ``embed_missing=False`` uses only embeddings already cached (a request path must not embed
        a whole dataset)."""
        from training.review import embedder_for, gather
        from training.run import embed_samples
        store = self.store()
        decisions = store.decisions()
        key = (data or self.settings.dataset, hash(frozenset(store.current_labels().items())),
               hash(frozenset(decisions.items())))
        if self._audit_cache is None or self._audit_cache[0] != key:
            base = load_base(data or self.settings.dataset).samples
            self._audit_cache = (key, gather(base, human_samples(store), decisions))
        labelled = self._audit_cache[1]
        embedder = embedder_for(self.settings)
        if embed_missing:
            feats, _ = embed_samples(embedder, labelled.entries)
        else:
            feats = embedder.cache.get_many([s.sha256 for s in labelled.entries])
        return labelled, feats

    def audit(self, data: str | None = None, with_map: bool = False) -> dict:
        """Audit every labelled image → ``{"items": [{file, sha256, given, suggested, kind, score}, …] worst
        first, "estimated_issues", "audited", "seconds"}`` (+ ``"points"`` for the embedding map)."""
        from training.review import audit_set
        started = time.perf_counter()
        labelled, feats = self._labelled_set(data)
        result = audit_set(labelled, feats)
        self._audit_files = {s.sha256: s for s in labelled.entries}
        result["seconds"] = round(time.perf_counter() - started, 3)
        if not with_map:
            result.pop("points", None)
        return result

    def review_queue(self, results: list[dict], images: dict | None = None) -> dict[str, dict]:
        """``{sha256: {"rank": 1…, "badges": [{"kind", "text"}]}}`` for a predicted batch: most likely wrong
        first (typical examples of each cluster first when no model predicted them). ``images`` (sha256 →
        ImageInput) spares reading images from the store that a request still holds."""
        from classifier.images import ImageInput
        from training.review import embedder_for, queue_for
        labelled, labelled_feats = self._labelled_set(embed_missing=False)
        embedder = embedder_for(self.settings)
        shas = [r["sha256"] for r in results if r.get("sha256")]
        feats = embedder.cache.get_many(shas)  # a head-mode version embedded them already, with this backbone
        images = images or {}
        missing = [images.get(sha) or ImageInput(sha[:12], self.image_bytes(sha), sha) for sha in shas if sha not in feats]
        feats.update(embedder.embed(missing)[0] if missing else {})
        return queue_for(results, feats, labelled, labelled_feats)

    def _ensure_stored(self, shas: list[str]) -> dict:
        """Dataset-folder images enter the store before a person's action on them is recorded; returns the
        audited files by sha256 (their labels before the action)."""
        from classifier.images import ImageInput
        store = self.store()
        missing = set(shas) - store.known_images(list(shas))
        files = self._audit_files
        if missing - set(files):
            files = self._audit_files = {s.sha256: s for s in self._labelled_set()[0].entries}
        store.add_images([ImageInput(files[s].name, files[s].read(), s) for s in missing if s in files], source="dataset")
        return files

    def audit_accept(self, items: list[dict], user: str = "anonymous") -> dict:
        """Accept suggested labels ``[{sha256, label}]`` (saved as human labels); returns ``{saved, undo}``.
        Undo saves the label each image had before (a dataset label then becomes a human one)."""
        files = self._ensure_stored([i.get("sha256") for i in items])
        human = self.store().current_labels()
        before = {i["sha256"]: human.get(i["sha256"]) or getattr(files.get(i["sha256"]), "label", None) for i in items}
        result = self.save_labels(items, user=user)
        undo = [{"sha256": sha, "label": label} for sha, label in before.items() if label]
        return {"saved": result["saved"], "undo": {"action": "label", "items": undo}}

    def audit_decide(self, shas: list[str], decision: str, user: str = "anonymous", duplicate_of: str | None = None) -> dict:
        """Record "keep" (reviewed, not an issue) or "remove" (excluded from training); returns ``{changed, undo}``."""
        self._ensure_stored(list(shas) + ([duplicate_of] if duplicate_of else []))
        items = [{"sha256": s, "decision": decision, "duplicate_of": duplicate_of} for s in shas]
        result = self.store().set_decisions(items, user=user)
        undo = [{"sha256": s, "decision": prev or "clear"} for s, prev in result["previous"].items()]
        return {"changed": result["changed"], "undo": {"action": "decision", "items": undo}}

    def audit_keep_one(self, keep: str, others: list[str], user: str = "anonymous") -> dict:
        """Keep one image of a duplicate set and remove the others from training; returns ``{changed, undo}``."""
        kept = self.audit_decide([keep], "keep", user)
        removed = self.audit_decide([s for s in others if s != keep], "remove", user, duplicate_of=keep)
        return {"changed": kept["changed"] + removed["changed"],
                "undo": {"action": "decision", "items": kept["undo"]["items"] + removed["undo"]["items"]}}

    def audit_undo(self, undo: dict, user: str = "anonymous") -> dict:
        """Undo an audit action with the ``undo`` value it returned (a new history row, nothing deleted)."""
        if not isinstance(undo, dict) or undo.get("action") not in ("label", "decision") or not undo.get("items"):
            raise PlatformError("Nothing to undo")
        if undo["action"] == "label":
            return {"saved": self.save_labels(undo["items"], user=user)["saved"]}
        return {"changed": self.store().set_decisions(undo["items"], user=user)["changed"]}


    def similar_unreviewed(self, sha256: str, old_label: str, results: list[dict], reviewed=(),
                           limit: int | None = None) -> list[dict]:
        """Label by cluster: ``[{sha256, similarity}]`` nearest first (at most ``limit``, default
        ``training.review.CLUSTER_LIMIT``): the images of ``results`` (a batch's ``[{sha256, label}]``) predicted
        ``old_label`` — the corrected image's old prediction — that have no human label in the store, are not in
        ``reviewed`` (touched in this session) and are close to ``sha256`` (see ``training.review.CLUSTER_MARGIN``:
        closer to it than to any labelled image of ``old_label``). Writes nothing; only cached embeddings are
        used, plus the few images of the batch not yet embedded."""
        from classifier.images import ImageInput
        from training.review import CLUSTER_LIMIT, cluster_offer, embedder_for
        if not isinstance(sha256, str) or not isinstance(old_label, str) or not isinstance(results, list):
            raise PlatformError("Similar images need a sha256, its old predicted label and the batch's results")
        if len(results) > self.settings.max_batch:
            raise PlatformError(f"At most {self.settings.max_batch} images (MAX_BATCH) can be compared at once")
        rows = [r for r in results if isinstance(r, dict) and isinstance(r.get("sha256"), str)]
        candidates = list(dict.fromkeys(r["sha256"] for r in rows if r.get("label") == old_label and r["sha256"] != sha256))
        if not candidates:
            return []
        store = self.store()
        excluded = set(store.label_states(candidates + [sha256])) | {s for s in reviewed or () if isinstance(s, str)}
        shas = [s for s in candidates if s not in excluded]  # no current human label, not touched
        if not shas:
            return []
        embedder = embedder_for(self.settings)
        feats = embedder.cache.get_many(shas + [sha256])
        unembedded = [s for s in shas + [sha256] if s not in feats]
        if unembedded:
            try:
                self.recorder.wait(unembedded)  # images predicted moments ago: stored first
            except PlatformError:
                pass  # one whose write was given up is skipped below, as unknown
        known = store.known_images(unembedded) if unembedded else set()  # an unknown sha256 is skipped
        missing = [ImageInput(s[:12], store.image_bytes(s), s) for s in known]
        feats.update(embedder.embed(missing)[0] if missing else {})
        labelled, labelled_feats = self._labelled_set(embed_missing=False)
        reference = [labelled_feats[s.sha256] for s in {s.sha256: s for s in labelled.entries}.values()
                     if s.label == old_label and s.sha256 in labelled_feats]
        return cluster_offer(sha256, old_label, rows, feats, excluded, np.stack(reference) if reference else None,
                             limit or CLUSTER_LIMIT)
