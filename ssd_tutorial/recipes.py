"""Recipes: what a training config stands for -- its datasets, its model, its starting
weights.

:func:`build_datasets` reads the config's dataset (shapes, VOC folders or your own data,
checked up front), :func:`build_model` the network for its default-box layout with its
init scheme, and :func:`initial_model` that network with the weights to fine-tune from
copied in.  Each is a function of the config alone, so a notebook can build what a run
trains without running it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ssd_tutorial.augmentation import SSDAugmentation
from ssd_tutorial.config import TrainConfig
from ssd_tutorial.data import (
    SHAPES_CLASSES,
    VOC_CLASSES,
    ShapesDataset,
    VOCDataset,
    base_dataset,
)
from ssd_tutorial.default_boxes import LAYOUTS, DefaultBoxConfig
from ssd_tutorial.detector import load_detector
from ssd_tutorial.model import SSD300, build_ssd
from ssd_tutorial.own_data import (
    DatasetError,
    check_dataset,
    class_names_of,
    open_data,
    split_train_val,
    transfer_weights,
)
from ssd_tutorial.pretrained import PUBLISHED

__all__ = [
    "build_datasets",
    "build_model",
    "class_names_for",
    "init_caffe_xavier",
    "init_kaiming",
    "initial_model",
    "initial_weights",
    "own_datasets",
    "worker_transform",
]


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------
def class_names_for(
    cfg: TrainConfig, train_set: Dataset | None = None
) -> tuple[str, ...]:
    """Class names (without background) of the config's dataset; for dataset "files",
    those ``train_set`` found in its data (see
    :func:`ssd_tutorial.own_data.open_data`)."""
    if cfg.dataset == "shapes":
        return tuple(SHAPES_CLASSES)
    if cfg.dataset == "files":
        if train_set is None:
            raise ValueError(
                "dataset 'files' takes its class names from the data: pass train_set"
            )
        return class_names_of(train_set)
    return tuple(cfg.class_names) if cfg.class_names else tuple(VOC_CLASSES)


def _resolve(path: str) -> Path:
    return Path(path).expanduser()


def build_datasets(
    cfg: TrainConfig, train_transform: Any = None
) -> tuple[Dataset, Dataset | None]:
    """(train dataset with ``train_transform``, val dataset without transform or None).

    Items: ``(image uint8 [3, H, W] or transformed, target)`` with pixel xyxy boxes (see
    ``ssd_tutorial.data``).
    """
    if cfg.dataset == "files":
        return own_datasets(cfg, train_transform)
    if cfg.dataset == "shapes":
        train_set = ShapesDataset(
            cfg.shapes_train_images,
            cfg.image_size,
            cfg.shapes_train_seed,
            train_transform,
        )
        val_set = (
            ShapesDataset(cfg.shapes_val_images, cfg.image_size, cfg.shapes_val_seed)
            if cfg.shapes_val_images
            else None
        )
        return train_set, val_set
    if not cfg.voc_roots:
        raise ValueError(
            "dataset 'voc' needs voc_roots (folders in VOC layout), e.g. --set "
            "voc_roots=data/VOCdevkit/VOC2007"
        )
    names = class_names_for(cfg)
    parts = []
    for root in cfg.voc_roots:
        if not _resolve(root).is_dir():
            raise FileNotFoundError(
                f"VOC folder {root} not found: download it with `python "
                "data_scripts/download_voc.py` or set voc_roots"
            )
        parts.append(
            VOCDataset(
                _resolve(root),
                split=cfg.train_split,
                transform=train_transform,
                class_names=names,
            )
        )
    train_set = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    val_set = None
    if cfg.val_root and _resolve(cfg.val_root).is_dir():
        val_set = VOCDataset(
            _resolve(cfg.val_root), split=cfg.val_split, class_names=names
        )
    # training goes on, but a mistyped folder must not cost the run its mAP silently
    elif cfg.val_root:
        warnings.warn(
            f"val_root {cfg.val_root} not found: no periodic or final evaluation",
            stacklevel=2,
        )
    return train_set, val_set


def _set_transform(dataset: Dataset, transform: Any) -> None:
    """Give the dataset under any Subset wrappers (the one that reads the files)
    ``transform``."""
    base_dataset(dataset).transform = transform


def own_datasets(
    cfg: TrainConfig, train_transform: Any = None, log: Any = print
) -> tuple[Dataset, Dataset]:
    """(train, val) of dataset "files": ``cfg.data`` (a VOC-layout folder or a COCO
    JSON), its validation set ``cfg.val_data``, or for a VOC folder its
    ImageSets/Main/train.txt and val.txt, or else a seeded ``cfg.val_fraction`` of it.
    Both are checked up front (:func:`ssd_tutorial.own_data.check_dataset`): every bad
    file is listed in one error, or with ``cfg.skip_bad`` left out and counted.  Val
    classes must be the train set's.
    """
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
    elif (
        data.is_dir()
        and (split_files / "train.txt").is_file()
        and (split_files / "val.txt").is_file()
    ):
        train_set = open_data(data, None, names, split="train")
        val_set = open_data(data, None, names or class_names_of(train_set), split="val")
        how = "ImageSets/Main/train.txt and val.txt"
    else:
        train_set, val_set = split_train_val(
            open_data(data, images, names), cfg.val_fraction, cfg.seed
        )
        how = (
            f"a seeded split holding out {len(val_set)} images (val_fraction "
            f"{cfg.val_fraction}, seed {cfg.seed})"
        )
    # a VOC val folder's names are discovered anew
    if class_names_of(val_set) != class_names_of(train_set):
        raise ValueError(
            f"{cfg.val_data}: classes {list(class_names_of(val_set))} differ from the "
            f"training data's {list(class_names_of(train_set))}"
        )
    # Both sets checked before either error is raised: one report lists every bad file.
    problems, total, checked = [], 0, []
    for dataset, name in (
        (train_set, f"training data {cfg.data}"),
        (val_set, f"validation data ({how})"),
    ):
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


def worker_transform(cfg: TrainConfig) -> SSDAugmentation | None:
    """The transform the DataLoader workers apply to training items:
    :class:`SSDAugmentation` (``uint8 [3, S, S]`` out, normalized on the device), or
    None with ``augment_on_gpu`` (batched augmentation on the device instead:
    :mod:`ssd_tutorial.gpu_augmentation`)."""
    if cfg.augment_on_gpu and cfg.augment:
        return None
    # uint8 out of the workers: a quarter of the bytes through the workers' shared
    # memory, the pinned-memory copy and the host->device copy.
    return SSDAugmentation(size=cfg.image_size, train=cfg.augment, normalize=False)


# --------------------------------------------------------------------------------------
# Models and their initial weights
# --------------------------------------------------------------------------------------
def _loaded_prefixes(cfg: TrainConfig) -> tuple[str, ...]:
    """Name prefixes of the parameters ``cfg.backbone_weights`` loads (none without
    it)."""
    return ("backbone.", "fc.") if cfg.backbone_weights else ()


def init_caffe_xavier(model: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """Caffe's xavier filler on every conv (heads included) whose name does not start
    with one of ``skip``: weight ~ U(-a, a) with a = sqrt(3 / fan_in) (variance 1 /
    fan_in), zero bias.

    filler.hpp, variance_norm FAN_IN by default.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and not name.startswith(skip):
            fan_in = module.weight[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)


def init_kaiming(model: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """He-normal init (fan-in, ReLU gain, zero bias) of the convs followed by a ReLU --
    all but the loc/conf heads, which keep the model's Xavier init -- whose name does
    not start with one of ``skip``.

    Departure from Caffe SSD (Xavier everywhere): He init keeps the activations' scale
    through the VGG stack when it is trained from scratch without batch normalization.
    """
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or name.startswith(
            ("loc_heads", "conf_heads")
        ):
            continue
        if name.startswith(skip):
            continue
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(module.bias)


def build_model(
    cfg: TrainConfig, num_classes: int, prior_config: DefaultBoxConfig | None = None
) -> SSD300:
    """SSD300 (or its tiny preset), or SSD512 for a layout of 7 maps, with
    ``num_classes`` outputs including background: ``forward(x [B, 3, S, S])`` -> ``(loc
    [B, P, 4], conf_logits [B, P, num_classes])``.

    ``prior_config``: the default boxes the model owns (None:
    ``LAYOUTS[cfg.prior_layout]``).  ``cfg.init == "caffe_xavier"`` re-initializes every
    conv not loaded from ``backbone_weights`` with Caffe's xavier filler
    (:func:`init_caffe_xavier`); ``cfg.init == "kaiming"`` the convs followed by a ReLU
    and not loaded (:func:`init_kaiming`); the loc/conf heads then keep the model's
    Xavier init.
    """
    layout = prior_config if prior_config is not None else LAYOUTS[cfg.prior_layout]
    model = build_ssd(num_classes, layout, cfg.backbone_weights, cfg.width_mult)
    if cfg.init == "caffe_xavier":
        init_caffe_xavier(model, skip=_loaded_prefixes(cfg))
    if cfg.init == "kaiming":
        init_kaiming(model, skip=_loaded_prefixes(cfg))
    return model


def initial_weights(source: str) -> tuple[dict[str, Tensor], DefaultBoxConfig, str]:
    """The detector to fine-tune from: ``(state dict, DefaultBoxConfig its boxes follow,
    source)``.

    ``source``: anything :func:`ssd_tutorial.detector.load_detector` loads -- a
    checkpoint of this package, a published detector's name, or published weights on
    disk.  No random numbers are drawn (the model is built without an init), so the
    run's own init is the same.
    """
    detector = load_detector(
        _resolve(source) if source not in PUBLISHED else source, progress=False
    )
    return detector.model.state_dict(), detector.prior_config, detector.source


def initial_model(
    cfg: TrainConfig, num_classes: int, log: Callable[[str], Any] | None = None
) -> SSD300:
    """The model a run starts from: :func:`build_model`, and with ``cfg.weights`` the
    tensors of those weights (:func:`initial_weights`) whose name and shape match copied
    in; the rest (the conf heads of another class count, say) stay as initialized, and
    ``log`` says which.

    The model then owns the weights' default boxes (``model.prior_config``, which must
    have as many maps as ``cfg.prior_layout``): their box regressors were trained for
    those.
    """
    if not cfg.weights:
        return build_model(cfg, num_classes)
    layout = LAYOUTS[cfg.prior_layout]
    # no random draws: the init below is a run's
    state, prior_config, source = initial_weights(cfg.weights)
    if len(prior_config.feature_maps) != len(layout.feature_maps):
        raise ValueError(
            f"weights {cfg.weights} are for {len(prior_config.feature_maps)} feature "
            f"maps, prior_layout {cfg.prior_layout!r} has {len(layout.feature_maps)}"
        )
    model = build_model(cfg, num_classes, prior_config)
    _, kept = transfer_weights(model, state)
    if log is not None:
        fresh = sorted({k.split(".")[0] for k in kept})
        log(
            f"fine-tuning from {source}: {len(kept)} tensors kept as initialized"
            + (f" ({', '.join(fresh)}: another class count)" if kept else "")
        )
    return model
