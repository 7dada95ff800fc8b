"""Default boxes (priors): the fixed set of 8732 boxes every SSD300 prediction is
relative to.

Each source feature map k of size f_k x f_k tiles the image with cells; every cell holds
a few boxes centred on it, one per (scale, aspect ratio) pair:

* a square box of side s_k,
* a square box of side s'_k = sqrt(s_k * s_{k+1})   (paper p.6: "an additional default
  box"),
* for each ratio a in the map's list: a box w = s_k sqrt(a), h = s_k / sqrt(a) and its
  transpose (ratio 1/a).

Output order (the model's heads must produce the same order): map by map, then cell by
cell row-major (y, then x), then box by box in the order above.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssd_tutorial.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

__all__ = [
    "DefaultBoxConfig",
    "SSD300_VOC",
    "TORCHVISION_COCO",
    "SSD_PYTORCH_VOC",
    "SSD512_VOC",
    "SSD300_COCO",
    "LAYOUTS",
    "CLIP_FORMS",
    "PAPER",
    "paper_scales",
    "boxes_per_cell",
    "boxes_per_map",
    "default_boxes",
]


CLIP_FORMS = ("xyxy", "cxcywh", "wh")


@dataclass(frozen=True)
class DefaultBoxConfig:
    """Where the default boxes go.  Sizes are in pixels of the ``image_size`` x
    ``image_size`` input.

    * ``feature_maps`` -- side f_k of each source map.
    * ``steps`` -- pixel distance between neighbouring cell centres on each map.  The
      cell (i, j) of map k is centred at ((j + 0.5) * step_k, (i + 0.5) * step_k).
    * ``min_sizes`` / ``max_sizes`` -- s_k and s_{k+1} in pixels; the extra square box
      has side sqrt(min * max).
    * ``aspect_ratios`` -- the ratios a > 1 used on each map; each brings a and 1/a.
    * ``clip`` -- clip the boxes to the image, in the form ``clip_form`` says:
    * ``clip_form`` -- how ``clip`` clips.  ``"xyxy"`` (default): each box's corners to
      [0, 1], so a box that reaches past the image shrinks and its centre moves inwards.
      ``"cxcywh"``: cx, cy, w and h each clamped to [0, 1], as ssd.pytorch's
      ``PriorBox`` does (``output.clamp_(max=1, min=0)`` on the cxcywh boxes): a box
      keeps its centre unless that lies past the image, is at most as wide as the image,
      and may still stick out of it.
      ``"wh"``: only w and h clamped to [0, 1], as torchvision's ``DefaultBoxGenerator``
      does (``clip=True``: ``_wh_pair.clamp(min=0, max=1)``); centres past the image
      stay there.
    """

    image_size: int
    feature_maps: tuple[int, ...]
    steps: tuple[float, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    clip: bool = False
    clip_form: str = "xyxy"

    def __post_init__(self) -> None:
        if not self.image_size > 0:
            raise ValueError(
                f"DefaultBoxConfig.image_size must be positive, got {self.image_size}"
            )
        if self.clip_form not in CLIP_FORMS:
            raise ValueError(
                f"DefaultBoxConfig.clip_form must be one of {CLIP_FORMS}, got "
                f"{self.clip_form!r}"
            )
        n = len(self.feature_maps)
        for name in ("steps", "min_sizes", "max_sizes", "aspect_ratios"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"DefaultBoxConfig.{name} has {len(getattr(self, name))} entries, "
                    f"but there are {n} feature maps"
                )
        for k, (f, step) in enumerate(zip(self.feature_maps, self.steps)):
            if int(f) != f or f < 1:
                raise ValueError(
                    f"map {k}: feature map size must be a positive integer, got {f}"
                )
            if not step > 0:
                raise ValueError(f"map {k}: step must be positive, got {step}")
        for k, (lo, hi) in enumerate(zip(self.min_sizes, self.max_sizes)):
            if not 0 < lo <= hi:
                raise ValueError(
                    f"map {k}: need 0 < min_size <= max_size, got {lo}, {hi}"
                )
        for k, ratios in enumerate(self.aspect_ratios):
            if any(a <= 0 for a in ratios):
                raise ValueError(
                    f"map {k}: aspect ratios must be positive, got {ratios}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint or a JSON file: numbers, a string, a bool, and
        each tuple field as a list (``aspect_ratios``: a list of tuples), the form
        training checkpoints have always stored."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> DefaultBoxConfig:
        """The inverse of :meth:`to_dict` (lists back to tuples); unknown keys raise
        ValueError."""
        unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"DefaultBoxConfig: unknown fields {unknown}")
        # noqa: E731
        as_tuple = lambda v: (
            tuple(as_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v
        )
        return cls(**{k: as_tuple(v) for k, v in saved.items()})


# The layout of the released Caffe SSD300 (and of most PyTorch ports).
# Caffe SSD: conv4_3 gets scale 0.1 (30 px) and the others follow the paper's formula
# with s_min = 0.2, s_max = 0.9 rounded to whole pixels in steps of 17% of 300 px; steps
# are the rounded strides of the maps (300/38 ~ 8) rather than 300 / f_k.
SSD300_VOC = DefaultBoxConfig(
    image_size=300,
    feature_maps=(38, 19, 10, 5, 3, 1),
    steps=(8, 16, 32, 64, 100, 300),
    min_sizes=(30, 60, 111, 162, 213, 264),
    max_sizes=(60, 111, 162, 213, 264, 315),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    clip=False,
)


# torchvision's ssd300_vgg16 (the SSD300_VGG16_Weights.COCO_V1 weights):
#   DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
#                       scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16,
# 32, 64, 100, 300])
# (torchvision/models/detection/ssd.py, ssd300_vgg16), clip=True by default, applied to
# the (w, h) pairs only (anchor_utils.py, _grid_default_boxes): centres past the image
# (cx = 9.5 x 32 / 300 = 1.013 on the 10x10 map) stay where they are.  Scales x 300 px
# are whole pixels: the layout of Caffe SSD's COCO model (21 px on conv4_3, then s_min =
# 0.15 .. s_max = 0.87), which is also ssd.pytorch's ``coco`` config (data/config.py:
# min_sizes 21, 45, ..., max 45, ..., 315).
# Same per-cell box order as ours: s, sqrt(s s'), then (s sqrt(a), s / sqrt(a)) and its
# transpose.
TORCHVISION_COCO = DefaultBoxConfig(
    image_size=300,
    feature_maps=(38, 19, 10, 5, 3, 1),
    steps=(8, 16, 32, 64, 100, 300),
    min_sizes=(21, 45, 99, 153, 207, 261),
    max_sizes=(45, 99, 153, 207, 261, 315),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    clip=True,
    clip_form="wh",
)

# ssd.pytorch (amdegroot) for VOC: SSD300_VOC's sizes, but data/config.py's ``voc`` has
# 'clip': True and layers/functions/prior_box.py clamps the cxcywh output to [0, 1].
# 134 of the 8732 boxes change: those centred past the image (the last row and column of
# the 10x10 map, 9.5 x 32 / 300 = 1.013 -> 1) and those wider or taller than it (the 2:1
# and 1:2 boxes of the 3x3 map, 213 px x sqrt 2 = 301 px -> 300, and of the 1x1 map, 264
# px x sqrt 2 = 373 px -> 300).
SSD_PYTORCH_VOC = DefaultBoxConfig(
    **{**SSD300_VOC.__dict__, "clip": True, "clip_form": "cxcywh"}
)


def _caffe_sizes(
    image_size: int,
    num_maps: int,
    min_ratio: int,
    max_ratio: int,
    first: tuple[int, int],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(min_sizes, max_sizes) in pixels as Caffe SSD's training scripts compute them.

    Percentages of ``image_size``: the first map (conv4_3) gets ``first = (min %, max
    %)``; the other ``num_maps - 1`` maps get ``min_ratio, min_ratio + step, ...`` with
    ``step = floor((max_ratio - min_ratio) / (num_maps - 2))`` and max size = the next
    one up.
    """
    step = (max_ratio - min_ratio) // (num_maps - 2)
    ratios = range(min_ratio, max_ratio + 1, step)
    mins = [image_size * first[0] / 100] + [image_size * r / 100 for r in ratios]
    maxs = [image_size * first[1] / 100] + [
        image_size * (r + step) / 100 for r in ratios
    ]
    return tuple(mins), tuple(maxs)


# The released Caffe SSD512 (SSD512* in the paper's Table 6, 79.8% mAP on VOC2007 test;
# 24,564 boxes in the caffe README).  Paper, footnote in Sec. 3.4: "For SSD512 model, we
# add extra conv12_2 for prediction, set s_min to 0.15, and 0.07 on conv4_3".  Its
# training script, ssd_pascal_512.py, ships in the released model archive
# (models_VGGNet_VOC0712_SSD_512x512), not in weiliu89/caffe's ssd branch; its numbers
# as ported by lufficc/SSD (configs/vgg_ssd512_voc0712.yaml): min_dim = 512, min_ratio =
# 15, max_ratio = 90 over 7 maps (step 15), conv4_3 at 7% / 15% of 512 px, steps 8 ...
# 512, ratios (2,3) on five maps.  Sizes: 35.84, 76.8, 153.6, 230.4, 307.2, 384, 460.8
# px (max 76.8 ... 537.6; lufficc writes 537.65 for the last, the formula gives 537.6).
_SSD512_MIN, _SSD512_MAX = _caffe_sizes(512, 7, 15, 90, first=(7, 15))
SSD512_VOC = DefaultBoxConfig(
    image_size=512,
    feature_maps=(64, 32, 16, 8, 4, 2, 1),
    steps=(8, 16, 32, 64, 128, 256, 512),
    min_sizes=_SSD512_MIN,
    max_sizes=_SSD512_MAX,
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    clip=False,
)

# Caffe SSD300 for COCO (paper Sec. 3.4: "smaller default boxes" -- s_min = 0.15 instead
# of 0.2 and 0.07 on conv4_3, "21 pixels for a 300 x 300 image"); the released
# examples/ssd/ssd_coco.py (weiliu89/caffe, ssd branch): min_ratio = 15, max_ratio = 90,
# conv4_3 at 7% / 15%, clip False.  The same sizes as TORCHVISION_COCO, without its
# clip.
_COCO300_MIN, _COCO300_MAX = _caffe_sizes(300, 6, 15, 90, first=(7, 15))
SSD300_COCO = DefaultBoxConfig(
    **{**SSD300_VOC.__dict__, "min_sizes": _COCO300_MIN, "max_sizes": _COCO300_MAX}
)

# Layouts by name (TrainConfig.prior_layout): the model's architecture follows the
# number of maps (6: SSD300, 7: SSD512; see ssd_tutorial.model.build_ssd).
LAYOUTS: dict[str, DefaultBoxConfig] = {
    "ssd300_voc": SSD300_VOC,
    "ssd300_coco": SSD300_COCO,
    "ssd512_voc": SSD512_VOC,
}


def paper_scales(m: int = 6, s_min: float = 0.2, s_max: float = 0.9) -> list[float]:
    """The paper's scales (p.6, eq. 4): s_k = s_min + (s_max - s_min) / (m - 1) * (k -
    1), k = 1..m."""
    if m < 2:
        raise ValueError(f"paper_scales needs at least 2 maps, got m={m}")
    return [s_min + (s_max - s_min) * (k - 1) / (m - 1) for k in range(1, m + 1)]


def _paper_config() -> DefaultBoxConfig:
    maps = (38, 19, 10, 5, 3, 1)
    s = paper_scales(len(maps))
    # The paper leaves s_{m+1} (needed for the last extra box) unsaid; we extend the
    # same arithmetic one step: 0.9 + 0.14 = 1.04.
    s_next = s[1:] + [s[-1] + (s[1] - s[0])]
    return DefaultBoxConfig(
        image_size=300,
        feature_maps=maps,
        # paper p.6: centres at ((i + 0.5) / |f_k|, ...)
        steps=tuple(300 / f for f in maps),
        min_sizes=tuple(300 * v for v in s),
        max_sizes=tuple(300 * v for v in s_next),
        # paper p.7: conv4_3, conv10_2 and conv11_2 use only 4 boxes (ratios 1, 2, 1/2)
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
        clip=False,
    )


# The paper's formula taken literally: s_k from 0.2 to 0.9 on all six maps.
PAPER = _paper_config()


def boxes_per_cell(cfg: DefaultBoxConfig = SSD300_VOC) -> tuple[int, ...]:
    """Boxes in each cell of each map: 2 squares + 2 per aspect ratio -> (4, 6, 6, 6, 4,
    4)."""
    return tuple(2 + 2 * len(r) for r in cfg.aspect_ratios)


def boxes_per_map(cfg: DefaultBoxConfig = SSD300_VOC) -> tuple[int, ...]:
    """Boxes on each map, f_k^2 x boxes per cell -> (5776, 2166, 600, 150, 36, 4) for
    SSD300."""
    return tuple(f * f * a for f, a in zip(cfg.feature_maps, boxes_per_cell(cfg)))


def _cell_shapes(cfg: DefaultBoxConfig, k: int) -> Tensor:
    """Normalized (w, h) of the boxes in one cell of map k, in output order -> [A_k,
    2]."""
    s = cfg.min_sizes[k] / cfg.image_size
    s_extra = math.sqrt(cfg.min_sizes[k] * cfg.max_sizes[k]) / cfg.image_size
    shapes = [(s, s), (s_extra, s_extra)]
    for a in cfg.aspect_ratios[k]:
        r = math.sqrt(a)
        shapes += [(s * r, s / r), (s / r, s * r)]
    return torch.tensor(shapes, dtype=torch.float64)


def default_boxes(cfg: DefaultBoxConfig = SSD300_VOC) -> Tensor:
    """All default boxes of ``cfg`` -> ``[P, 4]`` cxcywh, normalized to [0, 1] (P = 8732
    for SSD300).

    Vectorized per map: a grid of cell centres [f*f, 1, 2] is broadcast against the
    cell's box shapes [1, A, 2].  Computed in float64 and returned as float32.
    """
    per_map = []
    for k, f in enumerate(cfg.feature_maps):
        idx = torch.arange(f, dtype=torch.float64)
        centres_1d = (idx + 0.5) * cfg.steps[k] / cfg.image_size  # [f]
        # row-major: y, then x
        cy, cx = torch.meshgrid(centres_1d, centres_1d, indexing="ij")
        centres = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)  # [f*f, 1, 2]
        shapes = _cell_shapes(cfg, k)[None]  # [1, A, 2]
        # [f*f, A, 4]
        boxes = torch.cat(torch.broadcast_tensors(centres, shapes), dim=-1)
        per_map.append(boxes.reshape(-1, 4))  # [f*f*A, 4]
    priors = torch.cat(per_map)  # [P, 4] cxcywh
    if cfg.clip and cfg.clip_form == "cxcywh":
        priors = priors.clamp(0, 1)  # ssd.pytorch: each of cx, cy, w, h
    elif cfg.clip and cfg.clip_form == "wh":
        # torchvision: w, h only
        priors = torch.cat((priors[:, :2], priors[:, 2:].clamp(0, 1)), dim=1)
    elif cfg.clip:
        priors = xyxy_to_cxcywh(cxcywh_to_xyxy(priors).clamp(0, 1))
    return priors.float()
