"""Boxes: the two formats SSD uses and how to compare them.

Formats (every function says which it takes):

* ``xyxy``   -- corners ``(x1, y1, x2, y2)``, with ``x1 <= x2`` and ``y1 <= y2``.
* ``cxcywh`` -- centre and size ``(cx, cy, w, h)``.

Boxes are float tensors of shape ``[..., 4]``.  Inside the model pipeline they are
normalized to ``[0, 1]`` by the image size; datasets hand out absolute pixels.  Nothing
here cares which, as long as both arguments of a comparison use the same units.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "check_boxes",
    "xyxy_to_cxcywh",
    "cxcywh_to_xyxy",
    "box_area",
    "clip_boxes",
    "box_intersection",
    "box_iou",
]


def check_boxes(
    boxes: Tensor, name: str = "boxes", *, require_ordered: bool = False
) -> None:
    """Raise a clear error unless ``boxes`` is a floating ``[..., 4]`` tensor.

    With ``require_ordered`` it also refuses ``xyxy`` boxes whose corners are reversed
    (``x2 < x1`` or ``y2 < y1``), naming the first offending row.
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {list(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {boxes.dtype}")
    if require_ordered:
        reversed_rows = (boxes[..., 2] < boxes[..., 0]) | (
            boxes[..., 3] < boxes[..., 1]
        )
        if bool(reversed_rows.any()):
            first = reversed_rows.reshape(-1).nonzero()[0].item()
            row = boxes.reshape(-1, 4)[first].tolist()
            raise ValueError(
                f"{name} row {first} is not a valid xyxy box (x2 < x1 or y2 < y1): "
                f"{row}"
            )


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Corners to centre/size.  ``[..., 4]`` xyxy -> ``[..., 4]`` cxcywh."""
    check_boxes(boxes)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Centre/size to corners.  ``[..., 4]`` cxcywh -> ``[..., 4]`` xyxy."""
    check_boxes(boxes)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes -> ``[...]``.

    A reversed box (x2 < x1 or y2 < y1) has area 0, not a negative one: it covers
    nothing.
    """
    check_boxes(boxes)
    w = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return w * h


def clip_boxes(boxes: Tensor, width: float = 1.0, height: float = 1.0) -> Tensor:
    """Clip ``[..., 4]`` xyxy boxes to the image ``[0, width] x [0, height]``.

    The defaults suit normalized boxes.  A box wholly outside the image becomes a
    zero-area box on the border; callers that must drop such boxes check ``box_area(...)
    > 0``.
    """
    check_boxes(boxes)
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def box_intersection(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection areas of xyxy boxes: ``a [N,4]``, ``b [M,4]`` -> ``[N,
    M]``."""
    check_boxes(a, "a")
    check_boxes(b, "b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(
            f"box_intersection takes [N,4] and [M,4], got {list(a.shape)} and "
            f"{list(b.shape)}"
        )
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    wh = (bottom_right - top_left).clamp(min=0)  # [N, M, 2]; disjoint boxes give 0
    return wh[..., 0] * wh[..., 1]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every pair: ``a [N,4]`` xyxy, ``b [M,4]`` xyxy ->
    ``[N, M]``.

    IoU = |a ∩ b| / (|a| + |b| - |a ∩ b|).  Two zero-area boxes have union 0; their IoU
    is defined as 0 (they overlap nothing), never NaN.  Reversed boxes count as
    zero-area.
    """
    inter = box_intersection(a, b)  # [N, M]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter  # [N, M]
    # where union is 0 the intersection is 0 too: 0 / 1 = 0 instead of 0 / 0 = NaN
    return inter / torch.where(union > 0, union, torch.ones_like(union))
