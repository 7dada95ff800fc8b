"""What a :class:`~ssd_tutorial.trainer.Trainer` is set up with, kept out of the loop.

* where the run runs: the process group under ``torchrun`` (:func:`init_distributed`),
  this process's device (:func:`pick_device`), the autocast dtype for ``cfg.amp``
  (:func:`amp_dtype`), the global seeds (:func:`seed_everything`);
* the model's training wrappers, DDP and ``torch.compile`` (:func:`wrap_for_training`),
  and the plain model inside them (:func:`unwrap`: what a checkpoint saves);
* the run's batches: this process's loader of iterations ``start .. end-1``
  (:func:`train_loader`) and a loader batch on the device, augmented there with
  ``augment_on_gpu`` (:func:`batch_to_device`);
* what a checkpoint stores as plain data (:func:`scheduler_state`), its way back
  (:func:`load_scheduler_state`) and the resume check (:func:`check_same_batch_size`);
* :class:`LossWindow`, the losses of one log interval, summed on the device and averaged
  over the processes when logged.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

from ssd_tutorial.augmentation import normalize
from ssd_tutorial.config import TrainConfig
from ssd_tutorial.gpu_augmentation import gpu_ssd_augment
from ssd_tutorial.sampling import (
    ResumableBatchSampler,
    SeededItems,
    collate_to_flat,
    mix_seed,
)

__all__ = [
    "LossWindow",
    "amp_dtype",
    "batch_to_device",
    "check_same_batch_size",
    "init_distributed",
    "load_scheduler_state",
    "pick_device",
    "scheduler_state",
    "seed_everything",
    "train_loader",
    "unwrap",
    "wrap_for_training",
]


def init_distributed(device: str | torch.device | None) -> tuple[int, int, int]:
    """``(world_size, rank, local_rank)`` from torchrun's environment, joining the
    process group (nccl on CUDA, else gloo) when there are several processes; ``(1, 0,
    0)`` otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 1, 0, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (
            device is None or torch.device(device).type == "cuda"
        )
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world_size, rank, local_rank


def pick_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """``device``, or this process's GPU (else the CPU); a CUDA device is made current,
    with an index, and cuDNN autotuning on."""
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        # "cuda" -> the current card, so set_device gets an index
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.amp`` on ``device`` (None: float32 throughout)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs CUDA (use bf16 or none on CPU)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators (the model's init draws from
    them)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def wrap_for_training(
    model: nn.Module, world_size: int, device: torch.device, compile_model: bool
) -> nn.Module:
    """``model`` in DDP with several processes, then compiled (``torch.compile``) if
    ``compile_model``."""
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile_model:
        model = torch.compile(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain SSD300 inside DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def train_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    start: int,
    end: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> DataLoader:
    """Batches of iterations ``start .. end-1`` for process ``rank`` of ``world_size``
    (see :class:`ResumableBatchSampler`): ``(images, boxes [sum G_i, 4], labels [sum
    G_i], counts)`` (:func:`collate_to_flat`)."""
    sampler = ResumableBatchSampler(
        len(dataset), cfg.batch_size, cfg.seed, start, end, rank, world_size
    )
    workers = cfg.num_workers
    return DataLoader(
        SeededItems(dataset, cfg.seed),
        batch_sampler=sampler,
        collate_fn=collate_to_flat,
        num_workers=workers,
        pin_memory=cfg.pin_memory and device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def batch_to_device(
    batch: tuple[Tensor | list[Tensor], Tensor, Tensor, list[int]],
    dev: torch.device,
    cfg: TrainConfig,
    gpu_augment: bool,
    iteration: int,
    rank: int,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """A loader batch -> ``(images float [B, 3, S, S] normalized, B boxes [G_i, 4], B
    labels [G_i])`` on ``dev``; with ``gpu_augment`` augmented there, with a generator
    seeded from ``(cfg.seed, iteration, rank)``."""
    images, boxes, labels, counts = batch
    if isinstance(images, list):  # photos of different sizes, for gpu_ssd_augment
        if not gpu_augment:
            raise ValueError(
                "images of different sizes reached the model: resize them "
                "(augment=True)"
            )
        images = [image.to(dev, non_blocking=True) for image in images]
    else:
        images = images.to(dev, non_blocking=True)
    boxes = boxes.to(dev, non_blocking=True)
    labels = labels.to(dev, non_blocking=True)
    if gpu_augment:
        generator = torch.Generator(device=dev).manual_seed(
            mix_seed(cfg.seed, 31, iteration, rank)
        )
        images, box_list, label_list = gpu_ssd_augment(
            images,
            list(boxes.split(counts)),
            list(labels.split(counts)),
            generator,
            size=cfg.image_size,
        )
    else:
        # from the workers (see recipes.worker_transform): normalize here
        if images.dtype == torch.uint8:
            images = normalize(images)
        # [G_i, 4], [G_i]
        box_list, label_list = (
            list(boxes.split(counts)),
            list(labels.split(counts)),
        )
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, box_list, label_list


def scheduler_state(scheduler: LambdaLR) -> dict[str, Any]:
    """The scheduler's state as plain data: without its ``lr_lambdas`` (functions do not
    load with ``weights_only=True``; :func:`load_scheduler_state` puts them back)."""
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}


def load_scheduler_state(scheduler: LambdaLR, state: dict[str, Any]) -> None:
    """Restore :func:`scheduler_state` into ``scheduler``, which keeps its own
    lambdas."""
    state = dict(state)
    state["lr_lambdas"] = [None] * len(scheduler.optimizer.param_groups)
    scheduler.load_state_dict(state)


def check_same_batch_size(state: dict[str, Any], batch_size: int) -> None:
    """A checkpoint resumes only with the global batch it was trained with (else the
    data order changes); one that does not say is taken as it is."""
    saved_cfg = state.get("config", {})
    if saved_cfg.get("batch_size") not in (None, batch_size):
        raise ValueError(
            f"checkpoint was trained with batch_size {saved_cfg['batch_size']}, this "
            f"run has {batch_size}: resuming would change the data order"
        )


class LossWindow:
    """The losses of one log interval, summed on the device (no host synchronisation
    until logged)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum: dict[str, Tensor] = {}
        self.images, self.iters = 0, 0
        self.start = time.perf_counter()

    def add(self, out: dict[str, Tensor], images: int) -> None:
        """Add one step's 0-dim losses ``out`` over ``images`` images."""
        self.images += images
        self.iters += 1
        for k, v in out.items():
            self.loss_sum[k] = self.loss_sum[k] + v if k in self.loss_sum else v

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def mean_losses(self, world_size: int = 1) -> list[float]:
        """``[loss, loc, conf]`` averaged over the window's steps and the processes: the
        one host synchronisation per log interval."""
        stacked = (
            torch.stack(
                [self.loss_sum["loss"], self.loss_sum["loc"], self.loss_sum["conf"]]
            )
            / self.iters
        )
        if world_size > 1:
            dist.all_reduce(stacked)
            stacked /= world_size
        return stacked.tolist()
