"""Augmentation: the paper's "data augmentation" (p.6), one function per piece.

> "each training image is randomly sampled by one of the following options: use the
entire > original input image; sample a patch so that the minimum jaccard overlap with
the objects is > 0.1, 0.3, 0.5, 0.7, or 0.9; randomly sample a patch. The size of each
sampled patch is > [0.1, 1] of the original image size, and the aspect ratio is between
1/2 and 2. [...] each > sampled patch is resized to fixed size and is horizontally
flipped with probability of 0.5, in > addition to applying some photo-metric
distortions" -- Liu et al. 2016, p.6

plus the zoom-out ("expansion", p.9) that creates small objects.  The training pipeline,
as in the released Caffe code, is::

    photometric distortion -> zoom out (p=0.5, up to 4x, mean fill) -> random IoU crop
    -> horizontal flip (p=0.5) -> resize to size x size -> normalize (ImageNet mean/std)

Each piece is split into ``sample_*`` (draw the random parameters from a
``torch.Generator``) and ``apply_*`` (deterministic), so a chapter or a test can fix the
parameters, and so that :class:`SSDAugmentation` can run the pieces in a cheaper order
with the same result (see its docstring).  Images are ``[3, H, W]`` tensors: uint8 in,
float in [0, 255] in between, float normalized out.  Boxes are xyxy in pixels until the
end, where they become normalized xyxy.

The photometric distortion lives in :mod:`ssd_tutorial.photometric`, the resize and the
normalization in :mod:`ssd_tutorial.preprocessing`; their names are re-exported here, so
``from ssd_tutorial.augmentation import ...`` finds every piece of the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssd_tutorial.boxes import box_iou

# Re-exported: chapters, tests and scripts import these from here (their homes:
# photometric, preprocessing).
from ssd_tutorial.photometric import (
    BRIGHTNESS_DELTA,
    CHANNEL_PERMUTATIONS,
    CONTRAST_RANGE,
    HUE_DELTA,
    SATURATION_RANGE,
    PhotometricParams,
    _adjust_saturation_hue,  # noqa: F401  (tests)
    _rand,
    _uniform,
    apply_photometric,
    hsv_to_rgb,
    rgb_to_hsv,
    sample_photometric,
)
from ssd_tutorial.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_MODES,
    InputTransform,
    _mean_pixel,
    _resize_pasted,
    denormalize,
    normalize,
    resize_image,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_IOU_CHOICES",
    "BRIGHTNESS_DELTA",
    "CONTRAST_RANGE",
    "SATURATION_RANGE",
    "HUE_DELTA",
    "CHANNEL_PERMUTATIONS",
    "PhotometricParams",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "sample_photometric",
    "apply_photometric",
    "ZoomOutParams",
    "sample_zoom_out",
    "apply_zoom_out",
    "zoom_out",
    "sample_iou_crop",
    "apply_crop",
    "hflip",
    "resize_image",
    "normalize",
    "denormalize",
    "to_normalized_boxes",
    "RESIZE_MODES",
    "InputTransform",
    "SSDAugmentation",
]

# The crop options; None = keep the whole image, -inf = any patch (no overlap
# constraint).
# paper p.6: min IoU in {0.1, 0.3, 0.5, 0.7, 0.9}; ssd_pascal.py's batch_sampler has
# these seven (the last as max_jaccard_overlap 1.0).  (ssd.pytorch drops 0.5; we keep
# it.)
MIN_IOU_CHOICES: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -math.inf)


# --------------------------------------------------------------------------------------
# Zoom out ("expansion")
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZoomOutParams:
    """Canvas ``width x height`` px with the image pasted at (left, top), integer
    pixels."""

    width: int
    height: int
    left: int
    top: int


def sample_zoom_out(
    width: int,
    height: int,
    generator: torch.Generator | None = None,
    max_ratio: float = 4.0,
    p: float = 0.5,
) -> ZoomOutParams | None:
    """With probability ``p``, a canvas 1 to ``max_ratio`` times the image's side; else
    None.

    paper p.9: "we first randomly place an image on a canvas of 16x of the original
    image size filled with mean values" -- 16x the area, i.e. up to 4x the side.
    """
    if _rand(generator) >= p:
        return None
    ratio = _uniform(generator, 1.0, max_ratio)
    canvas_w, canvas_h = int(width * ratio), int(height * ratio)
    left = int(_uniform(generator, 0, canvas_w - width))
    top = int(_uniform(generator, 0, canvas_h - height))
    return ZoomOutParams(canvas_w, canvas_h, left, top)


def apply_zoom_out(
    image: Tensor, boxes: Tensor, params: ZoomOutParams | None
) -> tuple[Tensor, Tensor]:
    """Paste float ``[3, H, W]`` onto a mean-filled canvas; boxes ``[G, 4]`` xyxy px
    move with it."""
    if params is None:
        return image, boxes
    h, w = image.shape[1:]
    # [3, H', W']
    canvas = (
        _mean_pixel(image.dtype, image.device)
        .expand(3, params.height, params.width)
        .clone()
    )
    canvas[:, params.top : params.top + h, params.left : params.left + w] = image
    shift = torch.tensor(
        [params.left, params.top, params.left, params.top],
        dtype=boxes.dtype,
        device=boxes.device,
    )
    return canvas, boxes + shift


def zoom_out(
    image: Tensor,
    boxes: Tensor,
    generator: torch.Generator | None = None,
    max_ratio: float = 4.0,
    p: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Random zoom-out of float ``[3, H, W]`` with boxes ``[G, 4]`` xyxy px."""
    params = sample_zoom_out(image.shape[2], image.shape[1], generator, max_ratio, p)
    return apply_zoom_out(image, boxes, params)


# --------------------------------------------------------------------------------------
# Random IoU crop
# --------------------------------------------------------------------------------------
def _crop_candidates(
    draws: np.ndarray,
    width: int,
    height: int,
    min_scale: float,
    aspect_range: tuple[float, float],
) -> np.ndarray:
    """Caffe's ``SampleBBox`` on uniform ``draws [..., 4]`` -> integer windows ``[...,
    4]`` xyxy px.

    Scale ``s ~ U(min_scale, 1)``, aspect ratio ``ar ~ U(max(lo, s^2), min(hi,
    1/s^2))``, patch ``s * sqrt(ar)`` of the width by ``s / sqrt(ar)`` of the height
    (both <= 1 by the bounds on ar), at a uniform position; corners rounded down to
    whole pixels.
    """
    s = min_scale + (1.0 - min_scale) * draws[..., 0]
    ar_lo = np.maximum(aspect_range[0], s * s)
    ar_hi = np.minimum(aspect_range[1], 1.0 / (s * s))
    root_ar = np.sqrt(ar_lo + (ar_hi - ar_lo) * draws[..., 1])
    w = s * root_ar * width
    h = s / root_ar * height
    left = np.floor(draws[..., 2] * (width - w))
    top = np.floor(draws[..., 3] * (height - h))
    return np.stack((left, top, np.floor(left + w), np.floor(top + h)), axis=-1)


def sample_iou_crop(
    boxes: Tensor,
    width: int,
    height: int,
    generator: torch.Generator | None = None,
    min_iou: float | None | str = "random",
    max_trials: int = 50,
    min_scale: float = 0.3,
    aspect_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[tuple[int, int, int, int] | None, float | None]:
    """Draw a crop window ``(x1, y1, x2, y2)`` px for an image ``width x height`` with
    boxes ``[G, 4]`` xyxy px.

    A candidate patch is Caffe's (sampler.cpp ``SampleBBox``, ssd_pascal.py's
    ``batch_sampler``): scale ``s ~ U(0.3, 1)``, aspect ratio ``ar ~ U(max(1/2, s^2),
    min(2, 1/s^2))``, width ``s * sqrt(ar)`` and height ``s / sqrt(ar)`` of the image's.
    It passes an option when its IoU with at least one box is >= the option's minimum
    (``-inf``: any patch) and the centre of at least one box lies inside it.

    ``min_iou="random"`` is Caffe's rule (sampler.cpp ``GenerateBatchSamples``, then a
    uniform pick in annotated_data_layer.cpp): the whole image always enters a pool;
    each option of :data:`MIN_IOU_CHOICES` tries up to ``max_trials`` patches and adds
    its first success; one member of the pool is picked uniformly.  A number runs that
    one option (None if all its trials fail); None keeps the whole image.  Returns
    ``(window, option)``: window None means the whole image, ``option`` is the option
    that produced it (None for the whole image).

    Departures: paper p.6 says patch sizes [0.1, 1] of the image; the released Caffe
    code draws the scale from [0.3, 1], which we follow.  The centre rule is
    ssd.pytorch's: Caffe keeps any patch that meets the IoU, then drops the objects
    whose centre falls outside it (as :func:`apply_crop` does), which can leave an image
    with none.
    """
    if isinstance(min_iou, str):
        if min_iou != "random":
            raise ValueError(
                f"min_iou must be a number, None or 'random', got {min_iou!r}"
            )
        options = [m for m in MIN_IOU_CHOICES if m is not None]
    elif min_iou is None:
        return None, None
    else:
        options = [min_iou]
    if boxes.numel() == 0:
        # no object can satisfy a constraint: Caffe's pool holds only the whole image
        return None, (None if min_iou == "random" else min_iou)
    # Every option's trials are drawn at once and checked together ([K, T] candidates);
    # an option's first passing trial is its sample (the draws after it are never looked
    # at, so this is Caffe's loop that stops at the first success).  numpy: on a few
    # hundred x G numbers torch's per-call overhead cost more than the arithmetic.
    draws = torch.rand(
        len(options), max_trials, 4, generator=generator, dtype=torch.float64
    ).numpy()
    # [K, T, 4]
    windows = _crop_candidates(draws, width, height, min_scale, aspect_range)
    flat = windows.reshape(-1, 4)
    gt = boxes.double()  # [G, 4]
    # [K, T]
    iou = (
        box_iou(torch.from_numpy(flat), gt)
        .numpy()
        .max(axis=1)
        .reshape(windows.shape[:2])
    )
    centres = ((gt[:, :2] + gt[:, 2:]) / 2).numpy()  # [G, 2]
    cx, cy = centres[None, :, 0], centres[None, :, 1]  # [1, G]
    # [K*T, G]
    inside = (
        (cx > flat[:, 0:1])
        & (cx < flat[:, 2:3])
        & (cy > flat[:, 1:2])
        & (cy < flat[:, 3:4])
    )
    ok = inside.any(axis=1).reshape(windows.shape[:2])  # [K, T]
    ok &= (windows[..., 2] > windows[..., 0]) & (windows[..., 3] > windows[..., 1])
    ok &= iou >= np.asarray(options, dtype=np.float64)[:, None]
    found = ok.any(axis=1)  # [K]
    pool: list[tuple[tuple[int, int, int, int] | None, float | None]] = (
        [] if min_iou != "random" else [(None, None)]
    )
    for k in np.flatnonzero(found):
        # type: ignore[misc]
        pool.append(
            (tuple(int(v) for v in windows[k, int(ok[k].argmax())]), options[k])
        )
    if not pool:
        return None, min_iou  # type: ignore[return-value]
    if len(pool) == 1:
        return pool[0]
    return pool[int(torch.randint(len(pool), (), generator=generator))]


def apply_crop(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    difficult: Tensor,
    window: tuple[int, int, int, int] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Crop ``[3, H, W]`` to ``window``; keep the boxes whose centre lies inside,
    clipped to it.

    Boxes ``[G, 4]`` xyxy px come back in the window's frame, with ``labels [G]`` and
    ``difficult [G]`` filtered alike.  A kept box always has positive area: its centre
    is strictly inside, so the clipped box still contains it.
    """
    if window is None:
        return image, boxes, labels, difficult
    x1, y1, x2, y2 = window
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [G, 2]
    keep = (
        (centres[:, 0] > x1)
        & (centres[:, 0] < x2)
        & (centres[:, 1] > y1)
        & (centres[:, 1] < y2)
    )
    kept = boxes[keep]
    lo = torch.tensor([x1, y1, x1, y1], dtype=boxes.dtype, device=boxes.device)
    hi = torch.tensor([x2, y2, x2, y2], dtype=boxes.dtype, device=boxes.device)
    kept = torch.minimum(torch.maximum(kept, lo), hi) - lo
    return image[:, y1:y2, x1:x2], kept, labels[keep], difficult[keep]


# --------------------------------------------------------------------------------------
# Flip, boxes to normalized
# --------------------------------------------------------------------------------------
def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror ``[3, H, W]`` left-right; boxes ``[G, 4]`` xyxy px: ``x -> W - x``."""
    width = image.shape[2]
    flipped = torch.stack(
        (width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1
    )
    return image.flip(2), flipped


def to_normalized_boxes(boxes: Tensor, width: int, height: int) -> Tensor:
    """Pixel xyxy ``[G, 4]`` -> normalized xyxy ``[G, 4]``, clamped to [0, 1]."""
    scale = torch.tensor(
        [width, height, width, height], dtype=torch.float32, device=boxes.device
    )
    return (boxes.float() / scale).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------
class SSDAugmentation:
    """``(image uint8 [3, H, W], target) -> (float [3, size, size] normalized,
    target)``.

    ``target`` holds ``boxes`` ``[G, 4]`` xyxy px, ``labels`` ``[G]``, optionally
    ``difficult`` ``[G]`` (and anything else, passed through); the output has normalized
    xyxy boxes, never degenerate, with labels and difficult filtered alike.
    ``train=False``: resize + normalize only.  Randomness comes from ``generator`` (call
    argument) or else torch's global RNG, which DataLoader seeds differently in every
    worker.

    Cheaper order, same result: all random parameters are drawn first (in the released
    order), then the photometric distortion is applied only to the part of the original
    image that survives the crop (when the crop is mostly fill, only to the pixels the
    resize reads, and the canvas is never built: see ``_resize_pasted``), and the flip
    is done after the resize, on the small image.  Per-pixel operations commute with
    cropping, the canvas fill is never distorted (nor is it in the released order), and
    a left-right flip commutes with a bilinear resize, so the output equals the
    straightforward order photometric -> zoom out -> crop -> flip -> resize (a test
    checks it, up to 1/255 from rounding).  The distortion is not moved after the
    resize: bilinear interpolation does not commute with clamping and the HSV round
    trip.  Images stay 8-bit until the final normalization, as in Caffe SSD.

    ``normalize=False`` returns the uint8 ``[3, size, size]`` image instead, for the
    caller to normalize (:func:`normalize`): the Trainer's DataLoader workers do this,
    so a batch crosses from the workers and to the GPU in a quarter of the bytes, and
    the GPU normalizes it.
    """

    def __init__(
        self,
        size: int = 300,
        train: bool = True,
        channel_swap_prob: float = 0.0,
        *,
        normalize: bool = True,
    ) -> None:
        self.size = size
        self.train = train
        self.channel_swap_prob = channel_swap_prob
        self.normalize = normalize

    def __repr__(self) -> str:
        return (
            f"SSDAugmentation(size={self.size}, train={self.train}, "
            f"channel_swap_prob={self.channel_swap_prob}, normalize={self.normalize})"
        )

    def __call__(
        self,
        image: Tensor,
        target: dict[str, Any],
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        if (
            not isinstance(image, Tensor)
            or image.dtype != torch.uint8
            or image.ndim != 3
            or image.shape[0] != 3
        ):
            got = (
                f"{image.dtype} {list(image.shape)}"
                if isinstance(image, Tensor)
                else type(image).__name__
            )
            raise TypeError(
                f"SSDAugmentation expects a uint8 [3, H, W] image, got {got}"
            )
        boxes = target["boxes"].float().reshape(-1, 4)  # [G, 4] xyxy px
        labels = target["labels"]
        difficult = target.get("difficult", torch.zeros(len(labels), dtype=torch.bool))
        if not len(boxes) == len(labels) == len(difficult):
            raise ValueError(
                f"target of {target.get('image_id', '?')}: {len(boxes)} boxes, "
                f"{len(labels)} labels, {len(difficult)} difficult flags"
            )
        height, width = image.shape[1:]
        if self.train:
            out, boxes, labels, difficult = self._train(
                image, boxes, labels, difficult, generator
            )
        else:
            out = resize_image(image, self.size)  # [3, S, S] uint8
            boxes = to_normalized_boxes(boxes, width, height)
        # positive area only
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        new_target = dict(target)
        new_target.update(
            boxes=boxes[keep], labels=labels[keep], difficult=difficult[keep]
        )
        return (normalize(out) if self.normalize else out), new_target

    def _train(
        self,
        image: Tensor,
        boxes: Tensor,
        labels: Tensor,
        difficult: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = image.shape[1:]
        # 1. Draw every random choice, in the released order.
        photo = sample_photometric(generator, channel_swap_prob=self.channel_swap_prob)
        zoom = sample_zoom_out(width, height, generator)
        if zoom is not None:
            boxes = boxes + torch.tensor(
                [zoom.left, zoom.top, zoom.left, zoom.top], dtype=boxes.dtype
            )
            canvas_w, canvas_h, left, top = zoom.width, zoom.height, zoom.left, zoom.top
        else:
            canvas_w, canvas_h, left, top = width, height, 0, 0
        window, _ = sample_iou_crop(boxes, canvas_w, canvas_h, generator)
        flip = _rand(generator) < 0.5
        # 2. Boxes: crop (in canvas coordinates).
        cx1, cy1, cx2, cy2 = (
            window if window is not None else (0, 0, canvas_w, canvas_h)
        )
        _, boxes, labels, difficult = apply_crop(
            image[:, :0, :0], boxes, labels, difficult, window
        )
        # 3. Pixels: only the part of the original image inside the window gets
        # distorted; it is
        #    rounded back to 8 bits (Caffe SSD works on 8-bit images throughout), pasted
        # on the fill and resized.
        # overlap of window and image, canvas coords
        ox1, oy1 = (
            max(cx1, left),
            max(cy1, top),
        )
        ox2, oy2 = min(cx2, left + width), min(cy2, top + height)
        # [3, h, w] uint8
        part = image[:, oy1 - top : oy2 - top, ox1 - left : ox2 - left]

        def distort(
            pixels: Tensor,
        ) -> Tensor:  # uint8 -> uint8; all steps skipped: 1 draw in 16
            if photo == PhotometricParams():
                return pixels
            return apply_photometric(pixels.float(), photo).round_().to(torch.uint8)

        # the window lies inside the image
        if (ox1, oy1, ox2, oy2) == (
            cx1,
            cy1,
            cx2,
            cy2,
        ):
            out = resize_image(distort(part), self.size)  # [3, S, S] uint8
        # mostly fill: never built
        elif (cx2 - cx1) * (cy2 - cy1) > 2 * part.shape[1] * part.shape[2]:
            out = _resize_pasted(
                part, (ox1 - cx1, oy1 - cy1), (cx2 - cx1, cy2 - cy1), self.size, distort
            )
        else:  # a thin margin of fill: building it is cheaper
            # [3, h', w']
            crop = _mean_pixel(torch.uint8).expand(3, cy2 - cy1, cx2 - cx1).clone()
            crop[:, oy1 - cy1 : oy2 - cy1, ox1 - cx1 : ox2 - cx1] = distort(part)
            out = resize_image(crop, self.size)  # [3, S, S] uint8
        boxes = to_normalized_boxes(boxes, cx2 - cx1, cy2 - cy1)
        if flip:  # flipping commutes with the resize, and is cheaper on the small image
            out, boxes = hflip(out, boxes * self.size)
            boxes = boxes / self.size
        return out, boxes, labels, difficult
