"""What the engine trains and audits on: the dataset folder and the store's human labels as samples."""
from __future__ import annotations

from training.data import LoadedData, Sample, load_samples


def human_samples(store) -> list[Sample]:
    """Every current human label in the store as a Sample (bytes read lazily from GridFS)."""
    return [Sample(li.sha256, li.label, li.name, li.read) for li in store.labelled_samples()]


def load_base(data: str | None) -> LoadedData:
    """The dataset ``data`` names (folder, .zip, saved dataset, Hub id); empty when none is set."""
    return load_samples(data) if data else LoadedData([])
