"""Preprocessing: the resize and the ImageNet normalization between a raw image and the
network.

:class:`InputTransform` is what a model wants from a raw uint8 image (each model carries
its own); :func:`resize_image` and :func:`normalize` are its steps, which the training
pipeline (:class:`ssd_tutorial.augmentation.SSDAugmentation`) shares,
:func:`denormalize` undoes the normalization for display, and ``_resize_pasted`` is the
pipeline's resize of an image pasted on a mean-filled canvas, without building the
canvas.  :mod:`ssd_tutorial.augmentation` re-exports these names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "resize_image",
    "normalize",
    "denormalize",
    "RESIZE_MODES",
    "InputTransform",
]

# ImageNet statistics (RGB, images in [0, 1]) that torchvision's VGG16 weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _mean_pixel(
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """The fill colour of zoom-out: ImageNet mean in [0, 255] (rounded for uint8), ``[3,
    1, 1]``.

    Caffe SSD: fills with its mean pixel (104, 117, 123) BGR, the same colour; after
    normalization it becomes 0.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=device).mul(255.0)
    if dtype == torch.uint8:
        mean = mean.round()
    return mean.to(dtype).reshape(3, 1, 1)  # [3, 1, 1]


def resize_image(image: Tensor, size: int) -> Tensor:
    """Bilinear resize of ``[3, H, W]`` (uint8 or float) to ``[3, size, size]``, same
    dtype.

    The aspect ratio is not kept (SSD warps).  Caffe SSD: OpenCV's linear warp on 8-bit
    images, no antialiasing; torch's uint8 bilinear does the same and is several times
    faster than float.
    """
    if image.shape[1:] == (size, size):
        return image
    try:
        return F.interpolate(
            image[None], size=(size, size), mode="bilinear", align_corners=False
        )[0]  # [3, S, S]
    except RuntimeError:  # an older torch without uint8 bilinear: go through float
        out = F.interpolate(
            image[None].float(), size=(size, size), mode="bilinear", align_corners=False
        )[0]
        return (
            out.round_().clamp_(0, 255).to(image.dtype)
            if image.dtype == torch.uint8
            else out
        )


def _bilinear_taps(in_size: int, out_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The two source indices ``[out]`` and the weight of the second ``[out]`` that
    ``F.interpolate(mode="bilinear", align_corners=False)`` uses along one axis of
    length ``in_size``.

    Output pixel j samples x = (j + 0.5) in/out - 0.5, clamped to >= 0; it mixes pixels
    floor(x) and floor(x) + 1 (both clamped to the last pixel) with weights 1 - t and t,
    t = x - floor(x).
    """
    # in float32, as torch does
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    x = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(
        0.0
    )
    first = x.floor().clamp(max=in_size - 1)
    weight = (x - first).clamp(0.0, 1.0)  # [out]
    first = first.long()
    return first, (first + 1).clamp(max=in_size - 1), weight


def _read_positions(
    taps: tuple[Tensor, Tensor], offset: int, length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Which of a part's ``length`` rows (or columns) the bilinear taps read, and where
    each tap reads.

    ``taps``: canvas indices ``[S]`` twice; the part starts at canvas index ``offset``.
    Returns ``(kept, first, second)``: the part indices read, sorted ``[K]``, and for
    each tap its index into those K framed by one pixel of fill: 0 before the part, K +
    1 after it.
    """
    # part indices, outside [0, length) for the fill
    inside = [tap - offset for tap in taps]
    kept = torch.cat(inside).unique()
    kept = kept[(kept >= 0) & (kept < length)]  # [K]
    frame_index = [
        torch.where(
            t < 0,
            0,
            torch.where(t >= length, len(kept) + 1, torch.searchsorted(kept, t) + 1),
        )
        for t in inside
    ]
    return kept, frame_index[0], frame_index[1]


def _resize_pasted(
    part: Tensor,
    offset: tuple[int, int],
    canvas: tuple[int, int],
    size: int,
    distort: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Bilinear resize to ``[3, size, size]`` of a mean-filled canvas ``(width,
    height)`` with ``part`` (uint8 ``[3, h, w]``, after ``distort``) pasted at ``offset
    = (x, y)``, without building the canvas; uint8 out.

    Why: with zoom-out, the crop of the canvas can be 16x the image's area, almost all
    of it fill, and building it and resizing it was the largest cost of a DataLoader
    worker.  Bilinear resizing is separable and reads only two source rows per output
    row and two source columns per output column, so those rows and columns of ``part``
    are gathered, framed by one pixel of fill that every canvas index outside the part
    reads.  ``distort`` (a per-pixel map, uint8 to uint8: the photometric distortion) is
    applied to the gathered pixels only -- the same result as distorting the whole part
    first, on a fraction of the pixels when the part shrinks.  The same arithmetic as
    ``F.interpolate`` on the built canvas (a test checks it, up to 1 of 255 from
    rounding).
    """
    (x, y), (width, height) = offset, canvas
    top, bottom, row_weight = _bilinear_taps(height, size)  # canvas rows, [S] each
    left, right, col_weight = _bilinear_taps(width, size)  # canvas columns, [S] each
    rows, top, bottom = _read_positions((top, bottom), y, part.shape[1])
    cols, left, right = _read_positions((left, right), x, part.shape[2])
    # Gathered as H x W x 3, the decoder's layout: a pixel's three bytes move together
    # (4x faster).
    # [3, R, C] uint8
    read = (
        part.permute(1, 2, 0)
        .index_select(0, rows)
        .index_select(1, cols)
        .permute(2, 0, 1)
    )
    if distort is not None:
        read = distort(read)
    # [3, R + 2, C + 2]
    framed = (
        _mean_pixel(torch.uint8).float().expand(3, len(rows) + 2, len(cols) + 2).clone()
    )
    framed[:, 1:-1, 1:-1] = read
    # [3, S, C + 2]
    mixed = framed.index_select(1, top).lerp_(
        framed.index_select(1, bottom), row_weight[:, None]
    )
    # torch.gather: several times faster than index_select along the last dimension on a
    # CPU.
    left, right = left.expand(3, size, size), right.expand(3, size, size)
    out = mixed.gather(2, left).lerp_(mixed.gather(2, right), col_weight)  # [3, S, S]
    return out.round_().to(torch.uint8)


@functools.lru_cache(maxsize=8)
def _normalization_constants(device: torch.device) -> tuple[Tensor, Tensor]:
    """ImageNet mean and std ``[3, 1, 1]`` on ``device``, made once: building them from
    Python lists every batch would be a host->device copy that waits for the host."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).reshape(3, 1, 1)  # [3, 1, 1]
    std = torch.tensor(IMAGENET_STD, device=device).reshape(3, 1, 1)  # [3, 1, 1]
    return mean, std


def normalize(image: Tensor) -> Tensor:
    """``[..., 3, H, W]`` in [0, 255] (uint8 or float) -> float ``(x / 255 - mean) /
    std`` (ImageNet)."""
    mean, std = _normalization_constants(image.device)
    return (image.float() / 255.0 - mean) / std


def denormalize(image: Tensor) -> Tensor:
    """Undo :func:`normalize` for display: ``[..., 3, H, W]`` -> float in [0, 1]."""
    # [3, 1, 1]
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).reshape(3, 1, 1)  # [3, 1, 1]
    return (image * std + mean).clamp(0.0, 1.0)


RESIZE_MODES = ("uint8", "float")


@dataclass(frozen=True)
class InputTransform:
    """What a network wants from a raw image: uint8 ``[3, H, W]`` (or ``[1, H, W]``
    grey) -> float ``[3, size, size]``, resized bilinearly (aspect ratio not kept) and
    ImageNet-normalized.

    ``resize="uint8"``: the resize runs on whole grey levels, as Caffe SSD's OpenCV warp
    of 8-bit images and this package's training do.  ``"float"``: on the float image, as
    torchvision's ``GeneralizedRCNNTransform`` does for its ``ssd300_vgg16``; weights
    trained that way give their authors' detections only when run that way.  Each model
    carries its own (``model.input_transform``), so that ``Predictor(model)`` feeds it
    what it was trained on.
    """

    size: int = 300
    resize: str = "uint8"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(
                f"InputTransform.resize must be one of {RESIZE_MODES}, got "
                f"{self.resize!r}"
            )
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(
                f"InputTransform.size must be a positive integer, got {self.size}"
            )

    def __call__(self, image: Tensor) -> Tensor:
        if (
            not isinstance(image, Tensor)
            or image.ndim != 3
            or image.shape[0] not in (1, 3)
        ):
            shape = (
                list(image.shape) if isinstance(image, Tensor) else type(image).__name__
            )
            raise ValueError(
                f"an image must be a uint8 tensor [3, H, W] (or [1, H, W]), got {shape}"
            )
        if image.dtype != torch.uint8:
            raise TypeError(f"an image must be uint8 (0..255), got {image.dtype}")
        x = image.expand(3, -1, -1).contiguous()  # [3, H, W] uint8; grey -> 3 channels
        if self.resize == "float":
            # bilinear is linear: resizing before normalizing is the same map
            x = x.float()
        return normalize(resize_image(x, self.size))  # [3, S, S] float
