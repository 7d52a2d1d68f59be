"""``finetune`` and ``scratch`` modes: a full model trained with ``transformers.Trainer``.

The same code runs on one CPU, one GPU, or under ``accelerate launch`` / ``torchrun``.
"""
from __future__ import annotations

import functools
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from classifier.images import ImageInput, decode, resize_center_crop, to_array
from classifier.priority import PREDICTIONS
from settings import PlatformError
from training.config import TrainConfig
from training.data import Sample
from training.progress import Cancelled, ProgressEvent

log = logging.getLogger(__name__)


class ImageDataset(torch.utils.data.Dataset):
    """Decodes samples on the fly; random resized crops and flips when ``augment`` is on."""

    def __init__(self, samples: list[Sample], targets: list[int], resolution: int, mean, std,
                 augment: bool, max_pixels: int, seed: int, min_crop: float = 0.5):
        self.samples, self.targets = samples, targets
        self.resolution, self.mean, self.std = resolution, mean, std
        self.augment, self.max_pixels, self.min_crop = augment, max_pixels, min_crop
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def _random_crop(self, img: Image.Image) -> Image.Image:
        if self.min_crop < 1.0:
            width, height = img.size
            area = width * height * self.rng.uniform(self.min_crop, 1.0)
            ratio = np.exp(self.rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w = int(min(width, round((area * ratio) ** 0.5)))
            h = int(min(height, round((area / ratio) ** 0.5)))
            left, top = self.rng.randint(0, width - w), self.rng.randint(0, height - h)
            img = img.crop((left, top, left + w, top + h))
        if self.rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __getitem__(self, index: int):
        sample = self.samples[index]
        try:
            img = decode(ImageInput(sample.name, sample.read(), sample.sha256), self.max_pixels)
        except (PlatformError, OSError):
            return None  # dropped by the collator; counted before training
        if self.augment:
            img = self._random_crop(img)
        return {"pixel_values": torch.from_numpy(to_array(img, self.resolution, self.mean, self.std)),
                "labels": self.targets[index]}


def collate(items):
    items = [i for i in items if i is not None]
    if not items:
        return {"pixel_values": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
            "labels": torch.tensor([i["labels"] for i in items], dtype=torch.long)}


class _Progress(TrainerCallback):
    """Feeds the loss curve and progress out of Trainer, and stops it on request or at a time budget."""

    def __init__(self, report, should_stop, max_seconds):
        self.report, self.should_stop, self.max_seconds = report, should_stop, max_seconds
        self.curve: list[dict] = []
        self.steps = 0
        self.started = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.curve.append({"epoch": round(float(state.epoch or 0), 3), "loss": round(float(logs["loss"]), 5)})
            if self.report:
                self.report(ProgressEvent(state.global_step / max(state.max_steps, 1),
                                          f"step {state.global_step}/{state.max_steps} · loss {logs['loss']:.4f}",
                                          step=state.global_step, epoch=float(state.epoch or 0), loss=float(logs["loss"])))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.should_stop and self.should_stop():  # asked before the first step: do not start one
            control.should_training_stop = True
            raise Cancelled()
        PREDICTIONS.yield_to_predictions()  # a waiting prediction gets the cores before this step

    def on_step_end(self, args, state, control, **kwargs):
        self.steps = state.global_step
        over_time = self.max_seconds and time.monotonic() - self.started > self.max_seconds
        if over_time or (self.should_stop and self.should_stop()):
            control.should_training_stop = True


def fit(model, train_set: ImageDataset, config: TrainConfig, report=None, should_stop=None) -> tuple[list[dict], int]:
    """Train ``model`` in place with Trainer; returns the loss curve and the number of optimizer steps taken
    (under torchrun, per rank)."""
    steps_per_epoch = max(1, -(-len(train_set) // config.batch_size))
    with tempfile.TemporaryDirectory(prefix="trainer-") as scratch_dir:
        args = TrainingArguments(
            output_dir=scratch_dir, per_device_train_batch_size=config.batch_size,
            num_train_epochs=config.epochs, learning_rate=config.lr, weight_decay=config.weight_decay,
            label_smoothing_factor=config.label_smoothing, lr_scheduler_type="cosine",
            # finetune starts from pretrained weights and a fitted head: a linear warm-up over the first 10%
            # of steps keeps Adam's first, full-size steps from wrecking them
            warmup_steps=int(FINETUNE_WARMUP * steps_per_epoch * config.epochs) if config.mode == "finetune" else 0,
            logging_steps=max(1, min(10, steps_per_epoch // 2)), save_strategy="no", eval_strategy="no",
            report_to="none", disable_tqdm=True, seed=config.seed, dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            # without a GPU, say so: under torchrun that is what makes accelerate set up DDP over gloo
            use_cpu=not torch.cuda.is_available(),
            ddp_find_unused_parameters=False,  # frozen blocks have no gradients to wait for
            remove_unused_columns=False,
        )
        callback = _Progress(report, should_stop, config.max_seconds)
        trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collate,
                          callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # progress goes through ``report`` and logging instead
        trainer.train()
    model.eval()
    return callback.curve, callback.steps


FINETUNE_WARMUP = 0.1
"""Share of ``finetune``'s steps spent warming the learning rate up from 0."""
HEAD_DROPOUT = 0.2
"""Most dropout ``finetune`` keeps in front of the classifier. transformers' MobileNetV2 checkpoints carry
``classifier_dropout_prob=0.8`` (TensorFlow's keep probability taken as a drop probability): with it, the
warm-started head sees a fifth of its features while training and the loss starts near chance."""


def cap_head_dropout(model, p: float) -> list[float]:
    """Lower every dropout layer outside the backbone (the classifier's) to at most ``p``; returns the old rates."""
    inside = {id(m) for m in model.base_model.modules()}
    old = []
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and id(module) not in inside and module.p > p:
            old.append(module.p)
            module.p = p
    if old and hasattr(model.config, "classifier_dropout_prob"):
        model.config.classifier_dropout_prob = min(model.config.classifier_dropout_prob, p)
    if old:
        log.info("finetune: classifier dropout %s → %s", old, p)
    return old


def freeze_all_but_last(model, blocks: int) -> int:
    """Freeze the backbone except its last ``blocks`` blocks and everything after them (-1 = train all).

    Blocks are the entries of the backbone's largest ``nn.ModuleList``; returns trainable parameter count.
    """
    base = model.base_model
    if blocks != -1:
        lists = [(name, m) for name, m in base.named_modules() if isinstance(m, torch.nn.ModuleList)]
        if not lists:
            raise PlatformError("This backbone has no block list; use unfreeze_blocks=-1 to train all of it")
        name, blocks_list = max(lists, key=lambda item: len(item[1]))
        first = blocks_list[max(0, len(blocks_list) - blocks)] if blocks > 0 else None
        first_param = next(first.parameters()) if first is not None else None
        trainable = False
        for param in base.parameters():
            trainable = trainable or (first_param is not None and param is first_param)
            param.requires_grad = trainable
    for module in base.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            # Small fine-tuning batches make batch statistics noisy; keep the pretrained ones (eval mode).
            module.train = functools.partial(_stay_eval, module)
            module.eval()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _stay_eval(module: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    return torch.nn.Module.train(module, False)


def build_scratch_model(config: TrainConfig, labels: list[str]):
    """The plain CNN of :mod:`classifier.scratch_cnn` (``filters`` in the first stage, doubling each of
    ``depth`` stages, ``filter_size`` px kernels) for ``labels``, with its image processor.

    It replaced a small EfficientNet built from ``EfficientNetConfig``, which never learned: transformers
    initialises EfficientNet's batch-norm scales from N(0, 0.02) (fine when pretrained weights overwrite
    them), so every batch norm shrank the signal ~50× and the pooled features came out at ~1e-15: constant
    logits, a loss flat at ln(classes), chance accuracy. Its ``batch_norm_momentum=0.99`` (a TensorFlow
    value; PyTorch reads it as "keep 1%") would also have made the saved statistics those of the last batch.

    The scratch defaults (training/config.py: 64 px, depth 4, 32 filters, 3 px kernels, lr 2e-3, batch 64,
    10 epochs, flips but no random crops) were chosen on the validation split ``train_version`` carves from
    3,000 Fashion-MNIST training images (600 images; never the test set): 0.855 with them; batch 32 0.860
    at about 1.4× the CPU time; depth 3 (global pooling over an 8×8 map of small receptive fields) 0.745
    after 8 epochs (same split and model, a plain in-memory loop), and 0.663 after 10 epochs of
    ``train_version`` with random crops (``min_crop`` 0.5).
    """
    from transformers import MobileNetV2ImageProcessor

    from classifier.scratch_cnn import ScratchCNNConfig, ScratchCNNForImageClassification

    cfg = ScratchCNNConfig(filters=config.filters, filter_size=config.filter_size, depth=config.depth,
                           dropout=SCRATCH_DROPOUT, image_size=config.resolution, id2label=dict(enumerate(labels)),
                           label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(config.seed)
    model = ScratchCNNForImageClassification(cfg)
    processor = MobileNetV2ImageProcessor(
        size={"shortest_edge": config.resolution}, crop_size={"height": config.resolution, "width": config.resolution},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return model, processor


SCRATCH_DROPOUT = 0.2
"""Dropout in front of the scratch CNN's classifier."""
