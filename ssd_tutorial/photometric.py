"""Photometric distortion: the paper's "photo-metric distortions" (p.6), as the released
Caffe SSD draws them.

Brightness, contrast, saturation and hue (and, optionally, a channel swap), split into
:func:`sample_photometric` (draw the random parameters from a ``torch.Generator``) and
:func:`apply_photometric` (deterministic), like every piece of
:mod:`ssd_tutorial.augmentation`, which runs them in its pipeline and re-exports every
name here.  Images are float ``[3, H, W]`` in [0, 255]; :func:`rgb_to_hsv` and
:func:`hsv_to_rgb` also take batches ``[..., 3, H, W]`` (the batched GPU pipeline,
:mod:`ssd_tutorial.gpu_augmentation`, uses them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
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
]

# Caffe SSD's photometric distortion (distort_param of ssd_pascal.py); the batched GPU
# pipeline (ssd_tutorial.gpu_augmentation) draws from these same numbers.
BRIGHTNESS_DELTA = 32.0  # add U(-32, 32) to every channel, on the 0..255 scale
CONTRAST_RANGE = (0.5, 1.5)  # multiply every channel by U(0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)  # multiply S (HSV) by U(0.5, 1.5)
# Caffe's hue_delta is 18 in OpenCV's 8-bit hue units (cvtColor to HSV on uint8: 180
# units a turn, im_transforms.cpp AdjustHue), so +-18 units is +-36 degrees.
# (ssd.pytorch adds 18 to OpenCV's float hue, which is in degrees: half Caffe's range.)
HUE_DELTA = 36.0  # add U(-36, 36) degrees to H
# The orders of the RGB channels a channel swap picks from (all but the identity).
CHANNEL_PERMUTATIONS: tuple[tuple[int, int, int], ...] = (
    (0, 2, 1),
    (1, 0, 2),
    (1, 2, 0),
    (2, 0, 1),
    (2, 1, 0),
)


def _rand(generator: torch.Generator | None) -> float:
    """One uniform draw in [0, 1)."""
    return float(torch.rand((), generator=generator))


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * _rand(generator)


# --------------------------------------------------------------------------------------
# Photometric distortion
# --------------------------------------------------------------------------------------
def rgb_to_hsv(image: Tensor) -> Tensor:
    """RGB float ``[..., 3, H, W]`` in [0, 255] -> HSV ``[..., 3, H, W]``: H in [0, 1),
    S in [0, 1], V in [0, 255].

    H and S are ratios, so any RGB scale works: V comes out on the scale that went in
    (the batched GPU pipeline passes ``[B, 3, H, W]``).  Written with arithmetic on
    masks rather than ``torch.where``/``gather``: several times faster on CPU.
    """
    r, g, b = image.unbind(-3)  # each [..., H, W]
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    # 1 where grey: the hue formulas give 0 there
    safe = delta + (delta == 0).to(image.dtype)
    is_r = (maxc == r).to(image.dtype)
    is_g = (maxc == g).to(image.dtype) * (1 - is_r)
    is_b = 1 - is_r - is_g
    hue = (is_r * (g - b) + is_g * (2 * delta + b - r) + is_b * (4 * delta + r - g)) / (
        6 * safe
    )
    hue = hue - torch.floor(hue)  # wrap to [0, 1)
    sat = delta / maxc.clamp_min(1e-12)
    return torch.stack((hue, sat, maxc), dim=-3)  # [..., 3, H, W]


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`: HSV ``[..., 3, H, W]`` -> RGB float ``[..., 3, H,
    W]`` on V's scale.

    Channel n of (R, G, B) = V - V S clamp(min(k, 4 - k), 0, 1) with k = (n + 6 H) mod 6
    and
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
    multiplies S; hue: added to H, in degrees; contrast_first: contrast before (True) or
    after the HSV steps; channel_order: a permutation of (0, 1, 2) or None.
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
    """Draw the distortion of the released Caffe SSD (``distort_param`` of
    ssd_pascal.py).

    Each of brightness (+-32), contrast (x0.5-1.5), saturation (x0.5-1.5) and hue (+-36
    deg) happens with probability 0.5; contrast goes before or after the HSV steps with
    equal odds (the "random order").  Caffe SSD: ``random_order_prob`` = 0, so channels
    are never swapped by default; ssd.pytorch swaps them with probability 0.5 (pass
    ``channel_swap_prob=0.5``).
    """
    brightness = (
        _uniform(generator, -brightness_delta, brightness_delta)
        if _rand(generator) < 0.5
        else None
    )
    contrast_first = _rand(generator) < 0.5
    contrast = _uniform(generator, *contrast_range) if _rand(generator) < 0.5 else None
    saturation = (
        _uniform(generator, *saturation_range) if _rand(generator) < 0.5 else None
    )
    hue = _uniform(generator, -hue_delta, hue_delta) if _rand(generator) < 0.5 else None
    order = None
    if _rand(generator) < channel_swap_prob:
        order = CHANNEL_PERMUTATIONS[
            int(torch.randint(len(CHANNEL_PERMUTATIONS), (), generator=generator))
        ]
    return PhotometricParams(
        brightness, contrast, contrast_first, saturation, hue, order
    )


def _adjust_saturation_hue(
    image: Tensor, saturation: float | None, hue: float | None
) -> Tensor:
    """Scale HSV saturation by ``saturation`` (capped at S = 1) and add ``hue`` degrees
    to H, in RGB.

    ``image`` float ``[3, H, W]`` in [0, 255] -> a new float ``[3, H, W]`` in [0, 255];
    the same numbers as the round trip ``rgb_to_hsv`` -> change S and H ->
    ``hsv_to_rgb`` (tests check it, and against colorsys/torchvision), several times
    faster, because it never builds the HSV image.  V = max and the spread max - min (=
    V S) are all that H and S leave:

    * saturation x k keeps V and H, so the spread becomes min(k spread, max);
    * the hue of a pixel is a position 6H in [0, 6) on the colour wheel, and its channel
      c is max - spread' (1 - p_c(6H)), where p_c is the fully saturated colour's
      channel, a triangle wave: p_R = clamp(|6H - 3| - 1, 0, 1), p_G = clamp(2 - |6H -
      2|, 0, 1),
      p_B = clamp(2 - |6H - 4|, 0, 1).

    Why this shape: every step is one pass over one plane with no boolean temporaries
    (on a CPU a comparison that makes a mask costs several times an add); this is most
    of a DataLoader worker's time.
    """
    maxc = image.amax(0)  # [H, W]
    spread = maxc - image.amin(0)  # [H, W]
    new_spread = (
        spread if saturation is None else torch.minimum(spread * saturation, maxc)
    )
    # c' = max - (max - c) spread' / spread; a grey pixel (spread 0) stays grey
    if hue is None:
        return (
            image.sub(maxc)
            .mul_(new_spread / spread.clamp_min(1e-12))
            .add_(maxc)
            .clamp_(0.0, 255.0)
        )
    r, g, b = image.unbind(0)  # each [H, W]
    # Which channel is the max (ties: R before G before B), as 0/1 floats: 1 - sign(max
    # - c).
    is_r = 1.0 - torch.sign(maxc - r)
    is_g = torch.sign(maxc - g).sub_(1.0).mul_(is_r - 1.0)
    is_b = 1.0 - is_r - is_g
    # 6H times the spread, sector by sector: (g - b), 2 spread + (b - r), 4 spread + (r
    # - g).
    wheel = (g - b).mul_(is_r)
    wheel.addcmul_(is_g, (b - r).add_(spread, alpha=2.0))
    wheel.addcmul_(is_b, (r - g).add_(spread, alpha=4.0))
    # 6H + shift (grey: H = 0)
    wheel.div_(spread + 1.0 - torch.sign(spread)).add_(hue / 60.0)
    wheel.sub_(torch.floor(wheel / 6.0).mul_(6.0))  # wrap into [0, 6)
    out = torch.empty_like(image)  # [3, H, W]: first 1 - p_c, then the channels
    torch.sub(wheel, 3.0, out=out[0]).abs_().neg_().add_(2.0)
    torch.sub(wheel, 2.0, out=out[1]).abs_().sub_(1.0)
    torch.sub(wheel, 4.0, out=out[2]).abs_().sub_(1.0)
    return out.clamp_(0.0, 1.0).mul_(new_spread).neg_().add_(maxc).clamp_(0.0, 255.0)


def apply_photometric(image: Tensor, params: PhotometricParams) -> Tensor:
    """Apply a drawn distortion to float ``[3, H, W]`` in [0, 255]; returns the same
    shape and range.

    Every step is per pixel, so it commutes with cropping and flipping (used by
    SSDAugmentation).  Values are clamped to [0, 255] after each step, as on Caffe's
    8-bit images.
    """
    out = image
    if params.brightness is not None:
        out = (out + params.brightness).clamp_(0.0, 255.0)

    def contrast(x: Tensor) -> Tensor:
        return (
            (x * params.contrast).clamp_(0.0, 255.0)
            if params.contrast is not None
            else x
        )

    if params.contrast_first:
        out = contrast(out)
    if params.saturation is not None or params.hue is not None:
        # Saturation then hue, in one pass (as rgb_to_hsv -> scale S, shift H ->
        # hsv_to_rgb), on planes: decoders hand out [3, H, W] views of H x W x 3 memory,
        # and arithmetic across the channels runs several times slower on that
        # interleaved layout than the copy costs.
        out = _adjust_saturation_hue(out.contiguous(), params.saturation, params.hue)
    if not params.contrast_first:
        out = contrast(out)
    if params.channel_order is not None:
        out = out[list(params.channel_order)]
    return out
