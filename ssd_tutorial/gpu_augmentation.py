"""SSD's training augmentation for a whole batch at once, on the device that holds the
images.

The CPU pipeline (:class:`ssd_tutorial.augmentation.SSDAugmentation`) handles one image
at a time in a DataLoader worker.  On a fast GPU the workers cannot keep up (decoding
and augmenting a VOC image costs milliseconds of CPU; a recent GPU trains SSD300 on
hundreds of images a second).  This module does the same augmentation for a batch of
decoded ``uint8`` images, each of its own size, with a fixed number of batched tensor
operations and no Python loop over pixels or boxes:

1. **geometry as one affine map per image.**  Zoom-out (expand), the random min-IoU crop
   and the horizontal flip only move and scale the image, so together they are one
   affine map from the output grid to the input pixels.  All the random crops of the
   batch are sampled in parallel (``max_trials`` candidate patches per image, IoU with
   the image's boxes computed for all of them at once; the first valid patch wins), then
   one ``torch.nn.functional.grid_sample`` call resamples every image to ``size x
   size``.
2. **photometric distortion on the output.**  Brightness, contrast, saturation, hue and
   channel swap are pointwise colour maps with per-image random parameters, applied as
   broadcast tensor arithmetic to the ``[B, 3, size, size]`` result (not to the
   full-size inputs: cheaper).
3. **normalize** with the ImageNet mean/std of :mod:`ssd_tutorial.preprocessing`.

Box format: inputs are absolute-pixel ``xyxy`` boxes of each image; outputs are ``xyxy``
normalized to ``[0, 1]`` of the ``size x size`` output, as the CPU pipeline returns
them.

The random choices follow the same distributions as ``SSDAugmentation`` (the released
Caffe SSD's); the few departures are marked where they happen.  Every random number
comes from the ``torch.Generator`` passed in, so a seeded generator gives the same batch
twice (on one device; CPU and CUDA generators draw different streams).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ssd_tutorial.augmentation import MIN_IOU_CHOICES
from ssd_tutorial.boxes import box_iou
from ssd_tutorial.photometric import (
    BRIGHTNESS_DELTA,
    CHANNEL_PERMUTATIONS,
    CONTRAST_RANGE,
    HUE_DELTA,
    SATURATION_RANGE,
    hsv_to_rgb,
    rgb_to_hsv,
)
from ssd_tutorial.preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "gpu_ssd_augment",
    "gpu_ssd_augment_padded",
    "photometric_distort",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "sample_crops",
]

# Caffe SSD: patch scale in [0.3, 1] (paper p.6: size [0.1, 1] of the image)
CROP_MIN_SCALE = 0.3
# paper p.6: patch aspect ratio between 1/2 and 2 (normalized w / h, as Caffe)
CROP_ASPECT_RANGE = (
    0.5,
    2.0,
)
# paper p.9 "zoom out": canvas up to 4x the image side (16x the area)
EXPAND_MAX_RATIO = 4.0


def _uniform(
    shape: Sequence[int],
    low: float,
    high: float,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    """``U(low, high)`` float32 of ``shape``, drawn on the generator's device, moved to
    ``device``."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return (low + (high - low) * u).to(device)


def _coin(
    shape: Sequence[int],
    generator: torch.Generator,
    device: torch.device,
    p: float = 0.5,
) -> Tensor:
    """Bernoulli(p) bool tensor of ``shape``."""
    return _uniform(shape, 0.0, 1.0, generator, device) < p


def _randint(
    shape: Sequence[int], high: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Uniform integers in ``[0, high)`` (long)."""
    return torch.randint(
        high, tuple(shape), generator=generator, device=generator.device
    ).to(device)


# --------------------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------------------
def photometric_distort(
    images: Tensor, generator: torch.Generator, channel_swap_prob: float = 0.0
) -> Tensor:
    """Random colour distortion of ``[B, 3, H, W]`` float RGB on the 0..255 scale ->
    same shape.

    Per image, with the distributions of Caffe SSD / ``SSDAugmentation``: brightness
    (p=0.5, +U(-32, 32)), contrast (p=0.5, x U(0.5, 1.5)) before or after the HSV steps
    with equal odds, saturation (p=0.5, S x U(0.5, 1.5)), hue (p=0.5, H + U(-36, 36)
    degrees), and a channel swap with probability ``channel_swap_prob`` (Caffe SSD: 0;
    ssd.pytorch: 0.5).  Values are clamped to [0, 255] after brightness and contrast, S
    to [0, 1].  Images that skip a step get the identity parameter (0 shift, factor 1),
    so every step is one tensor operation for the whole batch.
    """
    B, device = images.shape[0], images.device

    def maybe(low: float, high: float, identity: float) -> Tensor:
        """With p = 0.5 per image a draw from U(low, high), else ``identity`` -> [B, 1,
        1, 1]."""
        apply = _coin((B,), generator, device)
        value = _uniform((B,), low, high, generator, device)
        # [B, 1, 1, 1]
        return torch.where(apply, value, torch.full_like(value, identity)).view(
            B, 1, 1, 1
        )

    brightness = maybe(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA, 0.0)  # [B, 1, 1, 1]
    contrast = maybe(*CONTRAST_RANGE, 1.0)
    contrast_first = _coin((B,), generator, device).view(B, 1, 1, 1)  # [B, 1, 1, 1]
    saturation = maybe(*SATURATION_RANGE, 1.0)
    # degrees -> fraction of a turn
    hue_shift = maybe(-HUE_DELTA, HUE_DELTA, 0.0) / 360.0
    swap = _coin((B,), generator, device, p=channel_swap_prob)  # [B]
    perm_index = _randint((B,), len(CHANNEL_PERMUTATIONS), generator, device)  # [B]

    one = torch.ones_like(contrast)
    x = (images + brightness).clamp(0.0, 255.0)
    x = (x * torch.where(contrast_first, contrast, one)).clamp(0.0, 255.0)
    hsv = rgb_to_hsv(x)  # [B, 3, H, W]; V stays on the 0..255 scale
    hue, sat, val = hsv.unbind(1)  # each [B, H, W]
    # [B, 1, 1] broadcast over [B, H, W]
    hue = torch.remainder(hue + hue_shift[:, 0], 1.0)
    sat = (sat * saturation[:, 0]).clamp(0.0, 1.0)
    x = hsv_to_rgb(torch.stack((hue, sat, val), dim=1))  # [B, 3, H, W]
    x = (x * torch.where(contrast_first, one, contrast)).clamp(0.0, 255.0)
    perms = torch.tensor(CHANNEL_PERMUTATIONS, device=device)[perm_index]  # [B, 3]
    # [B, 3]
    perms = torch.where(
        swap[:, None], perms, torch.arange(3, device=device).expand(B, 3)
    )
    # [B, 3, 1, 1] -> [B, 3, H, W]
    return torch.gather(x, 1, perms.view(B, 3, 1, 1).expand_as(x))


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------
def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a [..., N, 4]`` with ``b [..., M, 4]`` xyxy (same leading dims) ->
    ``[..., N, M]``: :func:`ssd_tutorial.boxes.box_iou`, batched over the leading dims
    by ``torch.vmap`` (no loop)."""
    iou = box_iou
    for _ in range(a.ndim - 2):
        iou = torch.vmap(iou)
    return iou(a, b)


def _centres_inside(crops: Tensor, boxes: Tensor) -> Tensor:
    """Whether each box's centre lies strictly inside each crop: ``[..., N, 4]``,
    ``[..., M, 4]`` -> ``[..., N, M]``."""
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2  # [..., M, 2]
    c = centres[..., None, :, :]  # [..., 1, M, 2]
    return (
        (crops[..., :, None, 0] < c[..., 0])
        & (crops[..., :, None, 1] < c[..., 1])
        & (crops[..., :, None, 2] > c[..., 0])
        & (crops[..., :, None, 3] > c[..., 1])
    )


def sample_crops(
    boxes: Tensor,
    valid: Tensor,
    generator: torch.Generator,
    max_trials: int = 50,
    min_ious: Sequence[float | None] = MIN_IOU_CHOICES,
) -> Tensor:
    """Draw one random min-IoU crop per image, for the whole batch at once.

    ``boxes`` [B, G, 4] xyxy normalized to each image's (or zoom-out canvas's) width and
    height, ``valid`` [B, G] bool (False = padding).  Returns ``[B, 4]`` crops in the
    same normalized xyxy coordinates.

    The rule of :func:`ssd_tutorial.augmentation.sample_iou_crop` (Caffe's
    ``GenerateBatchSamples`` and uniform pick), for every image in parallel: a pool
    holds the whole image (if None is among ``min_ious``) and, for each numeric option
    (-inf = no overlap constraint), the first of ``max_trials`` candidate patches that
    passes it; one member of the pool is picked uniformly.  A candidate has scale ``s ~
    U(0.3, 1)``, aspect ratio ``ar ~ U(max(1/2, s^2), min(2, 1/s^2))``, width ``s *
    sqrt(ar)`` and height ``s / sqrt(ar)`` of the image's; it passes when its IoU with
    at least one object is >= the option's minimum and the centre of at least one object
    lies inside it.  An empty pool (no None option and every trial failed) or an image
    without objects keeps the whole image.  IoU is computed in normalized coordinates:
    scaling x and y changes every area by the same factor, so it changes
    no IoU.  Departure: patches are not rounded to whole pixels (the CPU pipeline crops
    integer pixels).
    """
    B, G = valid.shape
    device = boxes.device
    T = max_trials
    numeric = [m for m in min_ious if m is not None]
    K = len(numeric)
    has_whole = len(numeric) < len(min_ious)
    # [B, K*T]
    threshold = (
        torch.tensor(numeric, device=device)
        .view(1, K, 1)
        .expand(B, K, T)
        .reshape(B, K * T)
    )

    s = _uniform((B, K, T), CROP_MIN_SCALE, 1.0, generator, device)  # [B, K, T]
    ar_lo = torch.clamp(s * s, min=CROP_ASPECT_RANGE[0])
    ar_hi = torch.clamp(1.0 / (s * s), max=CROP_ASPECT_RANGE[1])
    root_ar = (
        ar_lo + (ar_hi - ar_lo) * _uniform((B, K, T), 0.0, 1.0, generator, device)
    ).sqrt()
    w, h = s * root_ar, s / root_ar  # [B, K, T] fractions of the width and height
    left = _uniform((B, K, T), 0.0, 1.0, generator, device) * (1.0 - w)
    top = _uniform((B, K, T), 0.0, 1.0, generator, device) * (1.0 - h)
    # [B, K*T, 4]
    crops = torch.stack((left, top, left + w, top + h), dim=-1).view(B, K * T, 4)

    iou = _pairwise_iou(crops, boxes)  # [B, K*T, G]
    # [B, K*T]; G >= 1
    best_iou = torch.where(valid[:, None, :], iou, torch.full_like(iou, -1.0)).amax(
        dim=-1
    )
    # [B, K*T]
    any_inside = (_centres_inside(crops, boxes) & valid[:, None, :]).any(dim=-1)
    ok = (any_inside & (best_iou >= threshold)).view(B, K, T)

    first = ok.float().argmax(dim=-1)  # [B, K]; argmax returns the first maximum
    # [B, K, 4]
    samples = (
        crops.view(B, K, T, 4)
        .gather(2, first[:, :, None, None].expand(B, K, 1, 4))
        .squeeze(2)
    )
    found = ok.any(dim=-1) & valid.any(dim=-1, keepdim=True)  # [B, K]
    full = torch.tensor((0.0, 0.0, 1.0, 1.0), device=device)
    # The pool: [whole image, one sample per option that succeeded]; pick the k-th
    # member, k uniform in [0, pool size), without leaving the device.
    # [B, 1+K]
    pool_ok = torch.cat((torch.full((B, 1), has_whole, device=device), found), dim=1)
    pool = torch.cat((full.expand(B, 1, 4), samples), dim=1)  # [B, 1+K, 4]
    size = pool_ok.sum(dim=1)  # [B]
    # [B]
    pick = (_uniform((B,), 0.0, 1.0, generator, device) * size).long().clamp(max=K)
    # [B, 1+K]: one True, or none
    chosen = pool_ok & (pool_ok.cumsum(dim=1) - 1 == pick[:, None])
    crop = pool[torch.arange(B, device=device), chosen.float().argmax(dim=1)]  # [B, 4]
    return torch.where((size > 0)[:, None], crop, full.expand(B, 4))


def _pad_images(images: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
    """Images of different sizes -> one zero-padded ``[B, 3, H_max, W_max]`` tensor +
    sizes ``[B, 2]`` (H, W)."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
        B, _, H, W = images.shape
        return images, torch.tensor([[H, W]] * B, device=images.device)
    if len(images) == 0:
        raise ValueError("images is empty: need at least one image")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.ndim != 3 or img.shape[0] != 3:
            got = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"images[{i}] must be a [3, H, W] tensor, got {got}")
    h_max = max(int(img.shape[1]) for img in images)
    w_max = max(int(img.shape[2]) for img in images)
    padded = images[0].new_zeros((len(images), 3, h_max, w_max))
    for i, img in enumerate(images):
        padded[i, :, : img.shape[1], : img.shape[2]] = img
    sizes = torch.tensor(
        [[int(img.shape[1]), int(img.shape[2])] for img in images],
        device=images[0].device,
    )
    return padded, sizes


class _Geometry(NamedTuple):
    """The geometric augmentation of a batch: each image's zoom-out canvas, crop on it
    and flip (together one affine map), and the boxes they give.

    ``ratio``, ``offset_x``, ``offset_y`` [B]: the canvas is ``ratio`` x the image's
    width and height, the image's top-left corner at ``(offset_x, offset_y)`` of the
    canvas (normalized).  ``crop`` [B, 4] xyxy normalized to the canvas; ``flip`` [B]
    bool.  ``boxes`` [B, G, 4] xyxy normalized to the output, ``keep`` [B, G] bool.
    """

    ratio: Tensor
    offset_x: Tensor
    offset_y: Tensor
    crop: Tensor
    flip: Tensor
    boxes: Tensor
    keep: Tensor


def _check_box_shapes(boxes: Tensor, valid: Tensor, batch: int) -> None:
    """``boxes`` must be ``[batch, G, 4]`` and ``valid`` ``[batch, G]``; raises
    ValueError naming the shapes (checked on shapes only: no host synchronisation)."""
    if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B={batch}, G, 4], got {list(boxes.shape)}")
    if valid.shape != boxes.shape[:2]:
        raise ValueError(
            f"valid must be [B, G] = {list(boxes.shape[:2])}, got {list(valid.shape)}"
        )


def _zoom_out(
    unit_boxes: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Zoom out (p=0.5): the image becomes a 1/ratio-sized tile at a random place of a
    canvas ratio x its width and height.

    ``unit_boxes`` [B, G, 4] xyxy normalized to the image -> ``(ratio [B], offset_x
    [B], offset_y [B], canvas_boxes [B, G, 4] xyxy normalized to the canvas)``; an image
    that is not zoomed out gets ratio 1 and offset 0.  Departure: the CPU pipeline
    rounds the canvas and the offsets to whole pixels; here they stay continuous.
    """
    B, device = unit_boxes.shape[0], unit_boxes.device
    expand = _coin((B,), generator, device)
    ratio = torch.where(
        expand,
        _uniform((B,), 1.0, EXPAND_MAX_RATIO, generator, device),
        torch.ones(B, device=device),
    )
    # image's left edge on the canvas
    offset_x = _uniform((B,), 0.0, 1.0, generator, device) * (1.0 - 1.0 / ratio)
    offset_y = _uniform((B,), 0.0, 1.0, generator, device) * (1.0 - 1.0 / ratio)
    # [B, 1, 4]
    offset = torch.stack((offset_x, offset_y, offset_x, offset_y), dim=-1)[:, None, :]
    # [B, G, 4] normalized to the canvas
    canvas_boxes = offset + unit_boxes / ratio.view(B, 1, 1)
    return ratio, offset_x, offset_y, canvas_boxes


def _crop_and_flip_boxes(
    canvas_boxes: Tensor, valid: Tensor, crop: Tensor, flip: Tensor
) -> tuple[Tensor, Tensor]:
    """The boxes after the crop and the flip.

    ``canvas_boxes`` [B, G, 4] xyxy normalized to the canvas, ``valid`` [B, G], ``crop``
    [B, 4] xyxy on the canvas, ``flip`` [B] bool -> ``(boxes [B, G, 4] xyxy normalized
    to the output, keep [B, G])``: the boxes whose centre is in the crop are kept,
    clipped to it and expressed in its frame, then mirrored where ``flip``.
    """
    B = canvas_boxes.shape[0]
    crop_lo = crop[:, None, :2].repeat(1, 1, 2)  # [B, 1, 4] (x1, y1, x1, y1)
    crop_hi = crop[:, None, 2:].repeat(1, 1, 2)  # [B, 1, 4] (x2, y2, x2, y2)
    clipped = torch.minimum(torch.maximum(canvas_boxes, crop_lo), crop_hi)  # [B, G, 4]
    # [B, G, 4] normalized to the output
    out_boxes = (clipped - crop_lo) / (crop_hi - crop_lo)
    mirrored = torch.stack(
        (
            1 - out_boxes[..., 2],
            out_boxes[..., 1],
            1 - out_boxes[..., 0],
            out_boxes[..., 3],
        ),
        -1,
    )
    out_boxes = torch.where(flip.view(B, 1, 1), mirrored, out_boxes)  # [B, G, 4]
    keep = valid & _centres_inside(crop[:, None, :], canvas_boxes)[:, 0, :]  # [B, G]
    return out_boxes, keep


def _train_geometry(
    unit_boxes: Tensor, valid: Tensor, generator: torch.Generator, max_trials: int
) -> _Geometry:
    """Random zoom-out, min-IoU crop and horizontal flip of every image, with the boxes
    they give (``unit_boxes`` [B, G, 4] xyxy normalized to the image, ``valid``
    [B, G]).  The draws come in this order: zoom-out, crop, flip."""
    B, device = unit_boxes.shape[0], unit_boxes.device
    ratio, offset_x, offset_y, canvas_boxes = _zoom_out(unit_boxes, generator)
    crop = sample_crops(canvas_boxes, valid, generator, max_trials)  # [B, 4]
    flip = _coin((B,), generator, device)  # [B]
    out_boxes, keep = _crop_and_flip_boxes(canvas_boxes, valid, crop, flip)
    return _Geometry(ratio, offset_x, offset_y, crop, flip, out_boxes, keep)


def _identity_geometry(unit_boxes: Tensor, valid: Tensor) -> _Geometry:
    """The evaluation geometry: no zoom-out, the whole image as the crop, no flip; the
    boxes stay ``unit_boxes`` ([B, G, 4] xyxy normalized to the image)."""
    B, device = unit_boxes.shape[0], unit_boxes.device
    ratio = torch.ones(B, device=device)
    offset_x = offset_y = torch.zeros(B, device=device)
    crop = torch.tensor((0.0, 0.0, 1.0, 1.0), device=device).expand(B, 4)
    flip = torch.zeros(B, dtype=torch.bool, device=device)
    return _Geometry(ratio, offset_x, offset_y, crop, flip, unit_boxes, valid)


def _clamp_and_drop_degenerate(boxes: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Clamp ``boxes`` [B, G, 4] xyxy to ``[0, 1]`` and drop from ``keep`` [B, G] the
    boxes of zero width or height: never a degenerate box, as SSDAugmentation."""
    boxes = boxes.clamp(0.0, 1.0)
    keep = keep & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    return boxes, keep


def _resample(
    padded: Tensor, sizes: Tensor, geometry: _Geometry, size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Resample every image through its geometry with one ``grid_sample`` call.

    ``padded`` [B, 3, H_max, W_max] (any dtype), ``sizes`` [B, 2] (H, W) of each image's
    own pixels ->
    ``(out float [B, 3, size, size] on the 0..255 scale, u [B, size], v [B, size])``:
    ``u``/``v`` are the output columns'/rows' x/y normalized to the image (outside [0,
    1] = zoom-out fill).
    """
    B, _, h_max, w_max = padded.shape
    device = padded.device
    height = sizes[:, 0].float()  # [B]
    width = sizes[:, 1].float()  # [B]
    ratio, offset_x, offset_y, crop, flip = geometry[:5]
    # Output pixel centre t = (j + 0.5) / size -> crop -> canvas -> image pixels, per
    # axis.
    t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size  # [size]
    crop_w, crop_h = crop[:, 2] - crop[:, 0], crop[:, 3] - crop[:, 1]  # [B]
    # [B, size]; a flip reads the crop right to left
    t_x = torch.where(flip[:, None], 1.0 - t, t)
    x_canvas = crop[:, 0:1] + crop_w[:, None] * t_x  # [B, size]
    y_canvas = crop[:, 1:2] + crop_h[:, None] * t  # [B, size]
    # [B, size] x normalized to the image
    u = (x_canvas - offset_x[:, None]) * ratio[:, None]
    # [B, size] y normalized to the image
    v = (y_canvas - offset_y[:, None]) * ratio[:, None]
    # Clamp to the image's own pixel centres (as F.interpolate does at the border), so
    # the zero padding of the smaller images in the batch is never read.
    # [B, size] pixels
    px = torch.minimum((u * width[:, None]).clamp(min=0.5), width[:, None] - 0.5)
    py = torch.minimum((v * height[:, None]).clamp(min=0.5), height[:, None] - 0.5)
    gx = (2.0 * px / w_max - 1.0)[:, None, :].expand(B, size, size)  # [B, size, size]
    gy = (2.0 * py / h_max - 1.0)[:, :, None].expand(B, size, size)  # [B, size, size]
    grid = torch.stack((gx, gy), dim=-1)  # [B, size, size, 2] (x, y) in [-1, 1]
    out = F.grid_sample(
        padded.float(),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return out, u, v


def _distort_colours(
    out: Tensor,
    u: Tensor,
    v: Tensor,
    mean: Tensor,
    generator: torch.Generator,
    channel_swap_prob: float,
) -> Tensor:
    """Photometric distortion of the resampled ``out`` [B, 3, S, S] (0..255), then the
    zoom-out fill (where ``u`` [B, S] or ``v`` [B, S] leave [0, 1]) reset to ``mean``
    [1, 3, 1, 1] x 255.

    Departure: SSDAugmentation distorts the colours before resizing; here they are
    distorted after it, on size x size pixels instead of the full image.  The maps are
    per pixel, so the two orders differ only where bilinear interpolation mixes pixels
    across a clamp or a hue wrap-around (edges).  The zoom-out fill stays the
    undistorted mean, as in Caffe SSD.
    """
    out = photometric_distort(out, generator, channel_swap_prob)
    # [B, 1, S, S]
    on_image = ((v >= 0) & (v <= 1))[:, None, :, None] & ((u >= 0) & (u <= 1))[
        :, None, None, :
    ]
    return torch.where(on_image, out, mean * 255.0)


def gpu_ssd_augment_padded(
    images: Sequence[Tensor] | Tensor,
    boxes: Tensor,
    valid: Tensor,
    generator: torch.Generator,
    size: int = 300,
    train: bool = True,
    max_trials: int = 50,
    channel_swap_prob: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`gpu_ssd_augment` on padded box tensors, with no host synchronisation.

    ``boxes`` [B, G, 4] absolute-pixel xyxy, ``valid`` [B, G] bool (False = padding).
    Returns ``(images float [B, 3, size, size] normalized, boxes [B, G, 4] normalized
    xyxy, keep [B, G] bool)``: ``keep`` marks the objects that survive (a subset of
    ``valid``); rows where it is False hold meaningless numbers.
    """
    padded, sizes = _pad_images(images)
    device = padded.device
    _check_box_shapes(boxes, valid, padded.shape[0])
    height = sizes[:, 0].float()  # [B]
    width = sizes[:, 1].float()  # [B]
    wh = torch.stack((width, height, width, height), dim=-1)[:, None, :]  # [B, 1, 4]
    # [B, G, 4] normalized to the image
    unit_boxes = boxes.to(device=device, dtype=torch.float32) / wh
    valid = valid.to(device)

    if train:
        geometry = _train_geometry(unit_boxes, valid, generator, max_trials)
    else:
        geometry = _identity_geometry(unit_boxes, valid)
    out_boxes, keep = _clamp_and_drop_degenerate(geometry.boxes, geometry.keep)
    out, u, v = _resample(padded, sizes, geometry, size)

    # [1, 3, 1, 1]
    mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=torch.float32).view(
        1, 3, 1, 1
    )
    # [1, 3, 1, 1]
    std = torch.tensor(IMAGENET_STD, device=device, dtype=torch.float32).view(
        1, 3, 1, 1
    )
    if train:
        out = _distort_colours(out, u, v, mean, generator, channel_swap_prob)
    normalized = (out / 255.0 - mean) / std  # [B, 3, size, size]
    return normalized, out_boxes, keep


def gpu_ssd_augment(
    images: Sequence[Tensor] | Tensor,
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    generator: torch.Generator,
    size: int = 300,
    train: bool = True,
    max_trials: int = 50,
    channel_swap_prob: float = 0.0,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """SSD augmentation of a batch, on the images' device.

    ``images``: a list of uint8 ``[3, H_i, W_i]`` (sizes may differ) or one ``[B, 3, H,
    W]``;
    ``boxes``: list of ``[G_i, 4]`` absolute-pixel xyxy; ``labels``: list of ``[G_i]``.
    Returns ``(images float [B, 3, size, size] normalized with the ImageNet mean/std,
    boxes: list of [G'_i, 4] normalized xyxy, labels: list of [G'_i])``, ``G'_i <= G_i``
    the objects whose centre falls inside the sampled crop, in their original order.

    ``train=False`` is the evaluation transform: a plain bilinear resize of the whole
    image and normalization (as ``SSDAugmentation(train=False)``); boxes are only
    normalized.  Splitting the surviving objects into per-image lists needs one host
    synchronisation; :func:`gpu_ssd_augment_padded` has none.
    """
    n = images.shape[0] if isinstance(images, Tensor) else len(images)
    if n == 0:
        raise ValueError("images is empty: need at least one image")
    if len(boxes) != n or len(labels) != n:
        raise ValueError(
            f"got {n} images but {len(boxes)} box tensors and {len(labels)} label "
            "tensors"
        )
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        if (
            b.ndim != 2
            or b.shape[-1] != 4
            or lab.ndim != 1
            or lab.shape[0] != b.shape[0]
        ):
            raise ValueError(
                f"image {i}: boxes must be [G, 4] and labels [G], got {list(b.shape)} "
                f"and {list(lab.shape)}"
            )
    device = images.device if isinstance(images, Tensor) else images[0].device
    counts = [int(b.shape[0]) for b in boxes]
    g_max = max(max(counts, default=0), 1)
    padded_boxes = torch.zeros((n, g_max, 4), device=device)
    padded_labels = torch.zeros((n, g_max), dtype=torch.long, device=device)
    # one copy per image, no per-box work
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        padded_boxes[i, : counts[i]] = b.to(device=device, dtype=torch.float32)
        padded_labels[i, : counts[i]] = lab.to(device)
    # [B, G]
    valid = (
        torch.arange(g_max, device=device)[None, :]
        < torch.tensor(counts, device=device)[:, None]
    )

    out, out_boxes, keep = gpu_ssd_augment_padded(
        images,
        padded_boxes,
        valid,
        generator,
        size,
        train,
        max_trials,
        channel_swap_prob,
    )
    kept_counts = keep.sum(dim=1).tolist()  # the one host synchronisation
    box_list = list(out_boxes[keep].split(kept_counts))  # [G'_i, 4] each
    label_list = list(padded_labels[keep].split(kept_counts))  # [G'_i] each
    return out, box_list, label_list
