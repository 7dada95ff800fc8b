"""Data: PASCAL VOC and COCO-format sets on disk, a synthetic shapes set made on the
fly, batching.

Every dataset here hands out the same item::

    image  uint8 [3, H, W] RGB
    target {"boxes": float32 [G, 4] xyxy in pixels,
            "labels": int64 [G] (1-based: VOC_CLASSES[k] has label k + 1),
            "difficult": bool [G],
            "image_id": str}

``transform(image, target) -> (image, target)`` (e.g.
:class:`ssd_tutorial.augmentation.SSDAugmentation`) is applied last when given.

Images are decoded by :mod:`ssd_tutorial.imageio`, COCO-format sets are read and written
by :mod:`ssd_tutorial.coco`, and the shapes set is drawn by :mod:`ssd_tutorial.shapes`;
their public names (``read_image``, ``COCODataset``, ``ShapesDataset``, ...) are
re-exported here, so ``from ssd_tutorial.data import ...`` finds every dataset-side
name.

Box convention for VOC
----------------------
VOC XML stores 1-based, inclusive pixel indices (``1 <= xmin < xmax <= width``).
``VOCDataset`` returns those numbers unchanged, as floats.  Read as continuous
coordinates they sit at most one pixel off (under 0.3 % of a 300 px input: no effect on
training); and the evaluation module applies the devkit's ``+1`` area convention to
these same raw numbers, so evaluating on what the dataset returns reproduces the VOC
devkit exactly.  (Common PyTorch ports subtract 1 from every coordinate; a shift of all
four changes no IoU, but our detections files are in raw devkit numbers, so we keep them
as they are.)
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import torch
from defusedxml import DefusedXmlException
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

# Re-exported: chapters, tests and scripts import these from here (their homes: coco,
# imageio, shapes).
from ssd_tutorial.coco import (
    COCODataset,
    Target,
    Transform,
    _check_inside,
    _with_file,
    write_coco_json,
)
from ssd_tutorial.imageio import (
    decode_jpegs,
    encode_jpeg,
    image_backend,
    image_header_size,
    read_image,
    write_jpeg,
)

# re-exported (chapter 07 shows _shape_mask's source)
from ssd_tutorial.shapes import SHAPES_CLASSES, ShapesDataset
from ssd_tutorial.shapes import _shape_mask as _shape_mask

__all__ = [
    "VOC_CLASSES",
    "SHAPES_CLASSES",
    "Target",
    "Transform",
    "image_backend",
    "read_image",
    "image_header_size",
    "encode_jpeg",
    "write_jpeg",
    "decode_jpegs",
    "parse_voc_xml",
    "VOCDataset",
    "COCODataset",
    "write_coco_json",
    "voc0712_trainval",
    "voc2007_test",
    "ShapesDataset",
    "detection_collate",
    "write_voc_split",
    "base_dataset",
]

# The 20 classes in the devkit's order; label k + 1 is VOC_CLASSES[k], 0 is background.
# fmt: skip
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


# --------------------------------------------------------------------------------------
# Reading annotations (images: ssd_tutorial.imageio)
# --------------------------------------------------------------------------------------
def _child_text(node: ET.Element, tag: str, xml_path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{xml_path}: <{node.tag}> has no <{tag}>")
    return child.text.strip()


def _child_number(node: ET.Element, tag: str, xml_path: Path) -> float:
    text = _child_text(node, tag, xml_path)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{xml_path}: <{tag}> is not a number: {text!r}") from None
    # float() reads "nan" and "inf", which no comparison below would catch
    if not math.isfinite(value):
        raise ValueError(f"{xml_path}: <{tag}> is not a finite number: {text!r}")
    return value


def parse_voc_xml(
    xml_path: str | Path, class_names: Sequence[str] = VOC_CLASSES
) -> dict[str, Any]:
    """Parse one VOC annotation with defusedxml (entity expansion and external entities
    refused).

    Returns ``{"width", "height", "boxes" float32 [G, 4] xyxy (raw 1-based devkit
    numbers), "labels" int64 [G] (1-based), "difficult" bool [G], "filename"}``;
    ``width``/``height`` are 0 when ``<size>`` is absent.  Raises ``ValueError`` naming
    the file for malformed XML, a forbidden construct, an unknown class or a
    reversed/empty box.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise FileNotFoundError(f"annotation file not found: {xml_path}")
    try:
        root = SafeET.parse(str(xml_path)).getroot()
    except DefusedXmlException as err:
        raise ValueError(
            f"{xml_path}: refused unsafe XML ({type(err).__name__}: {err})"
        ) from err
    except ET.ParseError as err:
        raise ValueError(f"{xml_path}: malformed XML ({err})") from err
    if root.tag != "annotation":
        raise ValueError(
            f"{xml_path}: root element is <{root.tag}>, expected <annotation>"
        )

    size = root.find("size")
    width = int(_child_number(size, "width", xml_path)) if size is not None else 0
    height = int(_child_number(size, "height", xml_path)) if size is not None else 0
    index = {name: k for k, name in enumerate(class_names)}
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _child_text(obj, "name", xml_path)
        if name not in index:
            raise ValueError(
                f"{xml_path}: unknown class {name!r} (known: {', '.join(class_names)})"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{xml_path}: object {name!r} has no <bndbox>")
        box = [
            _child_number(bndbox, tag, xml_path)
            for tag in ("xmin", "ymin", "xmax", "ymax")
        ]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(
                f"{xml_path}: object {name!r} has a reversed or empty box {box} (xyxy)"
            )
        flag = obj.find("difficult")
        boxes.append(box)
        labels.append(index[name] + 1)
        difficult.append(flag is not None and (flag.text or "0").strip() == "1")
    filename = root.findtext("filename", default="").strip()
    return {
        "width": width,
        "height": height,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),  # [G, 4]
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
        "filename": filename,
    }


# --------------------------------------------------------------------------------------
# VOC
# --------------------------------------------------------------------------------------
class VOCDataset(Dataset):
    """A PASCAL VOC year folder: ``root/JPEGImages``, ``root/Annotations``,
    ``root/ImageSets/Main``.

    ``split`` names ``ImageSets/Main/<split>.txt`` (one image id per line).  Items are
    ``(image uint8 [3, H, W], target)`` with boxes xyxy in (raw devkit) pixels, see the
    module docstring.  ``class_names`` defaults to the 20 VOC classes; any VOC-layout
    set with other names (e.g. one class) works by passing its own.  Annotations are
    read when an item is requested; errors name the file.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        transform: Transform | None = None,
        class_names: Sequence[str] = VOC_CLASSES,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.class_names = tuple(class_names)
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"split file not found: {split_file} (expected a VOC year folder with "
                "JPEGImages/, Annotations/ and ImageSets/Main/)"
            )
        self.ids = [
            line.split()[0]
            for line in split_file.read_text().splitlines()
            if line.strip()
        ]
        self._parsed: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def annotation(self, index: int) -> dict[str, Any]:
        """The parsed XML of item ``index`` (see :func:`parse_voc_xml`), without the
        image.

        Each XML is parsed once per process and kept (a few hundred bytes an image;
        parsing is about a tenth of a DataLoader worker's time per item, and training
        reads every file once an epoch).  Every call returns new tensors, so a transform
        may change them in place.
        """
        parsed = self._parsed.get(index)
        if parsed is None:
            parsed = parse_voc_xml(
                self.root / "Annotations" / f"{self.ids[index]}.xml", self.class_names
            )
            self._parsed[index] = parsed
        return {
            key: value.clone() if isinstance(value, Tensor) else value
            for key, value in parsed.items()
        }

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id = self.ids[index]
        image_file = self.root / "JPEGImages" / f"{image_id}.jpg"
        xml_file = self.root / "Annotations" / f"{image_id}.xml"
        try:
            ann = self.annotation(index)
            image = read_image(image_file)  # [3, H, W] uint8
            height, width = image.shape[1:]
            _check_inside(ann["boxes"], width, height, xml_file)
            target = {
                "boxes": ann["boxes"],
                "labels": ann["labels"],
                "difficult": ann["difficult"],
                "image_id": image_id,
            }
            if self.transform is not None:
                image, target = self.transform(image, target)
        except (
            Exception
        ) as error:  # deep in a DataLoader worker, the message must say which file
            if str(image_file) in str(error) or str(xml_file) in str(error):
                raise
            raise _with_file(error, image_file) from error
        return image, target


def _voc_year(root: str | Path, year: int) -> Path:
    """``root`` may be the folder holding ``VOCdevkit/`` or ``VOCdevkit/`` itself."""
    root = Path(root)
    for candidate in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no VOC{year} folder under {root} (looked for VOCdevkit/VOC{year} and "
        f"VOC{year}); run data_scripts/download_voc.py"
    )


def voc0712_trainval(
    root: str | Path, transform: Transform | None = None
) -> ConcatDataset:
    """VOC2007 trainval + VOC2012 trainval as one dataset (16 551 images), the paper's
    "07+12"."""
    return ConcatDataset(
        [
            VOCDataset(_voc_year(root, year), "trainval", transform)
            for year in (2007, 2012)
        ]
    )


def voc2007_test(root: str | Path, transform: Transform | None = None) -> VOCDataset:
    """VOC2007 test (4952 images): the paper's evaluation set."""
    return VOCDataset(_voc_year(root, 2007), "test", transform)


def write_voc_split(
    dataset: Dataset,
    root: str | Path,
    split: str = "train",
    class_names: Sequence[str] = SHAPES_CLASSES,
    quality: int = 90,
) -> Path:
    """Write a dataset's items to ``root`` in VOC layout: JPEG + XML +
    ``ImageSets/Main/<split>.txt``.

    Items must be untransformed ``(uint8 [3, H, W], target)`` with pixel-edge xyxy boxes
    (as :class:`ShapesDataset` gives).  Boxes are written as the devkit writes them,
    1-based and inclusive: a shape covering columns 10..19 (x1 = 10, x2 = 20) becomes
    ``<xmin>11</xmin> <xmax>20</xmax>``; reading back with :class:`VOCDataset` therefore
    gives x1 + 1, y1 + 1.
    Returns ``root``; existing files of the same ids are overwritten, the split file
    appended to.
    """
    root = Path(root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        image_id = str(target["image_id"])
        write_jpeg(image, root / "JPEGImages" / f"{image_id}.jpg", quality=quality)
        ann = ET.Element("annotation")
        ET.SubElement(ann, "folder").text = root.name
        ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
        size = ET.SubElement(ann, "size")
        for tag, value in zip(
            ("width", "height", "depth"), (image.shape[2], image.shape[1], 3)
        ):
            ET.SubElement(size, tag).text = str(int(value))
        ET.SubElement(ann, "segmented").text = "0"
        for box, label, hard in zip(
            target["boxes"].tolist(),
            target["labels"].tolist(),
            target["difficult"].tolist(),
        ):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = class_names[int(label) - 1]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = "1" if hard else "0"
            bndbox = ET.SubElement(obj, "bndbox")
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            for tag, value in zip(
                ("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2)
            ):
                ET.SubElement(bndbox, tag).text = str(value)
        ET.indent(ann, space="    ")
        ET.ElementTree(ann).write(
            root / "Annotations" / f"{image_id}.xml", encoding="unicode"
        )
        ids.append(image_id)
    with open(root / "ImageSets" / "Main" / f"{split}.txt", "a") as f:
        f.writelines(f"{image_id}\n" for image_id in ids)
    return root


# --------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------
def detection_collate(
    batch: Sequence[tuple[Tensor, Target]],
) -> tuple[Tensor, list[Target]]:
    """``[(image [3, H, W], target), ...]`` -> ``(images [B, 3, H, W], [target, ...])``.

    Images are stacked, so they must share one size (apply a transform that resizes,
    e.g. :class:`ssd_tutorial.augmentation.SSDAugmentation`); targets stay a list
    because each image has its own number of objects.
    """
    if len(batch) == 0:
        raise ValueError("detection_collate got an empty batch")
    images = [image for image, _ in batch]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"detection_collate: images of different sizes {sorted(shapes)} cannot be "
            "stacked; resize them first (e.g. SSDAugmentation)"
        )
    return torch.stack(images), [target for _, target in batch]


def base_dataset(dataset: Any) -> Any:
    """The dataset under any ``torch.utils.data.Subset`` wrappers (the one that reads
    the files)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset
