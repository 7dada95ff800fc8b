"""A synthetic detection set: shapes on textured backgrounds, drawn on the fly from a
seed.

:class:`ShapesDataset` hands out the same items as the datasets of
:mod:`ssd_tutorial.data` (which re-exports it): ``(image uint8 [3, S, S], target)`` with
``boxes`` float32 ``[G, 4]`` xyxy pixels, ``labels`` int64 ``[G]`` 1-based into
:data:`SHAPES_CLASSES`, ``difficult`` bool ``[G]`` and ``image_id``.  Item ``i`` of seed
``s`` is the same image on every machine, so the book's stored outputs and the tests can
rely on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssd_tutorial.boxes import box_area, box_intersection, box_iou

__all__ = ["SHAPES_CLASSES", "ShapesDataset"]

# ShapesDataset's classes; label k + 1 is SHAPES_CLASSES[k].
SHAPES_CLASSES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "ring", "cross")


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, param: float) -> np.ndarray:
    """Pixels of shape ``kind`` in a box; ``u``, ``v`` in [-1, 1] run across its
    width/height."""
    name = SHAPES_CLASSES[kind]
    if name == "ellipse":
        return u * u + v * v <= 1.0
    if name == "rectangle":
        return np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    if name == "triangle":  # apex at the top centre, base along the bottom edge
        return np.abs(u) <= (v + 1.0) / 2.0 + 1e-6
    if name == "ring":  # param = inner radius / outer radius
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= param * param)
    if name == "cross":  # param = half-thickness of each bar
        return (np.abs(u) <= param) | (np.abs(v) <= param)
    raise ValueError(f"unknown shape kind {kind}")


def _overlap_ok(
    box: np.ndarray, placed: list[np.ndarray], max_iou: float, max_cover: float
) -> bool:
    """Limit overlaps: IoU <= max_iou and no box covered more than ``max_cover`` by the
    other.

    ``box`` and each of ``placed``: float32 ``[4]`` xyxy in whole pixels (so every area
    is exact in float32).  Cover = intersection / the smaller box's area.
    """
    if not placed:
        return True
    new = torch.from_numpy(box[None])  # [1, 4]
    old = torch.from_numpy(np.stack(placed))  # [K, 4]
    iou = box_iou(new, old)[0]  # [K]
    # [K] share of the smaller box
    cover = box_intersection(new, old)[0] / torch.minimum(box_area(new), box_area(old))
    return not bool(((iou > max_iou) | (cover > max_cover)).any())


class ShapesDataset(Dataset):
    """Synthetic detection images, generated on the fly and deterministic by ``(seed,
    index)``.

    Each image (uint8 ``[3, S, S]``, ``S = image_size``) has a textured, noisy
    background (a colour gradient with blocky and fine noise, plus a few clutter bars)
    and 1 to 6 objects of the classes in ``SHAPES_CLASSES``, 15 to 200 px on a side at
    ``S = 300`` (scaled with ``S``), aspect ratio 1/2 to 2, in random colours.  Objects
    may overlap, but by at most 0.3 IoU, and none is hidden more than half by another.
    Boxes are tight xyxy pixel coordinates (pixel edges: a shape covering columns 10..19
    has x1 = 10, x2 = 20); labels are 1-based; ``difficult`` is all False.  Items are
    independent, so DataLoader workers can share it.
    """

    min_objects, max_objects = 1, 6
    min_size, max_size = 15.0, 200.0  # px at image_size 300

    def __init__(
        self,
        num_images: int,
        image_size: int = 300,
        seed: int = 0,
        transform: Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]]
        | None = None,  # data.Transform
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32 px, got {image_size}")
        if (
            isinstance(seed, bool)
            or not isinstance(seed, (int, np.integer))
            or seed < 0
        ):
            # numpy's generator takes only non-negative integers; say so now, not at the
            # first item
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.transform = transform

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(
        self, index: int
    ) -> tuple[Tensor, dict[str, Any]]:  # (image, data.Target)
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index = index % self.num_images
        image, boxes, labels = self.generate(index)
        target = {
            "boxes": torch.from_numpy(boxes),  # [G, 4] xyxy px
            "labels": torch.from_numpy(labels),  # [G] 1-based
            "difficult": torch.zeros(len(labels), dtype=torch.bool),
            "image_id": f"shapes_{self.seed}_{index:06d}",
        }
        # [H, W, 3] -> [3, H, W]
        image = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw image ``index``: (uint8 ``[S, S, 3]``, float32 ``[G, 4]`` xyxy px, int64
        ``[G]``)."""
        rng = np.random.default_rng([self.seed, index])
        s = self.image_size
        image = self._background(rng, s)  # [S, S, 3] int16
        scale = s / 300.0
        boxes: list[np.ndarray] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            for _attempt in range(20):
                size = (
                    math.exp(
                        rng.uniform(math.log(self.min_size), math.log(self.max_size))
                    )
                    * scale
                )
                ratio = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # w / h
                w = int(min(s, max(4, round(size * math.sqrt(ratio)))))
                h = int(min(s, max(4, round(size / math.sqrt(ratio)))))
                x1 = int(rng.integers(0, s - w + 1))
                y1 = int(rng.integers(0, s - h + 1))
                box = np.array([x1, y1, x1 + w, y1 + h], dtype=np.float32)
                if _overlap_ok(box, boxes, max_iou=0.3, max_cover=0.5):
                    break
            else:
                continue  # no room for this object: draw fewer
            kind = int(rng.integers(len(SHAPES_CLASSES)))
            self._draw(image, rng, kind, x1, y1, w, h)
            boxes.append(box)
            labels.append(kind + 1)
        # Fine per-pixel noise over everything (shapes too): a random crop of a noise
        # tile.
        tile = rng.integers(-12, 13, size=(64, 64, 1), dtype=np.int16)
        reps = s // 64 + 2
        oy, ox = rng.integers(0, 64, size=2)
        image += np.tile(tile, (reps, reps, 1))[oy : oy + s, ox : ox + s]
        np.clip(image, 0, 255, out=image)
        return (
            image.astype(np.uint8),
            np.stack(boxes).astype(np.float32)
            if boxes
            else np.zeros((0, 4), np.float32),
            np.asarray(labels, dtype=np.int64),
        )

    @staticmethod
    def _background(rng: np.random.Generator, s: int) -> np.ndarray:
        """Gradient between two random colours + blocky noise + clutter bars, int16
        ``[S, S, 3]``."""
        block = 4
        n = -(-s // block)  # cells per side (ceil)
        c0, c1 = rng.uniform(0, 255, size=(2, 3))
        angle = rng.uniform(0, 2 * math.pi)
        grid = np.arange(n, dtype=np.float32) / max(n - 1, 1)
        t = (
            np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None] + 1.5
        ) / 3.0  # [n, n]
        low = c0 + (c1 - c0) * t[..., None]  # [n, n, 3]
        low += rng.normal(0, rng.uniform(5, 30), size=(n, n, 1))  # blocky texture
        # [S, S, 3]
        image = np.repeat(np.repeat(low.astype(np.int16), block, 0), block, 1)[:s, :s]
        image = np.ascontiguousarray(image)
        for _ in range(int(rng.integers(0, 4))):  # thin clutter bars, not objects
            colour = rng.integers(0, 256, size=3)
            pos, thick = int(rng.integers(0, s)), int(rng.integers(1, 4))
            if rng.random() < 0.5:
                image[pos : pos + thick, :] = colour
            else:
                image[:, pos : pos + thick] = colour
        return image

    @staticmethod
    def _draw(
        image: np.ndarray,
        rng: np.random.Generator,
        kind: int,
        x1: int,
        y1: int,
        w: int,
        h: int,
    ) -> None:
        """Paint shape ``kind`` filling the box ``[x1, x1 + w) x [y1, y1 + h)`` in
        place."""
        region = image[y1 : y1 + h, x1 : x1 + w]  # [h, w, 3] view
        u = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1)[None, :]  # [1, w]
        v = ((np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1)[:, None]  # [h, 1]
        param = (
            rng.uniform(0.45, 0.65)
            if SHAPES_CLASSES[kind] == "ring"
            else rng.uniform(0.2, 0.35)
        )
        mask = _shape_mask(kind, u, v, param)  # [h, w] bool
        # A colour that stands out from the background under it (most of the time).
        under = region[::8, ::8].reshape(-1, 3).mean(0)  # a sparse sample is enough
        colour = rng.integers(0, 256, size=3)
        for _ in range(3):
            if np.abs(colour - under).sum() >= 120:
                break
            colour = rng.integers(0, 256, size=3)
        shade = (v * rng.uniform(-40, 40)).astype(np.int16)  # [h, 1] vertical shading
        fill = colour[None, None, :] + shade[..., None]  # [h, 1, 3]
        np.copyto(region, fill, where=mask[..., None])
