"""Training SSD: the loop, its data order, checkpoints, resume and several GPUs.

    python -m ssd_tutorial.train --config shapes_cpu --output-dir runs/tiny
    python -m ssd_tutorial.train --config shapes_gpu --output-dir runs/shapes --set lr=0.002
    torchrun --nproc-per-node 4 -m ssd_tutorial.train --config ssd300_voc0712 --output-dir runs/voc
    python -m ssd_tutorial.train --config shapes_cpu --output-dir runs/tiny --resume

What one iteration does (paper p.5-6): sample a batch of augmented images, run SSD300
(``loc [B, 8732, 4]``, ``conf_logits [B, 8732, C]``), match the ground truth to the 8732 default
boxes and score the guesses with the multibox loss (smooth L1 + cross-entropy with hard negative
mining), then one SGD step with momentum and weight decay.

Exact resume: the data order is a function of ``(seed, iteration)`` only
(:class:`ResumableBatchSampler`) and the augmentation of each image is seeded by its position in
that stream, so a run resumed from iteration k sees the same batches as one never stopped; the
checkpoint holds everything else (weights, optimizer, scheduler, scaler, random states).

Several processes (``torchrun``): ``cfg.batch_size`` is the global batch; process r takes its
slice of every global batch and the loss is normalized by the number of positives of the
WHOLE global batch, so W processes compute the same step as one (up to float summation order).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ssd_tutorial.checkpoint import (
    CHECKPOINT_PATTERN,
    LAST,
    latest_checkpoint,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ssd_tutorial.config import PRESETS, TrainConfig, apply_overrides, config_from_dict, get_config

__all__ = [
    "ResumableBatchSampler",
    "SeededItems",
    "lr_factor",
    "build_scheduler",
    "build_optimizer",
    "parameter_groups",
    "build_model",
    "build_datasets",
    "class_names_for",
    "compute_loss",
    "evaluate_model",
    "run_files",
    "Trainer",
    "train",
    "main",
]


# ------------------------------------------------------------------------------------------
# Data order: a function of (seed, iteration) only
# ------------------------------------------------------------------------------------------
def _mix(*numbers: int) -> int:
    """A deterministic 63-bit seed from a few integers (SplitMix64-style mixing)."""
    x = 0x9E3779B97F4A7C15
    for n in numbers:
        x = (x ^ (int(n) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class ResumableBatchSampler:
    """Batches of ``(dataset index, stream position)`` pairs whose order depends only on the seed.

    Epoch e is the permutation ``randperm(num_items)`` drawn from a generator seeded with
    ``(seed, e)``; it is cut into global batches of ``global_batch`` items (an incomplete last
    batch is dropped).  Iteration i reads global batch i of that endless stream, so starting at
    ``start_iteration`` replays exactly what an uninterrupted run would have read.  With
    ``world_size`` processes, process ``rank`` yields its slice ``[rank*b, (rank+1)*b)`` of
    each global batch (``b = global_batch // world_size``).  The stream position of an item
    seeds its augmentation (see :class:`SeededItems`).
    """

    def __init__(
        self,
        num_items: int,
        global_batch: int,
        seed: int,
        start_iteration: int = 0,
        end_iteration: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch_size {global_batch} is not divisible by the {world_size} processes")
        if num_items < global_batch:
            raise ValueError(f"the dataset has {num_items} items, fewer than one batch of {global_batch}")
        self.num_items = num_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.start_iteration = start_iteration
        self.end_iteration = end_iteration
        self.rank = rank
        self.batches_per_epoch = num_items // global_batch
        self._cached_order: tuple[int, list[int]] = (-1, [])  # (epoch, its order): one randperm per epoch

    def epoch_order(self, epoch: int) -> Tensor:
        """``[num_items]`` permutation used in ``epoch``."""
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        return torch.randperm(self.num_items, generator=generator)

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """This process's ``(index, position)`` pairs of global batch ``iteration``."""
        epoch, k = divmod(iteration, self.batches_per_epoch)
        if self._cached_order[0] != epoch:
            self._cached_order = (epoch, self.epoch_order(epoch).tolist())
        order = self._cached_order[1]
        first = k * self.global_batch + self.rank * self.local_batch
        position = iteration * self.global_batch + self.rank * self.local_batch
        return [(order[first + j], position + j) for j in range(self.local_batch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iteration
        while self.end_iteration is None or iteration < self.end_iteration:
            yield self.batch(iteration)
            iteration += 1

    def __len__(self) -> int:
        if self.end_iteration is None:
            raise TypeError("an endless sampler has no length")
        return max(0, self.end_iteration - self.start_iteration)


class SeededItems(Dataset):
    """``dataset[index]`` with every random generator seeded by ``(seed, position)``.

    Augmentations draw from the global torch / numpy / Python generators; seeding them per item
    makes the augmented image a function of its place in the data stream, whatever worker
    process builds it and whether the run was resumed.  The caller's generator states are
    restored afterwards, so this has no side effect in the main process.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, position = key
        item_seed = _mix(self.seed, 7919, position)
        saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        try:
            # The CPU generator only: torch.manual_seed also queues a lazy seeding of every
            # accelerator generator, which records a Python stack trace each call (about 1 ms).
            torch.default_generator.manual_seed(item_seed)
            np.random.seed(item_seed % 2**32)
            random.seed(item_seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


def _collate_to_flat(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[Tensor | list[Tensor], Tensor, Tensor, list[int]]:
    """Stack images; concatenate every box and label into one tensor (one host->device copy each).

    Returns ``(images [B, 3, H, W], boxes [sum G_i, 4], labels [sum G_i], counts [G_i per image])``.
    Images of different sizes (photos not yet augmented: ``augment_on_gpu``) stay a list of
    ``[3, H_i, W_i]``, which :func:`ssd_tutorial.gpu_augmentation.gpu_ssd_augment` takes.
    """
    from ssd_tutorial.data import detection_collate

    if len({tuple(image.shape) for image, _ in batch}) > 1:
        images: Tensor | list[Tensor] = [image for image, _ in batch]
        targets = [target for _, target in batch]
    else:
        images, targets = detection_collate(batch)
    counts = [int(t["boxes"].shape[0]) for t in targets]
    boxes = torch.cat([t["boxes"].reshape(-1, 4).float() for t in targets])  # [sum G_i, 4]
    labels = torch.cat([t["labels"].reshape(-1).long() for t in targets])  # [sum G_i]
    return images, boxes, labels, counts


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------
def lr_factor(cfg: TrainConfig, iteration: int) -> float:
    """The learning-rate multiplier at ``iteration``: linear warmup, then x ``lr_gamma`` at each step.

    Warmup goes linearly from ``warmup_factor`` (iteration 0) to 1 (iteration ``warmup_iters``).
    """
    factor = cfg.lr_gamma ** sum(iteration >= step for step in cfg.lr_steps)
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`lr_factor` (stepped once per iteration)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it))


def parameter_groups(cfg: TrainConfig, model: nn.Module) -> list[dict]:
    """The trainable parameters as optimizer groups: weights, then biases (if they differ).

    Caffe's solver (ssd_pascal.py: ``lr_mult: 2, decay_mult: 0`` on every bias) trains biases
    at twice the lr without weight decay; ``cfg.bias_lr_mult`` / ``cfg.bias_weight_decay`` say
    whether to.  With the defaults (1.0, True) everything is one group.  A group's ``lr`` is its
    base lr; the scheduler multiplies each group's own base by ``lr_factor``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.bias_lr_mult == 1.0 and cfg.bias_weight_decay:
        return [{"params": [p for _, p in named], "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    # 1-d parameters are the conv biases and the L2Norm scale; only the biases are Caffe's bias
    # blobs (the L2Norm scale is a weight there: lr_mult 1, decay).
    biases = [p for n, p in named if n.endswith(".bias")]
    weights = [p for n, p in named if not n.endswith(".bias")]
    return [
        {"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": biases, "lr": cfg.lr * cfg.bias_lr_mult,
         "weight_decay": cfg.weight_decay if cfg.bias_weight_decay else 0.0},
    ]


def build_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay (paper p.7 / Caffe solver), or AdamW (``cfg.optimizer``).

    Parameter groups from :func:`parameter_groups`.  Fused kernel on CUDA when this torch has it
    (one launch for all parameters), else foreach.
    """
    groups = parameter_groups(cfg, model)
    if cfg.optimizer == "adamw":
        # Departure (tiny CPU model only): AdamW, betas (momentum, 0.999), decoupled decay.
        kwargs = dict(lr=cfg.lr, betas=(cfg.momentum, 0.999))
        cls: type[torch.optim.Optimizer] = torch.optim.AdamW
    else:
        kwargs = dict(lr=cfg.lr, momentum=cfg.momentum)
        cls = torch.optim.SGD
    if device.type == "cuda":
        try:
            return cls(groups, fused=True, **kwargs)
        except (TypeError, RuntimeError, ValueError):
            pass
    return cls(groups, foreach=True, **kwargs)


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """SSD300 (or its tiny preset) with ``num_classes`` outputs including background.

    ``cfg.init == "caffe_xavier"`` re-initializes every conv not loaded from ``backbone_weights``
    with Caffe's xavier filler (variance 1/fan_in).  ``cfg.init == "kaiming"`` re-initializes the convs that are followed by a ReLU and were not
    loaded from ``backbone_weights`` (He-normal, fan-in, zero bias); the loc/conf heads keep the
    model's Xavier init.
    """
    from ssd_tutorial.default_boxes import LAYOUTS
    from ssd_tutorial.model import build_ssd

    # SSD300, or SSD512 for a layout of 7 maps (cfg.prior_layout)
    model = build_ssd(num_classes, LAYOUTS[cfg.prior_layout], cfg.backbone_weights, cfg.width_mult)
    pretrained = ("backbone.", "fc.") if cfg.backbone_weights else ()
    if cfg.init == "caffe_xavier":
        # Caffe's xavier filler: U(-a, a) with a = sqrt(3 / fan_in), variance 1 / fan_in
        # (filler.hpp, variance_norm FAN_IN by default); every conv not loaded, heads included.
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and not name.startswith(pretrained):
                fan_in = module.weight[0].numel()
                bound = math.sqrt(3.0 / fan_in)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)
    if cfg.init == "kaiming":
        # Departure from Caffe SSD (Xavier everywhere): He init keeps the activations' scale
        # through the VGG stack when it is trained from scratch without batch normalization.
        for name, module in model.named_modules():
            if not isinstance(module, nn.Conv2d) or name.startswith(("loc_heads", "conf_heads")):
                continue
            if name.startswith(pretrained):
                continue
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return model


def class_names_for(cfg: TrainConfig, train_set: Dataset | None = None) -> tuple[str, ...]:
    """Class names (without background) of the config's dataset; for dataset "files", those
    ``train_set`` found in its data (see :func:`ssd_tutorial.own_data.open_data`)."""
    from ssd_tutorial.data import SHAPES_CLASSES, VOC_CLASSES

    if cfg.dataset == "shapes":
        return tuple(SHAPES_CLASSES)
    if cfg.dataset == "files":
        from ssd_tutorial.own_data import class_names_of

        if train_set is None:
            raise ValueError("dataset 'files' takes its class names from the data: pass train_set")
        return class_names_of(train_set)
    return tuple(cfg.class_names) if cfg.class_names else tuple(VOC_CLASSES)


def _resolve(path: str) -> Path:
    return Path(path).expanduser()


def build_datasets(cfg: TrainConfig, train_transform: Any = None) -> tuple[Dataset, Dataset | None]:
    """(train dataset with ``train_transform``, val dataset without transform or None).

    Items: ``(image uint8 [3, H, W] or transformed, target)`` with pixel xyxy boxes (see
    ``ssd_tutorial.data``).
    """
    from ssd_tutorial.data import ShapesDataset, VOCDataset

    if cfg.dataset == "files":
        return own_datasets(cfg, train_transform)
    if cfg.dataset == "shapes":
        train_set = ShapesDataset(cfg.shapes_train_images, cfg.image_size, cfg.shapes_train_seed, train_transform)
        val_set = ShapesDataset(cfg.shapes_val_images, cfg.image_size, cfg.shapes_val_seed) if cfg.shapes_val_images else None
        return train_set, val_set
    if not cfg.voc_roots:
        raise ValueError("dataset 'voc' needs voc_roots (folders in VOC layout), e.g. --set voc_roots=data/VOCdevkit/VOC2007")
    names = class_names_for(cfg)
    parts = []
    for root in cfg.voc_roots:
        if not _resolve(root).is_dir():
            raise FileNotFoundError(
                f"VOC folder {root} not found: download it with `python data_scripts/download_voc.py` "
                "or set voc_roots"
            )
        parts.append(VOCDataset(_resolve(root), split=cfg.train_split, transform=train_transform, class_names=names))
    train_set = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    val_set = None
    if cfg.val_root and _resolve(cfg.val_root).is_dir():
        val_set = VOCDataset(_resolve(cfg.val_root), split=cfg.val_split, class_names=names)
    elif cfg.val_root:  # training goes on, but a mistyped folder must not cost the run its mAP silently
        warnings.warn(f"val_root {cfg.val_root} not found: no periodic or final evaluation", stacklevel=2)
    return train_set, val_set


def compute_loss(
    loss_fn: nn.Module,
    loc: Tensor,
    conf_logits: Tensor,
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    world_size: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """The multibox loss of this process's images: ``(total, loc, conf)`` 0-dim tensors.

    ``loss_fn`` is a :class:`ssd_tutorial.loss.MultiboxLoss` (priors, ratio, alpha, threshold).
    With several processes the loss is re-normalized by the positives of the whole global
    batch and multiplied by ``world_size`` (DDP averages gradients over processes), so the
    gradient is that of one process holding the whole batch.  No host synchronisation.
    """
    from ssd_tutorial.loss import multibox_loss

    loc_targets, labels = loss_fn.targets(gt_boxes, gt_labels)  # [B, P, 4] encoded, [B, P] long
    out = multibox_loss(loc, conf_logits, loc_targets, labels, loss_fn.neg_pos_ratio, loss_fn.alpha)
    if world_size == 1:
        return out.total, out.loc, out.conf
    local_n = (labels > 0).sum().to(out.total.dtype)
    global_n = local_n.detach().clone()
    dist.all_reduce(global_n)
    scale = local_n.clamp(min=1) * world_size / global_n.clamp(min=1)
    return out.total * scale, out.loc * scale, out.conf * scale


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain SSD300 inside DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


class _JsonlWriter:
    """Append-only metrics file (one JSON object per line); on resume, later lines are dropped.

    So is a line cut short by a kill mid-write (it no longer parses).
    """

    def __init__(self, path: Path, resume_iteration: int | None) -> None:
        self.path = path
        if resume_iteration is None:
            path.write_text("")
        elif path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("iteration", 0) <= resume_iteration:
                    kept.append(line)
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def run_files(folder: Path) -> list[Path]:
    """The files a run writes in ``folder``: checkpoints (and their temp files), ``metrics.jsonl``,
    ``config.json`` and TensorBoard's event files.  What ``overwrite`` deletes; nothing else is."""
    files = [folder / name for name in (LAST, "metrics.jsonl", "config.json")]
    files += [p for p in folder.glob("checkpoint_*.pt") if CHECKPOINT_PATTERN.match(p.name)]
    files += list(folder.glob(".checkpoint_*.tmp")) + list(folder.glob(f".{LAST}.*.tmp"))
    files += list((folder / "tensorboard").glob("events.out.tfevents.*"))
    return sorted(p for p in files if p.is_file())


def _check_new_run(folder: Path, overwrite: bool) -> None:
    """Refuse to start a run in a folder holding another one's records, unless ``overwrite``.

    A run is a checkpoint or a non-empty ``metrics.jsonl`` (an empty one holds nothing to lose):
    starting afresh would truncate the metrics and replace ``last.pt``, and the old numbered
    checkpoints left beside the new ones would make a later resume continue a mixture.
    """
    held = [p.name for p in run_files(folder) if p.name.endswith(".pt")]
    metrics = folder / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        held.append(metrics.name)
    if held and not overwrite:
        raise FileExistsError(
            f"{folder} holds a run ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}): continue it with "
            "--resume (resume=True), delete its checkpoints and metrics with --overwrite (overwrite=True), "
            "or choose another --output-dir"
        )


def _set_transform(dataset: Dataset, transform: Any) -> None:
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    dataset.transform = transform


def own_datasets(cfg: TrainConfig, train_transform: Any = None, log: Any = print) -> tuple[Dataset, Dataset]:
    """(train, val) of dataset "files": ``cfg.data`` (a VOC-layout folder or a COCO JSON), its
    validation set ``cfg.val_data``, or for a VOC folder its ImageSets/Main/train.txt and val.txt,
    or else a seeded ``cfg.val_fraction`` of it.  Both are checked up front
    (:func:`ssd_tutorial.own_data.check_dataset`): every bad file is listed in one error, or with
    ``cfg.skip_bad`` left out and counted.  Val classes must be the train set's.
    """
    from ssd_tutorial.own_data import DatasetError, check_dataset, class_names_of, open_data, split_train_val

    names = tuple(cfg.class_names) or None
    images = _resolve(cfg.images) if cfg.images else None
    data = _resolve(cfg.data)
    split_files = data / "ImageSets" / "Main"
    if cfg.val_data:
        train_set = open_data(data, images, names)
        names = names or class_names_of(train_set)
        val_images = _resolve(cfg.val_images) if cfg.val_images else None
        val_set = open_data(_resolve(cfg.val_data), val_images, names)
        how = f"validation: {cfg.val_data}"
    elif data.is_dir() and (split_files / "train.txt").is_file() and (split_files / "val.txt").is_file():
        train_set = open_data(data, None, names, split="train")
        val_set = open_data(data, None, names or class_names_of(train_set), split="val")
        how = "ImageSets/Main/train.txt and val.txt"
    else:
        train_set, val_set = split_train_val(open_data(data, images, names), cfg.val_fraction, cfg.seed)
        how = f"a seeded split holding out {len(val_set)} images (val_fraction {cfg.val_fraction}, seed {cfg.seed})"
    if class_names_of(val_set) != class_names_of(train_set):  # a VOC val folder's names are discovered anew
        raise ValueError(
            f"{cfg.val_data}: classes {list(class_names_of(val_set))} differ from the training data's "
            f"{list(class_names_of(train_set))}"
        )
    # Both sets checked before either error is raised: one report lists every bad file.
    problems, total, checked = [], 0, []
    for dataset, name in ((train_set, f"training data {cfg.data}"), (val_set, f"validation data ({how})")):
        total += len(dataset)
        try:
            checked.append(check_dataset(dataset, cfg.skip_bad, name))
        except DatasetError as error:
            problems += error.problems
    if problems:
        raise DatasetError(problems, total)
    (train_set, train_check), (val_set, val_check) = checked
    log(f"data {cfg.data}: classes {', '.join(class_names_of(train_set))}; {how}")
    for check, name in ((train_check, "train"), (val_check, "val")):
        log(check.summary(name) + (": skipped (--skip-bad)" if check.problems else ""))
        for problem in check.problems:
            log(f"  skipped: {problem}")
    _set_transform(train_set, train_transform)
    return train_set, val_set


def initial_weights(source: str) -> tuple[dict[str, Tensor], Any, str]:
    """The detector to fine-tune from: ``(state dict, DefaultBoxConfig its boxes follow, description)``.

    ``source``: a published detector's name (see :mod:`ssd_tutorial.pretrained`), or a path to a
    checkpoint of this package (training checkpoint or plain state dict), or published weights
    on disk.  Read with ``weights_only=True``.
    """
    from ssd_tutorial.checkpoint import load_checkpoint
    from ssd_tutorial.default_boxes import SSD300_VOC
    from ssd_tutorial.pretrained import PUBLISHED, load_pretrained

    path = _resolve(source)
    if source not in PUBLISHED and path.is_file():
        state = load_checkpoint(path)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a training checkpoint
            return state["model"], stored_prior_config(state), f"{source} (iteration {state.get('iteration')})"
        if isinstance(state, dict) and "conf_heads.0.weight" in state:  # this package's state dict
            return state, SSD300_VOC, source
    detector = load_pretrained(source, progress=False)  # other layouts, and names
    return detector.model.state_dict(), detector.prior_config, detector.source


def stored_prior_config(state: dict[str, Any]) -> Any:
    """The default-box layout a checkpoint's model was trained with (SSD300_VOC when it says none)."""
    from ssd_tutorial.default_boxes import SSD300_VOC, DefaultBoxConfig

    saved = state.get("prior_config")
    if not saved:
        return SSD300_VOC
    return DefaultBoxConfig(**{
        k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
        for k, v in saved.items()
    })


# ------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------
class Trainer:
    """One training run: model, optimizer, schedule, data, checkpoints, metrics.

    ``Trainer(cfg, output_dir).fit()`` trains to ``cfg.max_iters`` (or ``stop_at``).  Under
    ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it joins the process group itself.
    ``output_dir`` must not hold another run unless ``resume`` (continue it) or ``overwrite``
    (delete its :func:`run_files` first) is given.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        output_dir: str | Path,
        resume: bool = False,
        device: str | torch.device | None = None,
        progress: bool = True,
        overwrite: bool = False,
    ) -> None:
        from ssd_tutorial.default_boxes import LAYOUTS, default_boxes
        from ssd_tutorial.loss import MultiboxLoss
        from ssd_tutorial.own_data import transfer_weights

        self.cfg = cfg
        self.output_dir = Path(output_dir)
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
        if not resume:
            # Every process checks before the process group forms: nothing is written before then.
            _check_new_run(self.output_dir, overwrite)
        self.world_size, self.rank, local_rank = self._init_distributed(device)
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if self.device.index is None:  # "cuda" -> the current card, so set_device gets an index
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.amp_dtype = self._amp_dtype()

        # The data first: for your own data it names the classes (and is checked before any model).
        # Batched augmentation on the training device (ssd_tutorial.gpu_augmentation) instead of
        # SSDAugmentation in the DataLoader workers; meant for CUDA, works on any device.
        self.gpu_augment = cfg.augment_on_gpu and cfg.augment
        self.train_set, self.val_set = build_datasets(cfg, None if self.gpu_augment else self._cpu_transform())
        from ssd_tutorial.own_data import category_ids_of

        self.category_ids = category_ids_of(self.train_set) if cfg.dataset == "files" else None

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.class_names = class_names_for(cfg, self.train_set)
        self.num_classes = len(self.class_names) + 1
        model = build_model(cfg, self.num_classes)
        layout = self.prior_config = LAYOUTS[cfg.prior_layout]
        if cfg.weights:
            state, self.prior_config, source = initial_weights(cfg.weights)
            if len(self.prior_config.feature_maps) != len(layout.feature_maps):
                raise ValueError(
                    f"weights {cfg.weights} are for {len(self.prior_config.feature_maps)} feature maps, "
                    f"prior_layout {cfg.prior_layout!r} has {len(layout.feature_maps)}"
                )
            _, kept = transfer_weights(model, state)
            if self.is_main:
                fresh = sorted({k.split(".")[0] for k in kept})
                print(f"fine-tuning from {source}: {len(kept)} tensors kept as initialized"
                      + (f" ({', '.join(fresh)}: another class count)" if kept else ""), file=sys.stderr)
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.priors = default_boxes(self.prior_config).to(self.device)  # [P, 4] cxcywh normalized (8732 for SSD300)
        self.loss_fn = MultiboxLoss(self.priors, cfg.neg_pos_ratio, cfg.alpha, cfg.iou_threshold).to(self.device)
        self.optimizer = build_optimizer(cfg, model, self.device)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.iteration = 0
        self.nonfinite_streak = torch.zeros((), dtype=torch.long, device=self.device)
        self.skipped_steps = torch.zeros((), dtype=torch.long, device=self.device)

        resumed_from = None
        if resume:
            if latest_checkpoint(self.output_dir) is None:
                raise FileNotFoundError(f"--resume: no checkpoint (last.pt or checkpoint_*.pt) in {self.output_dir}")
            # The newest checkpoint that reads: a last.pt cut short falls back to checkpoint_*.pt (with a warning).
            _, state = load_latest_checkpoint(self.output_dir, map_location=self.device)
            self.load_state(state)
            resumed_from = self.iteration
        self.resumed_from = resumed_from

        self.train_model: nn.Module = model
        if self.world_size > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

        if self.is_main:
            if overwrite:
                for path in run_files(self.output_dir):
                    path.unlink()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
            self.metrics = _JsonlWriter(self.output_dir / "metrics.jsonl", resumed_from)
            self.tb = self._tensorboard()
        self._stop_requested = False

    # -- setup helpers ---------------------------------------------------------------------
    @staticmethod
    def _init_distributed(device: str | torch.device | None) -> tuple[int, int, int]:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return 1, 0, 0
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return world_size, rank, local_rank

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.amp
        if amp == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        if amp == "none":
            return None
        if amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp=fp16 needs CUDA (use bf16 or none on CPU)")
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _cpu_transform(self) -> Any:
        from ssd_tutorial.augmentation import SSDAugmentation

        # uint8 out of the workers, normalized on the device in _to_device: a quarter of the bytes
        # through the workers' shared memory, the pinned-memory copy and the host->device copy.
        return SSDAugmentation(size=self.cfg.image_size, train=self.cfg.augment, normalize=False)

    def _tensorboard(self) -> Any:
        if not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("tensorboard is not installed: metrics go to metrics.jsonl only", file=sys.stderr)
            return None
        return SummaryWriter(str(self.output_dir / "tensorboard"))

    def data_loader(self, start: int, end: int) -> DataLoader:
        """Batches of iterations ``start .. end-1`` for this process (see :class:`ResumableBatchSampler`)."""
        cfg = self.cfg
        sampler = ResumableBatchSampler(
            len(self.train_set), cfg.batch_size, cfg.seed, start, end, self.rank, self.world_size
        )
        workers = cfg.num_workers
        return DataLoader(
            SeededItems(self.train_set, cfg.seed),
            batch_sampler=sampler,
            collate_fn=_collate_to_flat,
            num_workers=workers,
            pin_memory=cfg.pin_memory and self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; plain data only (loads with weights_only=True)."""
        return {
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "rng": rng_state(),
            "data_order": {"seed": self.cfg.seed, "next_iteration": self.iteration, "global_batch": self.cfg.batch_size},
            "nonfinite_streak": int(self.nonfinite_streak),
            "skipped_steps": int(self.skipped_steps),
            "config": self.cfg.to_dict(),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "prior_config": {k: list(v) if isinstance(v, tuple) else v
                             for k, v in dataclasses.asdict(self.prior_config).items()},
            **({"category_ids": list(self.category_ids)} if self.category_ids is not None else {}),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the data order follows from the iteration)."""
        saved_cfg = state.get("config", {})
        if saved_cfg.get("batch_size") not in (None, self.cfg.batch_size):
            raise ValueError(
                f"checkpoint was trained with batch_size {saved_cfg['batch_size']}, this run has "
                f"{self.cfg.batch_size}: resuming would change the data order"
            )
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        scheduler_state = dict(state["scheduler"])
        scheduler_state["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
        self.scheduler.load_state_dict(scheduler_state)
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.nonfinite_streak.fill_(int(state.get("nonfinite_streak", 0)))
        self.skipped_steps.fill_(int(state.get("skipped_steps", 0)))
        set_rng_state(state["rng"])

    def save(self) -> Path | None:
        """Checkpoint the current iteration (main process only)."""
        if not self.is_main:
            return None
        return save_checkpoint(self.state_dict(), self.output_dir, self.iteration, self.cfg.keep_checkpoints)

    # -- one step --------------------------------------------------------------------------
    def train_step(self, images: Tensor, gt_boxes: list[Tensor], gt_labels: list[Tensor]) -> dict[str, Tensor]:
        """One SGD step on a batch; returns detached 0-dim tensors (no host synchronisation on CUDA).

        ``images``: float ``[B, 3, 300, 300]`` normalized; ``gt_boxes``: B tensors ``[G_i, 4]``
        normalized xyxy; ``gt_labels``: B long tensors ``[G_i]`` (1-based).
        A non-finite loss skips the update (weights and momentum untouched).
        """
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loc, conf_logits = self.train_model(images)  # [B, 8732, 4], [B, 8732, C]
        total, loc_loss, conf_loss = compute_loss(self.loss_fn, loc, conf_logits, gt_boxes, gt_labels, self.world_size)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if cfg.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            # Departure from the paper: clipping (off in ssd300_voc0712), for from-scratch runs.
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm, foreach=True)
        nonfinite = ~torch.isfinite(total.detach())
        self._step_unless(nonfinite)
        with warnings.catch_warnings():  # a skipped step makes LambdaLR warn about the call order
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.nonfinite_streak = torch.where(nonfinite, self.nonfinite_streak + 1, torch.zeros_like(self.nonfinite_streak))
        self.skipped_steps = self.skipped_steps + nonfinite.long()
        return {"loss": total.detach(), "loc": loc_loss.detach(), "conf": conf_loss.detach()}

    def _step_unless(self, nonfinite: Tensor) -> None:
        """Optimizer step, skipped when ``nonfinite`` (0-dim bool) is true."""
        if self.scaler.is_enabled():
            # fp16: the scaler skips steps with inf/NaN gradients itself (and lowers its scale).
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.optimizer.defaults.get("fused") and self.optimizer.state:
            # The fused kernel reads `found_inf` on the device and skips the whole update
            # (weights and momentum) when it is 1: no host synchronisation.  Not on the very
            # first step: a skipped first step would leave the new momentum buffers uninitialized.
            self.optimizer.found_inf = nonfinite.float()  # type: ignore[attr-defined]
            self.optimizer.step()
            del self.optimizer.found_inf  # type: ignore[attr-defined]
        elif not bool(nonfinite):  # host check: free on CPU, one synchronisation on CUDA
            self.optimizer.step()

    def _to_device(
        self, batch: tuple[Tensor | list[Tensor], Tensor, Tensor, list[int]]
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        images, boxes, labels, counts = batch
        dev = self.device
        if isinstance(images, list):  # photos of different sizes, for gpu_ssd_augment
            if not self.gpu_augment:
                raise ValueError("images of different sizes reached the model: resize them (augment=True)")
            images = [image.to(dev, non_blocking=True) for image in images]
        else:
            images = images.to(dev, non_blocking=True)
        boxes = boxes.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        if self.gpu_augment:
            from ssd_tutorial.gpu_augmentation import gpu_ssd_augment

            generator = torch.Generator(device=dev).manual_seed(_mix(self.cfg.seed, 31, self.iteration, self.rank))
            images, box_list, label_list = gpu_ssd_augment(
                images, list(boxes.split(counts)), list(labels.split(counts)), generator, size=self.cfg.image_size
            )
        else:
            from ssd_tutorial.augmentation import normalize

            if images.dtype == torch.uint8:  # from the workers (see _cpu_transform): normalize here
                images = normalize(images)
            box_list, label_list = list(boxes.split(counts)), list(labels.split(counts))  # [G_i, 4], [G_i]
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, box_list, label_list

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        """VOC mAP@0.5 (11-point) of the current model on up to ``eval_images`` val images
        (and pycocotools' AP under ``"coco"`` when ``cfg.eval_coco``)."""
        if self.val_set is None:
            return None
        return evaluate_model(
            _unwrap(self.model), self.val_set, self.class_names, self.device,
            max_images=self.cfg.eval_images, size=self.cfg.image_size, priors=self.priors, coco=self.cfg.eval_coco,
        )

    # -- the loop --------------------------------------------------------------------------
    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def fit(
        self, stop_at: int | None = None, time_limit_s: float | None = None, save_final: bool = True
    ) -> dict[str, Any]:
        """Train from ``self.iteration`` to ``stop_at`` (default ``cfg.max_iters``); returns a summary.

        ``time_limit_s`` also stops the run once that many seconds have passed.  A checkpoint is
        written at the end unless ``save_final`` is False (and one was not just written), and
        when an error ends the loop between steps (a bad image, say), before it is re-raised.
        """
        cfg = self.cfg
        end = min(stop_at if stop_at is not None else cfg.max_iters, cfg.max_iters)
        start_iteration = self.iteration
        losses: list[dict[str, Any]] = []
        previous_handler = None
        if _in_main_thread():  # signal.signal works only there
            previous_handler = signal.signal(signal.SIGTERM, self._request_stop)
        bar = _progress(total=end, initial=start_iteration, enabled=self.progress)
        self.model.train()
        loss_sum: dict[str, Tensor] = {}
        window_start, window_images, window_iters = time.perf_counter(), 0, 0
        saved_at = start_iteration
        t0 = time.perf_counter()
        stopped_by_signal = False
        stepping = False  # True while an update is under way: the state is then not that of one iteration
        try:
            loader = self.data_loader(start_iteration, end) if end > start_iteration else []
            for batch in loader:
                images, gt_boxes, gt_labels = self._to_device(batch)
                stepping = True
                out = self.train_step(images, gt_boxes, gt_labels)
                self.iteration += 1
                stepping = False
                window_images += cfg.batch_size
                window_iters += 1
                for k, v in out.items():
                    loss_sum[k] = loss_sum[k] + v if k in loss_sum else v
                at_log = self.iteration % cfg.log_every == 0 or self.iteration == end
                if at_log:
                    record = self._log(loss_sum, window_iters, window_images, time.perf_counter() - window_start)
                    losses.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", img_s=f"{record['img_per_s']:.0f}")
                    loss_sum, window_start, window_images, window_iters = {}, time.perf_counter(), 0, 0
                    if self._stop_agreed():
                        stopped_by_signal = True
                if self._stop_requested and self.world_size == 1 and not stopped_by_signal:
                    stopped_by_signal = True  # one process: stop now (several agree at log intervals)
                    if not at_log:
                        losses.append(self._log(loss_sum, window_iters, window_images, time.perf_counter() - window_start))
                bar.update(1)
                if cfg.eval_every and self.iteration % cfg.eval_every == 0 and self.iteration != end:
                    self._evaluate_and_log()
                    window_start = time.perf_counter()
                if stopped_by_signal:
                    break
                if time_limit_s is not None and time.perf_counter() - t0 >= time_limit_s:
                    if not at_log:
                        losses.append(self._log(loss_sum, window_iters, window_images, time.perf_counter() - window_start))
                    break
                if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                    self.save()
                    saved_at = self.iteration
        except (Exception, KeyboardInterrupt) as error:
            # As on SIGTERM: keep the iterations since the last checkpoint.  Not mid-update (the
            # weights may be half stepped), nor when training diverged (FloatingPointError: the
            # advice is to go back to an earlier checkpoint, which must stay the newest).
            if not stepping and not isinstance(error, FloatingPointError) and saved_at != self.iteration:
                self._save_after_error(error)
            raise
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        elapsed = time.perf_counter() - t0
        if saved_at != self.iteration and (save_final or stopped_by_signal):
            self.save()
        if stopped_by_signal and self.is_main:
            print(f"SIGTERM: checkpoint written at iteration {self.iteration}; resume with --resume", file=sys.stderr)
        final_eval = None
        if not stopped_by_signal and cfg.eval_every and self.iteration == end:
            final_eval = self._evaluate_and_log()
        if self.is_main and self.tb is not None:
            self.tb.flush()
        trained = self.iteration - start_iteration
        return {
            "config": cfg.name,
            "iterations": self.iteration,
            "trained_iterations": trained,
            "seconds": elapsed,
            "img_per_s": trained * cfg.batch_size / elapsed if elapsed > 0 else 0.0,
            "losses": losses,
            "final_loss": losses[-1]["loss"] if losses else None,
            "map50": final_eval["map"] if final_eval else None,
            "skipped_steps": int(self.skipped_steps),
            "stopped_by_signal": stopped_by_signal,
            "output_dir": str(self.output_dir),
        }

    def _save_after_error(self, error: BaseException) -> None:
        """Checkpoint the last complete iteration; a failure here must not hide ``error``."""
        try:
            self.save()
        except Exception as save_error:
            print(f"could not write a checkpoint after the error: {save_error}", file=sys.stderr)
            return
        if self.is_main:
            print(f"{type(error).__name__} in iteration {self.iteration + 1}: checkpoint written at iteration "
                  f"{self.iteration}; fix the cause and resume with --resume", file=sys.stderr)

    def _stop_agreed(self) -> bool:
        """True when any process got SIGTERM (all processes agree, at log intervals)."""
        flag = torch.tensor(float(self._stop_requested), device=self.device)
        if self.world_size > 1:
            dist.all_reduce(flag)
        return bool(flag > 0)

    def _log(self, loss_sum: dict[str, Tensor], n: int, images: int, seconds: float) -> dict[str, Any]:
        """Average the window's ``n`` losses (the one host synchronisation per log interval), write them."""
        stacked = torch.stack([loss_sum["loss"], loss_sum["loc"], loss_sum["conf"]]) / n
        if self.world_size > 1:
            dist.all_reduce(stacked)
            stacked /= self.world_size
        loss, loc, conf = stacked.tolist()
        streak = int(self.nonfinite_streak)
        if streak >= self.cfg.max_nonfinite:
            raise FloatingPointError(
                f"{streak} non-finite losses in a row (last at iteration {self.iteration}); the steps "
                f"were skipped but training is diverging: lower lr (now {self.cfg.lr}), raise warmup_iters "
                f"or set grad_clip_norm, then resume from the last checkpoint"
            )
        record = {
            "iteration": self.iteration,
            "loss": loss,
            "loc": loc,
            "conf": conf,
            "lr": self.optimizer.param_groups[0]["lr"],
            "img_per_s": images / seconds if seconds > 0 else 0.0,
            "skipped_steps": int(self.skipped_steps),
        }
        if self.is_main:
            self.metrics.write(record)
            if self.tb is not None:
                for key in ("loss", "loc", "conf", "lr", "img_per_s"):
                    self.tb.add_scalar(f"train/{key}", record[key], self.iteration)
        return record

    def _evaluate_and_log(self) -> dict[str, Any] | None:
        result = self.evaluate() if self.is_main else None
        if self.is_main and result is not None:
            record = {"iteration": self.iteration, "map": result["map"], "ap": result["ap"]}
            if "coco" in result:  # {"map": AP@[.5:.95], "map50", "map75"}
                record["coco"] = result["coco"]
            self.metrics.write(record)
            if self.tb is not None:
                self.tb.add_scalar("val/map50", result["map"], self.iteration)
                if "coco" in result:
                    self.tb.add_scalar("val/coco_ap", result["coco"]["map"], self.iteration)
        if self.world_size > 1:
            dist.barrier()
        self.model.train()
        return result

    def close(self) -> None:
        if self.is_main and self.tb is not None:
            self.tb.close()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True)


def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    class_names: Sequence[str],
    device: torch.device | str,
    max_images: int | None = None,
    size: int = 300,
    batch_size: int = 32,
    use_07_metric: bool = True,
    priors: Tensor | None = None,
    coco: bool = False,
) -> dict[str, Any]:
    """VOC mAP@0.5 of ``model`` on ``dataset``: ``{"map": float, "ap": {class: float}}``, and with
    ``coco`` also ``"coco": {"map": AP@[.5:.95], "map50", "map75"}`` from pycocotools on the same
    detections (:func:`ssd_tutorial.evaluation.evaluate_coco`).

    11-point interpolated AP (VOC2007 devkit) when ``use_07_metric``, else all-point (VOC2010+).
    """
    from ssd_tutorial.evaluate import collect_detections  # only needed when a run evaluates
    from ssd_tutorial.evaluation import evaluate_coco, evaluate_voc

    detections, ground_truths = collect_detections(model, dataset, batch_size, max_images, device, size=size,
                                                   priors=priors)
    result = evaluate_voc(detections, ground_truths, list(class_names), iou_threshold=0.5, use_07_metric=use_07_metric)
    if coco:
        result["coco"] = evaluate_coco(detections, ground_truths, list(class_names))
    return result


def train(
    cfg: TrainConfig,
    output_dir: str | Path,
    max_iters: int | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train with ``cfg``, writing checkpoints and metrics to ``output_dir``; returns a summary.

    ``max_iters`` stops early at that iteration (the schedule still follows ``cfg.max_iters``),
    which is how a run is split into parts: ``train(cfg, d, max_iters=k)`` then
    ``train(cfg, d, resume=True)`` equals one ``train(cfg, d)``.  A folder that already holds
    a run is refused unless ``resume`` or ``overwrite`` (delete that run's files) is given.
    """
    trainer = Trainer(cfg, output_dir, resume=resume, device=device, progress=progress, overwrite=overwrite)
    try:
        return trainer.fit(stop_at=max_iters)
    finally:
        trainer.close()


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    from ssd_tutorial.cli import add_debug_flag, int_at_least

    parser = argparse.ArgumentParser(
        prog="python -m ssd_tutorial.train",
        description="Train SSD. Any config field can be overridden: --set field=value or --field value.",
    )
    parser.add_argument("--config", default="shapes_cpu", help=f"preset name: {', '.join(sorted(PRESETS))}")
    parser.add_argument("--max-iters", type=int_at_least(1), default=None,
                        help="stop at this iteration (schedule unchanged)")
    parser.add_argument("--output-dir", default=None, help="checkpoints and metrics (default runs/<config>)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from last.pt in the output dir")
    again.add_argument("--overwrite", action="store_true",
                       help="the output dir holds a run: delete its checkpoints and metrics, start afresh")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="your own data: a VOC-layout folder or a COCO-format .json (see --images, "
                             "--val-data, --val-fraction); class names come from it")
    parser.add_argument("--weights", default=None,
                        help="start from: imagenet (VGG16 backbone), torchvision-coco, ssd-pytorch-voc, "
                             "or a checkpoint path; heads for another class count are re-initialized")
    parser.add_argument("--skip-bad", action="store_true",
                        help="train without the files the up-front data check finds bad")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ssd_tutorial.cli import USER_ERRORS, run_main

    args, overrides = _parse_args(argv)
    # KeyError: an unknown preset or field; FloatingPointError: a diverging run (its message says what to do).
    return run_main(lambda: _main(args, overrides), args.debug, USER_ERRORS + (KeyError, FloatingPointError))


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """--data, --weights and --skip-bad as the config overrides they stand for."""
    extra = []
    if args.data is not None:
        extra += ["--dataset", "files", "--data", args.data]
    if args.weights == "imagenet":
        extra += ["--backbone_weights", "imagenet"]
    elif args.weights is not None:
        extra += ["--weights", args.weights]
    if args.skip_bad:
        extra += ["--skip_bad", "true"]
    return extra


def _main(args: argparse.Namespace, overrides: list[str]) -> int:
    overrides = _flag_overrides(args) + overrides
    cfg = apply_overrides(get_config(args.config), overrides)
    output_dir = Path(args.output_dir or f"runs/{cfg.name}")
    saved = output_dir / "config.json"
    if args.resume and latest_checkpoint(output_dir) is not None and saved.is_file():
        # The config the run started with, plus this command's overrides (not the preset's defaults).
        cfg = apply_overrides(config_from_dict(json.loads(saved.read_text())), overrides)
    summary = train(cfg, output_dir, max_iters=args.max_iters, resume=args.resume, device=args.device,
                    progress=not args.no_progress, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        short = {k: v for k, v in summary.items() if k != "losses"}
        print(json.dumps(short))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
