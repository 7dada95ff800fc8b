"""COCO format (what labelling tools export): :class:`COCODataset` reads a COCO-format
JSON, :func:`write_coco_json` writes one.

Items are those of every dataset of :mod:`ssd_tutorial.data` (see its docstring), which
re-exports these names.  The item types (``Target``, ``Transform``) and the checks every
dataset's items go through (boxes inside the image, errors naming the file) are defined
here, below :mod:`ssd_tutorial.data`, whose ``VOCDataset`` uses them too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssd_tutorial.imageio import read_image, write_jpeg

__all__ = ["Target", "Transform", "COCODataset", "write_coco_json"]

# --------------------------------------------------------------------------------------
# What every dataset hands out, and its checks (data.VOCDataset uses them too)
# --------------------------------------------------------------------------------------
Target = dict[str, Any]
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


def _check_inside(boxes: Tensor, width: int, height: int, where: Path) -> None:
    """Boxes must lie inside the image: ``0 <= x1 < x2 <= W`` (1-based devkit numbers
    reach W)."""
    for (
        box
    ) in boxes.tolist():  # a few boxes: plain Python is cheaper than tensor ops here
        x1, y1, x2, y2 = box
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(
                f"{where}: box {box} (xyxy) lies outside the {width}x{height} image"
            )


def _with_file(error: Exception, path: Path) -> Exception:
    """``error`` again, its message prefixed with ``path``: the same type where it can
    be rebuilt from a message (most can), else a RuntimeError naming the original
    type."""
    message = f"{path}: {error}"
    try:
        return type(error)(message)
    except Exception:
        return RuntimeError(f"{path}: {type(error).__name__}: {error}")


# --------------------------------------------------------------------------------------
# COCO format (what labelling tools export)
# --------------------------------------------------------------------------------------
def _json_records(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    records = data.get(key, [] if key == "annotations" else None)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: {key!r} must be a list of objects (COCO format)")
    return records


def _read_coco_json(path: Path) -> dict[str, Any]:
    """The parsed JSON object of a COCO file; ValueError naming ``path`` if it does not
    parse or is not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object with images, annotations, categories"
        )
    return data


def _category_names(data: dict[str, Any], path: Path) -> dict[int, str]:
    """``{category id: name}`` of the file's ``categories``, in id order; ValueError
    for a category without an integer id or a name, or a name used twice."""
    categories = sorted(
        _json_records(data, "categories", path), key=lambda c: c.get("id", 0)
    )
    try:
        by_id = {int(c["id"]): str(c["name"]) for c in categories}
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: every category needs an integer 'id' and a 'name' ({err})"
        ) from None
    if len(set(by_id.values())) != len(by_id):
        raise ValueError(f"{path}: category names repeat: {sorted(by_id.values())}")
    return by_id


def _chosen_category_ids(
    by_id: dict[int, str], class_names: Sequence[str] | None, path: Path
) -> tuple[int, ...]:
    """The category ids in label order: every category by id, or those of
    ``class_names`` in its order (ValueError for a name the file does not have)."""
    if class_names is None:
        return tuple(by_id)
    id_of = {name: cid for cid, name in by_id.items()}
    missing = [name for name in class_names if name not in id_of]
    if missing:
        raise ValueError(
            f"{path}: classes {missing} are not among its categories {sorted(id_of)}"
        )
    return tuple(id_of[name] for name in class_names)


def _image_records(
    data: dict[str, Any], path: Path
) -> tuple[list[dict[str, Any]], dict[Any, int]]:
    """The file's ``images`` records and ``{image id: position}``; ValueError for a
    record without an ``id`` or a string ``file_name``, or an id listed twice."""
    images: list[dict[str, Any]] = []
    index_of: dict[Any, int] = {}
    for record in _json_records(data, "images", path):
        if "id" not in record or not isinstance(record.get("file_name"), str):
            raise ValueError(
                f"{path}: every image needs an 'id' and a 'file_name', got {record}"
            )
        if record["id"] in index_of:
            raise ValueError(f"{path}: image id {record['id']} is listed twice")
        index_of[record["id"]] = len(images)
        images.append(record)
    return images, index_of


def _is_coco_box(box: Any) -> bool:
    """Whether ``box`` is a COCO ``bbox``: ``[x, y, w, h]`` of finite numbers, w and h
    > 0."""
    ok = (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) for v in box)
    )
    if not ok:  # the checks below need four numbers
        return False
    return all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0


class COCODataset(Dataset):
    """A COCO-format annotation file: ``{"images": [...], "annotations": [...],
    "categories": [...]}``.

    Items are the same as :class:`VOCDataset`'s: ``(image uint8 [3, H, W], target)``
    with ``boxes`` xyxy in pixels, read from COCO's ``bbox = [x, y, w, h]`` as ``(x, y,
    x + w, y + h)``; ``image_id`` is the file name without its extension (as VOC's ids
    are), and ``difficult`` is COCO's ``iscrowd`` (a crowd region is neither a hit nor a
    miss in the VOC evaluation, as in COCO's own).

    Labels are 1-based positions in ``categories`` sorted by id, so COCO's
    non-contiguous ids (1..90 with gaps) become 1..C; ``category_ids[label - 1]`` maps a
    label back. ``class_names`` may be given to fix the order (names must all be in the
    file).  Image files are ``images_dir / file_name``, ``images_dir`` defaulting to the
    JSON's folder.

    The file is checked as it is read: annotations for an image that is not listed, of
    an unknown category, or with a box of zero or negative size are collected in
    :attr:`problems` (messages naming the file and the annotation id) and left out; the
    item of such an image raises.  A JSON that does not parse or lacks the COCO keys
    raises ``ValueError`` at once.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        images_dir: str | Path | None = None,
        transform: Transform | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.annotation_file = path = Path(annotation_file)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path}")
        self.images_dir = Path(images_dir) if images_dir is not None else path.parent
        self.transform = transform
        data = _read_coco_json(path)
        by_id = _category_names(data, path)
        self.category_ids = _chosen_category_ids(by_id, class_names, path)
        self.class_names = tuple(by_id[cid] for cid in self.category_ids)
        self.images, index_of = _image_records(data, path)
        self.ids = [Path(record["file_name"]).stem for record in self.images]
        self.problems: list[str] = []
        self._objects: list[list[tuple[list[float], int, bool]]] = [
            [] for _ in self.images
        ]
        self._bad: dict[int, str] = {}
        self._place_annotations(
            _json_records(data, "annotations", path), index_of, by_id, class_names
        )

    def _place_annotations(
        self,
        annotations: list[dict[str, Any]],
        index_of: dict[Any, int],
        by_id: dict[int, str],
        class_names: Sequence[str] | None,
    ) -> None:
        """Put each annotation's ``(box xyxy px, label, crowd)`` in its image's
        :attr:`_objects`, or its problem in :attr:`problems` (and, for a listed image,
        in :attr:`_bad`, so that the item raises).  Annotations of a category left out
        by ``class_names`` are dropped without a word."""
        path = self.annotation_file
        label_of = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        for ann in annotations:
            where = f"{path}: annotation {ann.get('id', '?')}"
            if ann.get("image_id") not in index_of:
                self.problems.append(
                    f"{where} is for image id {ann.get('image_id')!r}, which is not "
                    "listed"
                )
                continue
            index = index_of[ann["image_id"]]
            if ann.get("category_id") not in label_of:
                message = (
                    f"{where}: unknown category id {ann.get('category_id')!r} (known: "
                    f"{sorted(label_of)})"
                )
                if class_names is not None and ann.get("category_id") in by_id:
                    continue  # a category left out on purpose by class_names
                self._bad[index] = message
                self.problems.append(message)
                continue
            box = ann.get("bbox")
            if not _is_coco_box(box):
                message = f"{where}: bbox {box} is not [x, y, w, h] with w, h > 0"
                self._bad[index] = message
                self.problems.append(message)
                continue
            x, y, w, h = (float(v) for v in box)
            self._objects[index].append(
                (
                    [x, y, x + w, y + h],
                    label_of[ann["category_id"]],
                    bool(ann.get("iscrowd", 0)),
                )
            )

    def __len__(self) -> int:
        return len(self.images)

    def image_file(self, index: int) -> Path:
        return self.images_dir / self.images[index]["file_name"]

    def annotation(self, index: int) -> dict[str, Any]:
        """The objects of item ``index`` without its image: boxes ``[G, 4]`` xyxy px,
        labels, difficult."""
        objects = self._objects[index]
        return {
            # [G, 4]
            "boxes": torch.tensor([o[0] for o in objects], dtype=torch.float32).reshape(
                -1, 4
            ),
            "labels": torch.tensor([o[1] for o in objects], dtype=torch.int64),
            "difficult": torch.tensor([o[2] for o in objects], dtype=torch.bool),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_file = self.image_file(index)
        try:
            if index in self._bad:
                raise ValueError(self._bad[index])
            image = read_image(image_file)  # [3, H, W] uint8
            target = {**self.annotation(index), "image_id": self.ids[index]}
            _check_inside(
                target["boxes"], image.shape[2], image.shape[1], self.annotation_file
            )
            if self.transform is not None:
                image, target = self.transform(image, target)
        except (
            Exception
        ) as error:  # the message must say which file, as VOCDataset's do
            if str(image_file) in str(error) or str(self.annotation_file) in str(error):
                raise
            raise _with_file(error, image_file) from error
        return image, target


def write_coco_json(
    dataset: Dataset,
    out_file: str | Path,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    images_dir: str | Path | None = None,
    quality: int = 90,
) -> Path:
    """Write a dataset's items as a COCO-format JSON (and, with ``images_dir``, their
    JPEGs).

    ``bbox`` is ``[x1, y1, x2 - x1, y2 - y1]`` of each item's xyxy pixel boxes, so
    :class:`COCODataset` reads back exactly the boxes the dataset gave.  (From a
    :class:`VOCDataset`, whose boxes are the devkit's 1-based numbers, that keeps those
    numbers; from :class:`ShapesDataset`, the shapes' pixel edges.)  ``category_ids``
    default to 1..C. ``file_name`` is ``<image_id>.jpg`` with the path from the JSON's
    folder to ``images_dir`` (``images/x.jpg``), so that the JSON alone finds its
    images; without ``images_dir``, the bare name (the images are said to be beside the
    JSON, or in a folder given when reading).
    """
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    ids = (
        list(category_ids)
        if category_ids is not None
        else list(range(1, len(class_names) + 1))
    )
    if len(ids) != len(class_names):
        raise ValueError(f"{len(ids)} category ids for {len(class_names)} class names")
    if images_dir is not None:
        Path(images_dir).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        name = f"{target['image_id']}.jpg"
        if images_dir is not None:
            write_jpeg(image, Path(images_dir) / name, quality=quality)
            name = Path(
                os.path.relpath(Path(images_dir) / name, out_file.parent)
            ).as_posix()
        images.append(
            {
                "id": index + 1,
                "file_name": name,
                "height": int(image.shape[1]),
                "width": int(image.shape[2]),
            }
        )
        for box, label, crowd in zip(
            target["boxes"].tolist(),
            target["labels"].tolist(),
            target["difficult"].tolist(),
        ):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": ids[int(label) - 1],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(crowd),
                }
            )
    categories = [{"id": cid, "name": name} for cid, name in zip(ids, class_names)]
    out_file.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}
        )
        + "\n"
    )
    return out_file
