"""Augmentation: the paper's "data augmentation" (p.6), one function per piece.

> "each training image is randomly sampled by one of the following options: use the entire
> original input image; sample a patch so that the minimum jaccard overlap with the objects is
> 0.1, 0.3, 0.5, 0.7, or 0.9; randomly sample a patch. The size of each sampled patch is
> [0.1, 1] of the original image size, and the aspect ratio is between 1/2 and 2. [...] each
> sampled patch is resized to fixed size and is horizontally flipped with probability of 0.5, in
> addition to applying some photo-metric distortions" -- Liu et al. 2016, p.6

plus the zoom-out ("expansion", p.9) that creates small objects.  The training pipeline, as in
the released Caffe code, is::

    photometric distortion -> zoom out (p=0.5, up to 4x, mean fill) -> random IoU crop
    -> horizontal flip (p=0.5) -> resize to size x size -> normalize (ImageNet mean/std)

Each piece is split into ``sample_*`` (draw the random parameters from a ``torch.Generator``)
and ``apply_*`` (deterministic), so a chapter or a test can fix the parameters, and so that
:class:`SSDAugmentation` can run the pieces in a cheaper order with the same result (see its
docstring).  Images are ``[3, H, W]`` tensors: uint8 in, float in [0, 255] in between, float
normalized out.  Boxes are xyxy in pixels until the end, where they become normalized xyxy.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssd_tutorial.boxes import box_iou

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

# ImageNet statistics (RGB, images in [0, 1]) that torchvision's VGG16 weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The crop options; None = keep the whole image, -inf = any patch (no overlap constraint).
# paper p.6: min IoU in {0.1, 0.3, 0.5, 0.7, 0.9}; ssd_pascal.py's batch_sampler has these
# seven (the last as max_jaccard_overlap 1.0).  (ssd.pytorch drops 0.5; we keep it.)
MIN_IOU_CHOICES: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -math.inf)

# Caffe SSD's photometric distortion (distort_param of ssd_pascal.py); the batched GPU pipeline
# (ssd_tutorial.gpu_augmentation) draws from these same numbers.
BRIGHTNESS_DELTA = 32.0  # add U(-32, 32) to every channel, on the 0..255 scale
CONTRAST_RANGE = (0.5, 1.5)  # multiply every channel by U(0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)  # multiply S (HSV) by U(0.5, 1.5)
# Caffe's hue_delta is 18 in OpenCV's 8-bit hue units (cvtColor to HSV on uint8: 180 units a
# turn, im_transforms.cpp AdjustHue), so +-18 units is +-36 degrees.  (ssd.pytorch adds 18 to
# OpenCV's float hue, which is in degrees: half Caffe's range.)
HUE_DELTA = 36.0  # add U(-36, 36) degrees to H
# The orders of the RGB channels a channel swap picks from (all but the identity).
CHANNEL_PERMUTATIONS: tuple[tuple[int, int, int], ...] = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def _rand(generator: torch.Generator | None) -> float:
    """One uniform draw in [0, 1)."""
    return float(torch.rand((), generator=generator))


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * _rand(generator)


def _mean_pixel(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The fill colour of zoom-out: ImageNet mean in [0, 255] (rounded for uint8), ``[3, 1, 1]``.

    Caffe SSD: fills with its mean pixel (104, 117, 123) BGR, the same colour; after
    normalization it becomes 0.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=device).mul(255.0)
    if dtype == torch.uint8:
        mean = mean.round()
    return mean.to(dtype).reshape(3, 1, 1)  # [3, 1, 1]


# --------------------------------------------------------------------------------------------
# Photometric distortion
# --------------------------------------------------------------------------------------------
def rgb_to_hsv(image: Tensor) -> Tensor:
    """RGB float ``[..., 3, H, W]`` in [0, 255] -> HSV ``[..., 3, H, W]``: H in [0, 1), S in [0, 1], V in [0, 255].

    H and S are ratios, so any RGB scale works: V comes out on the scale that went in (the
    batched GPU pipeline passes ``[B, 3, H, W]``).  Written with arithmetic on masks rather than
    ``torch.where``/``gather``: several times faster on CPU.
    """
    r, g, b = image.unbind(-3)  # each [..., H, W]
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    safe = delta + (delta == 0).to(image.dtype)  # 1 where grey: the hue formulas give 0 there
    is_r = (maxc == r).to(image.dtype)
    is_g = (maxc == g).to(image.dtype) * (1 - is_r)
    is_b = 1 - is_r - is_g
    hue = (is_r * (g - b) + is_g * (2 * delta + b - r) + is_b * (4 * delta + r - g)) / (6 * safe)
    hue = hue - torch.floor(hue)  # wrap to [0, 1)
    sat = delta / maxc.clamp_min(1e-12)
    return torch.stack((hue, sat, maxc), dim=-3)  # [..., 3, H, W]


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`: HSV ``[..., 3, H, W]`` -> RGB float ``[..., 3, H, W]`` on V's scale.

    Channel n of (R, G, B) = V - V S clamp(min(k, 4 - k), 0, 1) with k = (n + 6 H) mod 6 and
    n = 5, 3, 1 (the closed form of the six-sector table).
    """
    hue, sat, val = hsv.unbind(-3)  # each [..., H, W]
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = n + 6.0 * hue
        k = k - 6.0 * torch.floor(k / 6.0)  # mod 6
        channels.append(val - val * sat * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=-3)  # [..., 3, H, W]


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of the photometric distortion; ``None`` = that step is skipped.

    brightness: added to every channel; contrast: multiplies every channel; saturation:
    multiplies S; hue: added to H, in degrees; contrast_first: contrast before (True) or after
    the HSV steps; channel_order: a permutation of (0, 1, 2) or None.
    """

    brightness: float | None = None
    contrast: float | None = None
    contrast_first: bool = True
    saturation: float | None = None
    hue: float | None = None
    channel_order: tuple[int, int, int] | None = None


def sample_photometric(
    generator: torch.Generator | None = None,
    brightness_delta: float = BRIGHTNESS_DELTA,
    contrast_range: tuple[float, float] = CONTRAST_RANGE,
    saturation_range: tuple[float, float] = SATURATION_RANGE,
    hue_delta: float = HUE_DELTA,
    channel_swap_prob: float = 0.0,
) -> PhotometricParams:
    """Draw the distortion of the released Caffe SSD (``distort_param`` of ssd_pascal.py).

    Each of brightness (+-32), contrast (x0.5-1.5), saturation (x0.5-1.5) and hue (+-36 deg)
    happens with probability 0.5; contrast goes before or after the HSV steps with equal odds
    (the "random order").  Caffe SSD: ``random_order_prob`` = 0, so channels are never swapped
    by default; ssd.pytorch swaps them with probability 0.5 (pass ``channel_swap_prob=0.5``).
    """
    brightness = _uniform(generator, -brightness_delta, brightness_delta) if _rand(generator) < 0.5 else None
    contrast_first = _rand(generator) < 0.5
    contrast = _uniform(generator, *contrast_range) if _rand(generator) < 0.5 else None
    saturation = _uniform(generator, *saturation_range) if _rand(generator) < 0.5 else None
    hue = _uniform(generator, -hue_delta, hue_delta) if _rand(generator) < 0.5 else None
    order = None
    if _rand(generator) < channel_swap_prob:
        order = CHANNEL_PERMUTATIONS[int(torch.randint(len(CHANNEL_PERMUTATIONS), (), generator=generator))]
    return PhotometricParams(brightness, contrast, contrast_first, saturation, hue, order)


def _adjust_saturation_hue(image: Tensor, saturation: float | None, hue: float | None) -> Tensor:
    """Scale HSV saturation by ``saturation`` (capped at S = 1) and add ``hue`` degrees to H, in RGB.

    ``image`` float ``[3, H, W]`` in [0, 255] -> a new float ``[3, H, W]`` in [0, 255]; the same
    numbers as the round trip ``rgb_to_hsv`` -> change S and H -> ``hsv_to_rgb`` (tests check it,
    and against colorsys/torchvision), several times faster, because it never builds the HSV
    image.  V = max and the spread max - min (= V S) are all that H and S leave:

    * saturation x k keeps V and H, so the spread becomes min(k spread, max);
    * the hue of a pixel is a position 6H in [0, 6) on the colour wheel, and its channel c is
      max - spread' (1 - p_c(6H)), where p_c is the fully saturated colour's channel, a
      triangle wave: p_R = clamp(|6H - 3| - 1, 0, 1), p_G = clamp(2 - |6H - 2|, 0, 1),
      p_B = clamp(2 - |6H - 4|, 0, 1).

    Why this shape: every step is one pass over one plane with no boolean temporaries (on a CPU a
    comparison that makes a mask costs several times an add); this is most of a DataLoader
    worker's time.
    """
    maxc = image.amax(0)  # [H, W]
    spread = maxc - image.amin(0)  # [H, W]
    new_spread = spread if saturation is None else torch.minimum(spread * saturation, maxc)
    if hue is None:  # c' = max - (max - c) spread' / spread; a grey pixel (spread 0) stays grey
        return image.sub(maxc).mul_(new_spread / spread.clamp_min(1e-12)).add_(maxc).clamp_(0.0, 255.0)
    r, g, b = image.unbind(0)  # each [H, W]
    # Which channel is the max (ties: R before G before B), as 0/1 floats: 1 - sign(max - c).
    is_r = 1.0 - torch.sign(maxc - r)
    is_g = torch.sign(maxc - g).sub_(1.0).mul_(is_r - 1.0)
    is_b = 1.0 - is_r - is_g
    # 6H times the spread, sector by sector: (g - b), 2 spread + (b - r), 4 spread + (r - g).
    wheel = (g - b).mul_(is_r)
    wheel.addcmul_(is_g, (b - r).add_(spread, alpha=2.0))
    wheel.addcmul_(is_b, (r - g).add_(spread, alpha=4.0))
    wheel.div_(spread + 1.0 - torch.sign(spread)).add_(hue / 60.0)  # 6H + shift (grey: H = 0)
    wheel.sub_(torch.floor(wheel / 6.0).mul_(6.0))  # wrap into [0, 6)
    out = torch.empty_like(image)  # [3, H, W]: first 1 - p_c, then the channels
    torch.sub(wheel, 3.0, out=out[0]).abs_().neg_().add_(2.0)
    torch.sub(wheel, 2.0, out=out[1]).abs_().sub_(1.0)
    torch.sub(wheel, 4.0, out=out[2]).abs_().sub_(1.0)
    return out.clamp_(0.0, 1.0).mul_(new_spread).neg_().add_(maxc).clamp_(0.0, 255.0)


def apply_photometric(image: Tensor, params: PhotometricParams) -> Tensor:
    """Apply a drawn distortion to float ``[3, H, W]`` in [0, 255]; returns the same shape and range.

    Every step is per pixel, so it commutes with cropping and flipping (used by SSDAugmentation).
    Values are clamped to [0, 255] after each step, as on Caffe's 8-bit images.
    """
    out = image
    if params.brightness is not None:
        out = (out + params.brightness).clamp_(0.0, 255.0)

    def contrast(x: Tensor) -> Tensor:
        return (x * params.contrast).clamp_(0.0, 255.0) if params.contrast is not None else x

    if params.contrast_first:
        out = contrast(out)
    if params.saturation is not None or params.hue is not None:
        # Saturation then hue, in one pass (as rgb_to_hsv -> scale S, shift H -> hsv_to_rgb), on
        # planes: decoders hand out [3, H, W] views of H x W x 3 memory, and arithmetic across the
        # channels runs several times slower on that interleaved layout than the copy costs.
        out = _adjust_saturation_hue(out.contiguous(), params.saturation, params.hue)
    if not params.contrast_first:
        out = contrast(out)
    if params.channel_order is not None:
        out = out[list(params.channel_order)]
    return out


# --------------------------------------------------------------------------------------------
# Zoom out ("expansion")
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZoomOutParams:
    """Canvas ``width x height`` px with the image pasted at (left, top), integer pixels."""

    width: int
    height: int
    left: int
    top: int


def sample_zoom_out(
    width: int, height: int, generator: torch.Generator | None = None, max_ratio: float = 4.0, p: float = 0.5
) -> ZoomOutParams | None:
    """With probability ``p``, a canvas 1 to ``max_ratio`` times the image's side; else None.

    paper p.9: "we first randomly place an image on a canvas of 16x of the original image size
    filled with mean values" -- 16x the area, i.e. up to 4x the side.
    """
    if _rand(generator) >= p:
        return None
    ratio = _uniform(generator, 1.0, max_ratio)
    canvas_w, canvas_h = int(width * ratio), int(height * ratio)
    left = int(_uniform(generator, 0, canvas_w - width))
    top = int(_uniform(generator, 0, canvas_h - height))
    return ZoomOutParams(canvas_w, canvas_h, left, top)


def apply_zoom_out(image: Tensor, boxes: Tensor, params: ZoomOutParams | None) -> tuple[Tensor, Tensor]:
    """Paste float ``[3, H, W]`` onto a mean-filled canvas; boxes ``[G, 4]`` xyxy px move with it."""
    if params is None:
        return image, boxes
    h, w = image.shape[1:]
    canvas = _mean_pixel(image.dtype, image.device).expand(3, params.height, params.width).clone()  # [3, H', W']
    canvas[:, params.top : params.top + h, params.left : params.left + w] = image
    shift = torch.tensor([params.left, params.top, params.left, params.top], dtype=boxes.dtype, device=boxes.device)
    return canvas, boxes + shift


def zoom_out(
    image: Tensor, boxes: Tensor, generator: torch.Generator | None = None, max_ratio: float = 4.0, p: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Random zoom-out of float ``[3, H, W]`` with boxes ``[G, 4]`` xyxy px."""
    params = sample_zoom_out(image.shape[2], image.shape[1], generator, max_ratio, p)
    return apply_zoom_out(image, boxes, params)


# --------------------------------------------------------------------------------------------
# Random IoU crop
# --------------------------------------------------------------------------------------------
def _crop_candidates(
    draws: np.ndarray, width: int, height: int, min_scale: float, aspect_range: tuple[float, float]
) -> np.ndarray:
    """Caffe's ``SampleBBox`` on uniform ``draws [..., 4]`` -> integer windows ``[..., 4]`` xyxy px.

    Scale ``s ~ U(min_scale, 1)``, aspect ratio ``ar ~ U(max(lo, s^2), min(hi, 1/s^2))``, patch
    ``s * sqrt(ar)`` of the width by ``s / sqrt(ar)`` of the height (both <= 1 by the bounds on
    ar), at a uniform position; corners rounded down to whole pixels.
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
    """Draw a crop window ``(x1, y1, x2, y2)`` px for an image ``width x height`` with boxes ``[G, 4]`` xyxy px.

    A candidate patch is Caffe's (sampler.cpp ``SampleBBox``, ssd_pascal.py's ``batch_sampler``):
    scale ``s ~ U(0.3, 1)``, aspect ratio ``ar ~ U(max(1/2, s^2), min(2, 1/s^2))``, width
    ``s * sqrt(ar)`` and height ``s / sqrt(ar)`` of the image's.  It passes an option when its
    IoU with at least one box is >= the option's minimum (``-inf``: any patch) and the centre
    of at least one box lies inside it.

    ``min_iou="random"`` is Caffe's rule (sampler.cpp ``GenerateBatchSamples``, then a uniform
    pick in annotated_data_layer.cpp): the whole image always enters a pool; each option of
    :data:`MIN_IOU_CHOICES` tries up to ``max_trials`` patches and adds its first success; one
    member of the pool is picked uniformly.  A number runs that one option (None if all its
    trials fail); None keeps the whole image.  Returns ``(window, option)``: window None means
    the whole image, ``option`` is the option that produced it (None for the whole image).

    Departures: paper p.6 says patch sizes [0.1, 1] of the image; the released Caffe code draws
    the scale from [0.3, 1], which we follow.  The centre rule is ssd.pytorch's: Caffe keeps any
    patch that meets the IoU, then drops the objects whose centre falls outside it (as
    :func:`apply_crop` does), which can leave an image with none.
    """
    if isinstance(min_iou, str):
        if min_iou != "random":
            raise ValueError(f"min_iou must be a number, None or 'random', got {min_iou!r}")
        options = [m for m in MIN_IOU_CHOICES if m is not None]
    elif min_iou is None:
        return None, None
    else:
        options = [min_iou]
    if boxes.numel() == 0:
        # no object can satisfy a constraint: Caffe's pool holds only the whole image
        return None, (None if min_iou == "random" else min_iou)
    # Every option's trials are drawn at once and checked together ([K, T] candidates); an
    # option's first passing trial is its sample (the draws after it are never looked at, so
    # this is Caffe's loop that stops at the first success).  numpy: on a few hundred x G
    # numbers torch's per-call overhead cost more than the arithmetic.
    draws = torch.rand(len(options), max_trials, 4, generator=generator, dtype=torch.float64).numpy()
    windows = _crop_candidates(draws, width, height, min_scale, aspect_range)  # [K, T, 4]
    flat = windows.reshape(-1, 4)
    gt = boxes.double()  # [G, 4]
    iou = box_iou(torch.from_numpy(flat), gt).numpy().max(axis=1).reshape(windows.shape[:2])  # [K, T]
    centres = ((gt[:, :2] + gt[:, 2:]) / 2).numpy()  # [G, 2]
    cx, cy = centres[None, :, 0], centres[None, :, 1]  # [1, G]
    inside = (cx > flat[:, 0:1]) & (cx < flat[:, 2:3]) & (cy > flat[:, 1:2]) & (cy < flat[:, 3:4])  # [K*T, G]
    ok = inside.any(axis=1).reshape(windows.shape[:2])  # [K, T]
    ok &= (windows[..., 2] > windows[..., 0]) & (windows[..., 3] > windows[..., 1])
    ok &= iou >= np.asarray(options, dtype=np.float64)[:, None]
    found = ok.any(axis=1)  # [K]
    pool: list[tuple[tuple[int, int, int, int] | None, float | None]] = [] if min_iou != "random" else [(None, None)]
    for k in np.flatnonzero(found):
        pool.append((tuple(int(v) for v in windows[k, int(ok[k].argmax())]), options[k]))  # type: ignore[misc]
    if not pool:
        return None, min_iou  # type: ignore[return-value]
    if len(pool) == 1:
        return pool[0]
    return pool[int(torch.randint(len(pool), (), generator=generator))]


def apply_crop(
    image: Tensor, boxes: Tensor, labels: Tensor, difficult: Tensor, window: tuple[int, int, int, int] | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Crop ``[3, H, W]`` to ``window``; keep the boxes whose centre lies inside, clipped to it.

    Boxes ``[G, 4]`` xyxy px come back in the window's frame, with ``labels [G]`` and
    ``difficult [G]`` filtered alike.  A kept box always has positive area: its centre is
    strictly inside, so the clipped box still contains it.
    """
    if window is None:
        return image, boxes, labels, difficult
    x1, y1, x2, y2 = window
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [G, 2]
    keep = (centres[:, 0] > x1) & (centres[:, 0] < x2) & (centres[:, 1] > y1) & (centres[:, 1] < y2)
    kept = boxes[keep]
    lo = torch.tensor([x1, y1, x1, y1], dtype=boxes.dtype, device=boxes.device)
    hi = torch.tensor([x2, y2, x2, y2], dtype=boxes.dtype, device=boxes.device)
    kept = torch.minimum(torch.maximum(kept, lo), hi) - lo
    return image[:, y1:y2, x1:x2], kept, labels[keep], difficult[keep]


# --------------------------------------------------------------------------------------------
# Flip, resize, normalize
# --------------------------------------------------------------------------------------------
def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror ``[3, H, W]`` left-right; boxes ``[G, 4]`` xyxy px: ``x -> W - x``."""
    width = image.shape[2]
    flipped = torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)
    return image.flip(2), flipped


def resize_image(image: Tensor, size: int) -> Tensor:
    """Bilinear resize of ``[3, H, W]`` (uint8 or float) to ``[3, size, size]``, same dtype.

    The aspect ratio is not kept (SSD warps).  Caffe SSD: OpenCV's linear warp on 8-bit images,
    no antialiasing; torch's uint8 bilinear does the same and is several times faster than float.
    """
    if image.shape[1:] == (size, size):
        return image
    try:
        return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]  # [3, S, S]
    except RuntimeError:  # an older torch without uint8 bilinear: go through float
        out = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]
        return out.round_().clamp_(0, 255).to(image.dtype) if image.dtype == torch.uint8 else out


def _bilinear_taps(in_size: int, out_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The two source indices ``[out]`` and the weight of the second ``[out]`` that
    ``F.interpolate(mode="bilinear", align_corners=False)`` uses along one axis of length ``in_size``.

    Output pixel j samples x = (j + 0.5) in/out - 0.5, clamped to >= 0; it mixes pixels floor(x)
    and floor(x) + 1 (both clamped to the last pixel) with weights 1 - t and t, t = x - floor(x).
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size  # in float32, as torch does
    x = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0.0)
    first = x.floor().clamp(max=in_size - 1)
    weight = (x - first).clamp(0.0, 1.0)  # [out]
    first = first.long()
    return first, (first + 1).clamp(max=in_size - 1), weight


def _read_positions(taps: tuple[Tensor, Tensor], offset: int, length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Which of a part's ``length`` rows (or columns) the bilinear taps read, and where each tap reads.

    ``taps``: canvas indices ``[S]`` twice; the part starts at canvas index ``offset``.  Returns
    ``(kept, first, second)``: the part indices read, sorted ``[K]``, and for each tap its index
    into those K framed by one pixel of fill: 0 before the part, K + 1 after it.
    """
    inside = [tap - offset for tap in taps]  # part indices, outside [0, length) for the fill
    kept = torch.cat(inside).unique()
    kept = kept[(kept >= 0) & (kept < length)]  # [K]
    frame_index = [
        torch.where(t < 0, 0, torch.where(t >= length, len(kept) + 1, torch.searchsorted(kept, t) + 1)) for t in inside
    ]
    return kept, frame_index[0], frame_index[1]


def _resize_pasted(
    part: Tensor,
    offset: tuple[int, int],
    canvas: tuple[int, int],
    size: int,
    distort: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Bilinear resize to ``[3, size, size]`` of a mean-filled canvas ``(width, height)`` with ``part``
    (uint8 ``[3, h, w]``, after ``distort``) pasted at ``offset = (x, y)``, without building the
    canvas; uint8 out.

    Why: with zoom-out, the crop of the canvas can be 16x the image's area, almost all of it fill,
    and building it and resizing it was the largest cost of a DataLoader worker.  Bilinear
    resizing is separable and reads only two source rows per output row and two source columns
    per output column, so those rows and columns of ``part`` are gathered, framed by one pixel of
    fill that every canvas index outside the part reads.  ``distort`` (a per-pixel map, uint8 to
    uint8: the photometric distortion) is applied to the gathered pixels only -- the same result
    as distorting the whole part first, on a fraction of the pixels when the part shrinks.  The
    same arithmetic as ``F.interpolate`` on the built canvas (a test checks it, up to 1 of 255
    from rounding).
    """
    (x, y), (width, height) = offset, canvas
    top, bottom, row_weight = _bilinear_taps(height, size)  # canvas rows, [S] each
    left, right, col_weight = _bilinear_taps(width, size)  # canvas columns, [S] each
    rows, top, bottom = _read_positions((top, bottom), y, part.shape[1])
    cols, left, right = _read_positions((left, right), x, part.shape[2])
    # Gathered as H x W x 3, the decoder's layout: a pixel's three bytes move together (4x faster).
    read = part.permute(1, 2, 0).index_select(0, rows).index_select(1, cols).permute(2, 0, 1)  # [3, R, C] uint8
    if distort is not None:
        read = distort(read)
    framed = _mean_pixel(torch.uint8).float().expand(3, len(rows) + 2, len(cols) + 2).clone()  # [3, R + 2, C + 2]
    framed[:, 1:-1, 1:-1] = read
    mixed = framed.index_select(1, top).lerp_(framed.index_select(1, bottom), row_weight[:, None])  # [3, S, C + 2]
    # torch.gather: several times faster than index_select along the last dimension on a CPU.
    left, right = left.expand(3, size, size), right.expand(3, size, size)
    out = mixed.gather(2, left).lerp_(mixed.gather(2, right), col_weight)  # [3, S, S]
    return out.round_().to(torch.uint8)


@functools.lru_cache(maxsize=8)
def _normalization_constants(device: torch.device) -> tuple[Tensor, Tensor]:
    """ImageNet mean and std ``[3, 1, 1]`` on ``device``, made once: building them from Python
    lists every batch would be a host->device copy that waits for the host."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).reshape(3, 1, 1)  # [3, 1, 1]
    std = torch.tensor(IMAGENET_STD, device=device).reshape(3, 1, 1)  # [3, 1, 1]
    return mean, std


def normalize(image: Tensor) -> Tensor:
    """``[..., 3, H, W]`` in [0, 255] (uint8 or float) -> float ``(x / 255 - mean) / std`` (ImageNet)."""
    mean, std = _normalization_constants(image.device)
    return (image.float() / 255.0 - mean) / std


def denormalize(image: Tensor) -> Tensor:
    """Undo :func:`normalize` for display: ``[..., 3, H, W]`` -> float in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).reshape(3, 1, 1)  # [3, 1, 1]
    std = torch.tensor(IMAGENET_STD, device=image.device).reshape(3, 1, 1)  # [3, 1, 1]
    return (image * std + mean).clamp(0.0, 1.0)


def to_normalized_boxes(boxes: Tensor, width: int, height: int) -> Tensor:
    """Pixel xyxy ``[G, 4]`` -> normalized xyxy ``[G, 4]``, clamped to [0, 1]."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
    return (boxes.float() / scale).clamp_(0.0, 1.0)


RESIZE_MODES = ("uint8", "float")


@dataclass(frozen=True)
class InputTransform:
    """What a network wants from a raw image: uint8 ``[3, H, W]`` (or ``[1, H, W]`` grey) ->
    float ``[3, size, size]``, resized bilinearly (aspect ratio not kept) and ImageNet-normalized.

    ``resize="uint8"``: the resize runs on whole grey levels, as Caffe SSD's OpenCV warp of
    8-bit images and this package's training do.  ``"float"``: on the float image, as
    torchvision's ``GeneralizedRCNNTransform`` does for its ``ssd300_vgg16``; weights trained
    that way give their authors' detections only when run that way.  Each model carries its
    own (``model.input_transform``), so that ``Predictor(model)`` feeds it what it was trained on.
    """

    size: int = 300
    resize: str = "uint8"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"InputTransform.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"InputTransform.size must be a positive integer, got {self.size}")

    def __call__(self, image: Tensor) -> Tensor:
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
            shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"an image must be a uint8 tensor [3, H, W] (or [1, H, W]), got {shape}")
        if image.dtype != torch.uint8:
            raise TypeError(f"an image must be uint8 (0..255), got {image.dtype}")
        x = image.expand(3, -1, -1).contiguous()  # [3, H, W] uint8; grey -> 3 channels
        if self.resize == "float":
            x = x.float()  # bilinear is linear: resizing before normalizing is the same map
        return normalize(resize_image(x, self.size))  # [3, S, S] float


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
class SSDAugmentation:
    """``(image uint8 [3, H, W], target) -> (float [3, size, size] normalized, target)``.

    ``target`` holds ``boxes`` ``[G, 4]`` xyxy px, ``labels`` ``[G]``, optionally ``difficult``
    ``[G]`` (and anything else, passed through); the output has normalized xyxy boxes, never
    degenerate, with labels and difficult filtered alike.  ``train=False``: resize + normalize
    only.  Randomness comes from ``generator`` (call argument) or else torch's global RNG, which
    DataLoader seeds differently in every worker.

    Cheaper order, same result: all random parameters are drawn first (in the released order),
    then the photometric distortion is applied only to the part of the original image that
    survives the crop (when the crop is mostly fill, only to the pixels the resize reads, and the
    canvas is never built: see ``_resize_pasted``), and the flip is done after the resize, on the
    small image.  Per-pixel operations commute with cropping, the canvas fill is never distorted
    (nor is it in the released order), and a left-right flip commutes with a bilinear resize, so
    the output equals the straightforward order photometric -> zoom out -> crop -> flip -> resize
    (a test checks it, up to 1/255 from rounding).  The distortion is
    not moved after the resize: bilinear interpolation does not commute with clamping and the
    HSV round trip.  Images stay 8-bit until the final normalization, as in Caffe SSD.

    ``normalize=False`` returns the uint8 ``[3, size, size]`` image instead, for the caller to
    normalize (:func:`normalize`): the Trainer's DataLoader workers do this, so a batch crosses
    from the workers and to the GPU in a quarter of the bytes, and the GPU normalizes it.
    """

    def __init__(
        self, size: int = 300, train: bool = True, channel_swap_prob: float = 0.0, *, normalize: bool = True
    ) -> None:
        self.size = size
        self.train = train
        self.channel_swap_prob = channel_swap_prob
        self.normalize = normalize

    def __repr__(self) -> str:
        return (
            f"SSDAugmentation(size={self.size}, train={self.train}, channel_swap_prob={self.channel_swap_prob}, "
            f"normalize={self.normalize})"
        )

    def __call__(
        self, image: Tensor, target: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            got = f"{image.dtype} {list(image.shape)}" if isinstance(image, Tensor) else type(image).__name__
            raise TypeError(f"SSDAugmentation expects a uint8 [3, H, W] image, got {got}")
        boxes = target["boxes"].float().reshape(-1, 4)  # [G, 4] xyxy px
        labels = target["labels"]
        difficult = target.get("difficult", torch.zeros(len(labels), dtype=torch.bool))
        if not len(boxes) == len(labels) == len(difficult):
            raise ValueError(
                f"target of {target.get('image_id', '?')}: {len(boxes)} boxes, {len(labels)} labels, "
                f"{len(difficult)} difficult flags"
            )
        height, width = image.shape[1:]
        if self.train:
            out, boxes, labels, difficult = self._train(image, boxes, labels, difficult, generator)
        else:
            out = resize_image(image, self.size)  # [3, S, S] uint8
            boxes = to_normalized_boxes(boxes, width, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # positive area only
        new_target = dict(target)
        new_target.update(boxes=boxes[keep], labels=labels[keep], difficult=difficult[keep])
        return (normalize(out) if self.normalize else out), new_target

    def _train(
        self, image: Tensor, boxes: Tensor, labels: Tensor, difficult: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = image.shape[1:]
        # 1. Draw every random choice, in the released order.
        photo = sample_photometric(generator, channel_swap_prob=self.channel_swap_prob)
        zoom = sample_zoom_out(width, height, generator)
        if zoom is not None:
            boxes = boxes + torch.tensor([zoom.left, zoom.top, zoom.left, zoom.top], dtype=boxes.dtype)
            canvas_w, canvas_h, left, top = zoom.width, zoom.height, zoom.left, zoom.top
        else:
            canvas_w, canvas_h, left, top = width, height, 0, 0
        window, _ = sample_iou_crop(boxes, canvas_w, canvas_h, generator)
        flip = _rand(generator) < 0.5
        # 2. Boxes: crop (in canvas coordinates).
        cx1, cy1, cx2, cy2 = window if window is not None else (0, 0, canvas_w, canvas_h)
        _, boxes, labels, difficult = apply_crop(image[:, :0, :0], boxes, labels, difficult, window)
        # 3. Pixels: only the part of the original image inside the window gets distorted; it is
        #    rounded back to 8 bits (Caffe SSD works on 8-bit images throughout), pasted on the
        #    fill and resized.
        ox1, oy1 = max(cx1, left), max(cy1, top)  # overlap of window and image, canvas coords
        ox2, oy2 = min(cx2, left + width), min(cy2, top + height)
        part = image[:, oy1 - top : oy2 - top, ox1 - left : ox2 - left]  # [3, h, w] uint8

        def distort(pixels: Tensor) -> Tensor:  # uint8 -> uint8; all steps skipped: 1 draw in 16
            if photo == PhotometricParams():
                return pixels
            return apply_photometric(pixels.float(), photo).round_().to(torch.uint8)

        if (ox1, oy1, ox2, oy2) == (cx1, cy1, cx2, cy2):  # the window lies inside the image
            out = resize_image(distort(part), self.size)  # [3, S, S] uint8
        elif (cx2 - cx1) * (cy2 - cy1) > 2 * part.shape[1] * part.shape[2]:  # mostly fill: never built
            out = _resize_pasted(part, (ox1 - cx1, oy1 - cy1), (cx2 - cx1, cy2 - cy1), self.size, distort)
        else:  # a thin margin of fill: building it is cheaper
            crop = _mean_pixel(torch.uint8).expand(3, cy2 - cy1, cx2 - cx1).clone()  # [3, h', w']
            crop[:, oy1 - cy1 : oy2 - cy1, ox1 - cx1 : ox2 - cx1] = distort(part)
            out = resize_image(crop, self.size)  # [3, S, S] uint8
        boxes = to_normalized_boxes(boxes, cx2 - cx1, cy2 - cy1)
        if flip:  # flipping commutes with the resize, and is cheaper on the small image
            out, boxes = hflip(out, boxes * self.size)
            boxes = boxes / self.size
        return out, boxes, labels, difficult
