"""Training parameters as one dataclass, validated before any work starts."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from settings import PlatformError

MODES = ("head", "finetune", "scratch")
# Defaults that differ by mode: (lr, batch_size, epochs).
MODE_DEFAULTS = {"head": (3e-3, 256, 60), "finetune": (1e-4, 32, 3), "scratch": (2e-3, 64, 10)}
SCRATCH_RESOLUTION = 64
HEAD_RESOLUTION = 224
"""head mode's default input size in pixels for the bundled backbone, chosen on validation data by
``python -m bench --only resolution`` (the fewest pixels within 0.5 points of 224 px). Measured 2026-12-02 on 6,000
Fashion-MNIST train-pool images, 3,001 of them held out: validation accuracy 0.8584 at 224 px, 0.8520 at 192
(-0.64 points), 0.8471 at 160 (-1.13), 0.8474 at 128 (-1.10), so 224 stays; bfloat16 autocast at 224 px agreed
with float32 on 94.1% of top-1 labels (0.8507, -0.77 points) under a head trained on float32 features (the head
now trains on its own arithmetic's features: ``HEAD_PRECISION``). ``--resolution 128``
is the speed lever for who accepts about a point (about 3x less arithmetic per image)."""
HEAD_PRECISION = "bfloat16-mixed"
"""The arithmetic head versions of the bundled backbone compute their features in, on a CPU with native
bfloat16 (classifier/runtime.py; float32 elsewhere): stem and first block float32, the rest bfloat16. Chosen
on validation data, 2026-12-02: 5,000 Fashion-MNIST train-pool images at 224 px, 5-fold cross-validation of
the head trained on each arithmetic's own features, paired against float32: bfloat16-mixed −0.04 ± 0.13 points,
all-bfloat16 −0.14 ± 0.29; 192 px −0.84 ± 0.39, 160 px −1.02, 128 px −1.68. The backbone forward runs about
1.8× faster compiled (1.4× eager)."""
"""scratch mode's default input size in pixels (chosen on a validation split, see training/trainer.py)."""
MIN_CROP_DEFAULTS = {"finetune": 0.5, "scratch": 1.0}
"""Default ``min_crop`` by mode: scratch sees flips only (random crops slowed its learning within its short
default schedule on the validation split, see training/trainer.py)."""


@dataclass
class TrainConfig:
    mode: str = field(default="head", metadata={"help": "head (frozen backbone, fast), finetune or scratch"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default: head 3e-3, finetune 1e-4, scratch 2e-3)"})
    batch_size: int | None = field(default=None, metadata={"help": "images per step (default: head 256, finetune 32, scratch 64)"})
    epochs: int | None = field(default=None, metadata={"help": "passes over the training set (default: head 60, finetune 3, scratch 10)"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of images held out for validation and for comparing versions, chosen by sha256 so every run holds out the same images (0–0.5)"})
    seed: int = field(default=0, metadata={"help": "random seed for initialisation and augmentation (the validation split is fixed by each image's sha256)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing factor (0–0.5)"})
    unfreeze_blocks: int = field(default=4, metadata={"help": "finetune: how many of the backbone's last blocks to train (-1 = all)"})
    augment: bool = field(default=True, metadata={"help": "finetune/scratch: random crops and flips"})
    min_crop: float | None = field(default=None, metadata={"help": "finetune/scratch: smallest share of the image area a random crop keeps (0.1–1; 1 = flips only; default: finetune 0.5, scratch 1)"})
    filters: int = field(default=32, metadata={"help": "scratch: filters in the first stage's convolution (doubles each stage)"})
    filter_size: int = field(default=3, metadata={"help": "scratch: convolution kernel size in pixels (odd)"})
    depth: int = field(default=4, metadata={"help": "scratch: number of conv → batch norm → ReLU → 2×2 max-pool stages (each halves the image)"})
    resolution: int | None = field(default=None, metadata={"help": f"input size in pixels (default: head with the bundled backbone {HEAD_RESOLUTION}, chosen on validation data; scratch {SCRATCH_RESOLUTION}; otherwise the backbone's)"})
    precision: str | None = field(default=None, metadata={"help": f"head: the arithmetic of the features, float32 or {HEAD_PRECISION} (default: {HEAD_PRECISION} with the bundled backbone on a CPU with native bfloat16, chosen on validation data; otherwise float32)"})
    backbone: str | None = field(default=None, metadata={"help": "head/finetune: Hub id or folder of a Hugging Face image model (default: bundled ImageNet MobileNetV2)"})
    max_seconds: float | None = field(default=None, metadata={"help": "stop training after this many seconds of wall time"})

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise PlatformError("Bad training parameters: " + "; ".join(problems))
        lr, batch_size, epochs = MODE_DEFAULTS[self.mode]
        self.lr = lr if self.lr is None else self.lr
        self.batch_size = batch_size if self.batch_size is None else self.batch_size
        self.epochs = epochs if self.epochs is None else self.epochs
        if self.min_crop is None:
            self.min_crop = MIN_CROP_DEFAULTS.get(self.mode, 1.0)
        if self.mode == "scratch" and self.resolution is None:
            self.resolution = SCRATCH_RESOLUTION

    def problems(self) -> list[str]:
        """Every bad value, each as a sentence (empty when all is well)."""
        out = []
        if self.mode not in MODES:
            out.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        checks = [
            ("lr", self.lr, 1e-7, 10.0, True), ("batch_size", self.batch_size, 1, 4096, True),
            ("epochs", self.epochs, 1, 1000, True), ("val_fraction", self.val_fraction, 0.0, 0.5, False),
            ("weight_decay", self.weight_decay, 0.0, 1.0, False), ("label_smoothing", self.label_smoothing, 0.0, 0.5, False),
            ("unfreeze_blocks", self.unfreeze_blocks, -1, 100, False), ("filters", self.filters, 1, 512, False),
            ("filter_size", self.filter_size, 1, 15, False), ("depth", self.depth, 1, 6, False),
            ("resolution", self.resolution, 16, 1024, True), ("max_seconds", self.max_seconds, 1.0, 7 * 86400.0, True),
            ("seed", self.seed, 0, 2**31 - 1, False), ("min_crop", self.min_crop, 0.1, 1.0, True),
        ]
        for name, value, low, high, optional in checks:
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                out.append(f"{name} must be a finite number, got {value!r}")
            elif not low <= value <= high:
                out.append(f"{name} must be between {low:g} and {high:g}, got {value!r}")
        if self.precision not in (None, "float32", HEAD_PRECISION):
            out.append(f"precision must be float32 or {HEAD_PRECISION}, got {self.precision!r}")
        elif self.precision == HEAD_PRECISION and self.mode != "head":
            out.append(f"precision {HEAD_PRECISION} is for head mode (finetune and scratch train in float32)")
        if isinstance(self.filter_size, int) and self.filter_size % 2 == 0:
            out.append(f"filter_size must be odd, got {self.filter_size}")
        res = self.resolution or SCRATCH_RESOLUTION
        if isinstance(self.filter_size, int) and isinstance(res, int) and self.filter_size > res:
            out.append(f"filter_size {self.filter_size} px is larger than the {res} px input")
        depth_ok = isinstance(self.depth, int) and 1 <= self.depth <= 6
        if self.mode == "scratch" and isinstance(res, int) and res >= 16 and depth_ok:
            # A last map under 2×2 px has lost all layout (and max pooling fails on a 1×1 one).
            if smallest_feature_map(res, self.depth) < 2:
                deepest = max((d for d in range(1, 7) if smallest_feature_map(res, d) >= 2), default=1)
                out.append(f"depth {self.depth} is too deep for a {res} px input: every stage halves the image "
                           f"and it must stay at least 2×2 px; use depth {deepest} or less, or a larger resolution")
        return out

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from loosely typed values (UI, JSON, API): numbers as strings are accepted, junk is not."""
        kwargs = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for name, raw in values.items():
            if name not in types:
                raise PlatformError(f"Unknown training parameter {name!r}")
            if raw is None or raw == "":
                continue
            kind = types[name]
            kwargs[name] = _coerce(name, raw, kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind)))
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def smallest_feature_map(resolution: int, depth: int) -> int:
    """Side (pixels) of the scratch CNN's last feature map: each stage's 2×2 max pooling halves it (rounding down)."""
    return resolution // 2 ** depth


def _coerce(name: str, raw: Any, type_name: str) -> Any:
    if isinstance(raw, bool) and not type_name.startswith("bool"):
        raise PlatformError(f"Bad training parameters: {name} must be a number, got {raw!r}")
    try:
        if type_name.startswith("bool"):
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if type_name.startswith("int"):
            number = float(raw)
            if not math.isfinite(number) or number != int(number):
                raise ValueError
            return int(number)
        if type_name.startswith("float"):
            return float(raw)
        return str(raw).strip()
    except (TypeError, ValueError, OverflowError):
        raise PlatformError(f"Bad training parameters: {name} must be a number, got {raw!r}") from None
