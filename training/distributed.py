"""Runs under ``torchrun``: which process this is, and the rule that only rank 0 registers a version.

``torchrun --nproc_per_node N -m training --mode finetune …`` starts N copies of the same run; the stock
``Trainer`` sees torchrun's variables and trains with DistributedDataParallel (gloo on CPU, nccl on GPU),
each rank on its share of every epoch, ``batch_size`` images per rank per step (global batch N × batch_size).
Every rank embeds, warm-starts and trains the same way, so all end with the same weights; rank 0 registers
and activates them, the others discard their copy and report its digest (``weights_digest``). In ``scratch``
mode batch norm trains, and DDP copies rank 0's running statistics to the others at each step, so their
digests can differ by the last step's statistics; the version registered is rank 0's either way.
"""
from __future__ import annotations

import os

from settings import PlatformError


def rank() -> int:
    """This process's global rank (0 outside torchrun). torchrun's own variable, not platform configuration."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes train together (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def check_distributed(config) -> None:
    """Refuse what cannot work across ranks: a time budget stops each rank at a different step, and the
    ranks still waiting in an all-reduce would hang."""
    if world_size() > 1 and config.max_seconds:
        raise PlatformError("max_seconds cannot be used under torchrun (ranks would stop at different steps "
                            "and hang); set epochs instead")
    if world_size() > 1 and config.mode == "head":
        raise PlatformError("Under torchrun use --mode finetune or scratch: head mode trains in one process")
