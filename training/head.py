"""``head`` mode: a linear classifier on frozen, cached backbone features.

Features are standardised while training (much faster convergence), and the scaling is folded back
into the weights, so the result is one plain ``nn.Linear`` on raw features — exactly the classifier
of the backbone's ``*ForImageClassification`` model, which ``pipeline()`` then runs as it is.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from classifier.priority import PREDICTIONS
from training.progress import ProgressEvent, Report


def train_linear_head(x: np.ndarray, y: np.ndarray, num_classes: int, *, lr: float, batch_size: int,
                      epochs: int, weight_decay: float, label_smoothing: float, seed: int,
                      report: Report | None = None, should_stop: Callable[[], bool] | None = None,
                      max_seconds: float | None = None) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Fit softmax regression; returns (weight (classes × d), bias (classes), loss curve per epoch)."""
    generator = torch.Generator().manual_seed(seed)
    feats = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    targets = torch.from_numpy(np.asarray(y, dtype=np.int64))
    mean = feats.mean(0)
    std = feats.std(0).clamp_min(1e-6)
    feats = (feats - mean) / std
    linear = torch.nn.Linear(feats.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(feats) / batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    curve, started = [], time.monotonic()
    for epoch in range(epochs):
        order = torch.randperm(len(feats), generator=generator)
        total = 0.0
        for start in range(0, len(feats), batch_size):
            PREDICTIONS.yield_to_predictions()  # a waiting prediction gets the cores before this step
            idx = order[start:start + batch_size]
            loss = loss_fn(linear(feats[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        curve.append({"epoch": epoch + 1, "loss": round(total / len(feats), 5)})
        if report:
            report(ProgressEvent((epoch + 1) / epochs, f"head epoch {epoch + 1}/{epochs} · loss {curve[-1]['loss']:.4f}",
                                 step=(epoch + 1) * steps_per_epoch, epoch=epoch + 1, loss=curve[-1]["loss"]))
        if (should_stop and should_stop()) or (max_seconds and time.monotonic() - started > max_seconds):
            break
    with torch.no_grad():
        weight = linear.weight / std
        bias = linear.bias - (linear.weight * (mean / std)).sum(1)
    return weight.detach(), bias.detach(), curve


def final_linear(module: torch.nn.Module) -> torch.nn.Linear:
    """The last ``nn.Linear`` inside a model's classifier (a Linear itself, or e.g. Flatten → Linear)."""
    if isinstance(module, torch.nn.Linear):
        return module
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError("the model's classifier has no linear layer to train")
    return linears[-1]
