"""Data: PASCAL VOC and COCO-format sets on disk, a synthetic shapes set made on the fly, batching.

Every dataset here hands out the same item::

    image  uint8 [3, H, W] RGB
    target {"boxes": float32 [G, 4] xyxy in pixels,
            "labels": int64 [G] (1-based: VOC class k in ``VOC_CLASSES`` has label k + 1),
            "difficult": bool [G],
            "image_id": str}

``transform(image, target) -> (image, target)`` (e.g. :class:`ssd_tutorial.augmentation.SSDAugmentation`)
is applied last when given.

Box convention for VOC
----------------------
VOC XML stores 1-based, inclusive pixel indices (``1 <= xmin < xmax <= width``).  ``VOCDataset``
returns those numbers unchanged, as floats.  Read as continuous coordinates they sit at most one
pixel off (under 0.3 % of a 300 px input: no effect on training); and the evaluation module
applies the devkit's ``+1`` area convention to these same raw numbers, so evaluating on what the
dataset returns reproduces the VOC devkit exactly.  (Common PyTorch ports subtract 1 from every
coordinate; a shift of all four changes no IoU, but our detections files are in raw devkit
numbers, so we keep them as they are.)
"""
from __future__ import annotations

import functools
import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import defusedxml.ElementTree as SafeET
import numpy as np
import torch
from defusedxml import DefusedXmlException
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

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
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# ShapesDataset's classes; label k + 1 is SHAPES_CLASSES[k].
SHAPES_CLASSES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "ring", "cross")

Target = dict[str, Any]
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


# --------------------------------------------------------------------------------------------
# Reading images and annotations
# --------------------------------------------------------------------------------------------
# Three decoders, one result.  torchvision >= 0.29 deprecates its image codecs in favour of
# TorchCodec (>= 0.16); TorchCodec needs a recent torch (0.16: torch >= 2.11), and a machine may
# lack it (the GPU machine of this project has torch 2.11 and no TorchCodec).  So: TorchCodec
# where it imports, else torchvision.io (its deprecation silenced: it is the fallback, chosen on
# purpose), else PIL for the files both refuse (some CMYK JPEGs).  All give the same pixels
# (tests/test_data.py checks it file by file).
class _Codecs(NamedTuple):
    decode_image: Callable[..., Tensor]
    decode_jpeg: Callable[..., Any]
    JpegEncoder: Callable[..., Any]


@functools.cache  # looked up once a process: read_image runs per item, and a failed import is slow
def _torchcodec_image_codecs() -> _Codecs | None:
    """TorchCodec's image codecs, or None where it is absent or unusable."""
    try:
        from torchcodec.decoders import decode_image, decode_jpeg
        from torchcodec.encoders import JpegEncoder
    except Exception:  # ImportError, or its native library refusing this torch (RuntimeError, OSError)
        return None
    return _Codecs(decode_image, decode_jpeg, JpegEncoder)


@contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    """Silence the DeprecationWarning that torchvision >= 0.29 gives on every image decode/encode:
    we call it only where TorchCodec is missing, and the warning would flood a chapter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        yield


def image_backend() -> str:
    """The decoder :func:`read_image` tries first: ``"torchcodec"`` or ``"torchvision"``."""
    return "torchcodec" if _torchcodec_image_codecs() is not None else "torchvision"


def read_image(path: str | Path, backend: str | None = None) -> Tensor:
    """Decode an image file to RGB uint8 ``[3, H, W]``.

    Grayscale, RGBA and CMYK files all come out as 3-channel RGB; 16-bit files (PNG) as 8 bits,
    scaled (65535 -> 255, rounded), as TorchCodec does.  ``backend`` (``"torchcodec"``,
    ``"torchvision"`` or ``"pil"``; default :func:`image_backend`) picks the first decoder tried;
    PIL is the fallback for what the others refuse (e.g. some CMYK JPEGs).
    A missing file raises ``FileNotFoundError``; an undecodable one ``ValueError``; both name
    the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    backend = backend or image_backend()
    if backend not in ("torchcodec", "torchvision", "pil"):
        raise ValueError(f"unknown image backend {backend!r}: use 'torchcodec', 'torchvision' or 'pil'")
    codecs = _torchcodec_image_codecs() if backend == "torchcodec" else None
    if backend == "torchcodec" and codecs is None:
        raise ValueError("image backend 'torchcodec' asked for, but torchcodec does not import")
    image = None
    try:
        if codecs is not None:
            image = codecs.decode_image(path.read_bytes(), mode="RGB")  # [3, H, W] uint8 (or [N, 3, H, W])
        elif backend == "torchvision":
            from torchvision.io import ImageReadMode, decode_image, read_file

            with _quiet_torchvision_io():
                image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)  # [3, H, W] uint8
    except (RuntimeError, ValueError):
        image = None  # refused: PIL below
    if image is not None and image.ndim == 4:
        image = image[0]  # first frame of an animated GIF/WebP, as PIL gives
    if image is not None and image.dtype == torch.uint16:  # torchvision.io keeps a 16-bit PNG's depth
        image = _to_8_bits(image)
    if image is not None and image.ndim == 3 and image.shape[0] == 3 and image.dtype == torch.uint8:
        return image.contiguous()
    return _read_image_pil(path)


def _to_8_bits(image: Tensor) -> Tensor:
    """16-bit pixels (uint16 tensor or array, any shape) -> uint8: round(v * 255 / 65535), as TorchCodec."""
    wide = image.to(torch.int32) if isinstance(image, Tensor) else torch.from_numpy(image.astype(np.int32))
    return ((wide * 255 + 65535 // 2) // 65535).to(torch.uint8)


def encode_jpeg(image: Tensor, quality: int = 90) -> Tensor:
    """uint8 ``[3, H, W]`` (or ``[1, H, W]``) ``image`` -> its JPEG file bytes, uint8 ``[num_bytes]``."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"encode_jpeg wants uint8 [3, H, W] or [1, H, W], got {image.dtype} {list(image.shape)}")
    codecs = _torchcodec_image_codecs()
    if codecs is not None:
        return codecs.JpegEncoder(image.contiguous()).to_tensor(quality=quality)
    from torchvision.io import encode_jpeg as torchvision_encode_jpeg

    with _quiet_torchvision_io():
        return torchvision_encode_jpeg(image, quality=quality)


def write_jpeg(image: Tensor, path: str | Path, quality: int = 90) -> None:
    """Encode uint8 ``[3, H, W]`` (or ``[1, H, W]``) ``image`` as a JPEG file at ``path``."""
    Path(path).write_bytes(encode_jpeg(image, quality).numpy().tobytes())


def decode_jpegs(data: list[Tensor], device: str | torch.device = "cpu") -> list[Tensor]:
    """JPEG file bytes (uint8 ``[num_bytes]`` each) -> RGB uint8 ``[3, H, W]`` each, decoded on
    ``device`` (one batched nvJPEG call on CUDA).  Grayscale JPEGs come out with 3 equal channels."""
    codecs = _torchcodec_image_codecs()
    if codecs is not None:
        return list(codecs.decode_jpeg(list(data), mode="RGB", device=device))
    from torchvision.io import ImageReadMode, decode_jpeg as torchvision_decode_jpeg

    with _quiet_torchvision_io():
        try:
            return list(torchvision_decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device))
        except (RuntimeError, ValueError):  # an nvjpeg without RGB conversion: expand grey here
            return [im.expand(3, -1, -1) for im in torchvision_decode_jpeg(list(data), device=device)]


def _read_image_pil(path: Path) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as pil:
            if pil.mode.startswith("I;16"):  # 16-bit grey: convert("RGB") would clip it at 255, not scale it
                gray = _to_8_bits(np.asarray(pil))  # [H, W] uint8
                return gray.expand(3, -1, -1).contiguous()  # [3, H, W]
            if pil.mode in ("I", "F"):
                raise ValueError(f"{pil.mode!r} pixels (32-bit integer or float): save it with 8 bits per channel")
            array = np.asarray(pil.convert("RGB"))  # [H, W, 3] uint8
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # [3, H, W]


def image_header_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image file from its header, without decoding its pixels (PIL
    opens files lazily); None when PIL cannot read the header.  For a size check before decoding."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as pil:
                return pil.size
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path}: {err}") from err  # over twice PIL's own pixel limit (179 megapixels)
    except (OSError, ValueError, SyntaxError):
        return None


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
    if not math.isfinite(value):  # float() reads "nan" and "inf", which no comparison below would catch
        raise ValueError(f"{xml_path}: <{tag}> is not a finite number: {text!r}")
    return value


def parse_voc_xml(xml_path: str | Path, class_names: Sequence[str] = VOC_CLASSES) -> dict[str, Any]:
    """Parse one VOC annotation with defusedxml (entity expansion and external entities refused).

    Returns ``{"width", "height", "boxes" float32 [G, 4] xyxy (raw 1-based devkit numbers),
    "labels" int64 [G] (1-based), "difficult" bool [G], "filename"}``; ``width``/``height``
    are 0 when ``<size>`` is absent.  Raises ``ValueError`` naming the file for malformed XML,
    a forbidden construct, an unknown class or a reversed/empty box.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise FileNotFoundError(f"annotation file not found: {xml_path}")
    try:
        root = SafeET.parse(str(xml_path)).getroot()
    except DefusedXmlException as err:
        raise ValueError(f"{xml_path}: refused unsafe XML ({type(err).__name__}: {err})") from err
    except ET.ParseError as err:
        raise ValueError(f"{xml_path}: malformed XML ({err})") from err
    if root.tag != "annotation":
        raise ValueError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")

    size = root.find("size")
    width = int(_child_number(size, "width", xml_path)) if size is not None else 0
    height = int(_child_number(size, "height", xml_path)) if size is not None else 0
    index = {name: k for k, name in enumerate(class_names)}
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _child_text(obj, "name", xml_path)
        if name not in index:
            raise ValueError(f"{xml_path}: unknown class {name!r} (known: {', '.join(class_names)})")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{xml_path}: object {name!r} has no <bndbox>")
        box = [_child_number(bndbox, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"{xml_path}: object {name!r} has a reversed or empty box {box} (xyxy)")
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


def _check_inside(boxes: Tensor, width: int, height: int, where: Path) -> None:
    """Boxes must lie inside the image: ``0 <= x1 < x2 <= W`` (1-based devkit numbers reach W)."""
    for box in boxes.tolist():  # a few boxes: plain Python is cheaper than tensor ops here
        x1, y1, x2, y2 = box
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(f"{where}: box {box} (xyxy) lies outside the {width}x{height} image")


# --------------------------------------------------------------------------------------------
# VOC
# --------------------------------------------------------------------------------------------
class VOCDataset(Dataset):
    """A PASCAL VOC year folder: ``root/JPEGImages``, ``root/Annotations``, ``root/ImageSets/Main``.

    ``split`` names ``ImageSets/Main/<split>.txt`` (one image id per line).  Items are
    ``(image uint8 [3, H, W], target)`` with boxes xyxy in (raw devkit) pixels, see the module
    docstring.  ``class_names`` defaults to the 20 VOC classes; any VOC-layout set with other
    names (e.g. one class) works by passing its own.  Annotations are read when an item is
    requested; errors name the file.
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
        self.ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        self._parsed: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def annotation(self, index: int) -> dict[str, Any]:
        """The parsed XML of item ``index`` (see :func:`parse_voc_xml`), without the image.

        Each XML is parsed once per process and kept (a few hundred bytes an image; parsing is
        about a tenth of a DataLoader worker's time per item, and training reads every file once
        an epoch).  Every call returns new tensors, so a transform may change them in place.
        """
        parsed = self._parsed.get(index)
        if parsed is None:
            parsed = parse_voc_xml(self.root / "Annotations" / f"{self.ids[index]}.xml", self.class_names)
            self._parsed[index] = parsed
        return {key: value.clone() if isinstance(value, Tensor) else value for key, value in parsed.items()}

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
        except Exception as error:  # deep in a DataLoader worker, the message must say which file
            if str(image_file) in str(error) or str(xml_file) in str(error):
                raise
            raise _with_file(error, image_file) from error
        return image, target


def _with_file(error: Exception, path: Path) -> Exception:
    """``error`` again, its message prefixed with ``path``: the same type where it can be rebuilt
    from a message (most can), else a RuntimeError naming the original type."""
    message = f"{path}: {error}"
    try:
        return type(error)(message)
    except Exception:
        return RuntimeError(f"{path}: {type(error).__name__}: {error}")


# --------------------------------------------------------------------------------------------
# COCO format (what labelling tools export)
# --------------------------------------------------------------------------------------------
def _json_records(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    records = data.get(key, [] if key == "annotations" else None)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: {key!r} must be a list of objects (COCO format)")
    return records


class COCODataset(Dataset):
    """A COCO-format annotation file: ``{"images": [...], "annotations": [...], "categories": [...]}``.

    Items are the same as :class:`VOCDataset`'s: ``(image uint8 [3, H, W], target)`` with
    ``boxes`` xyxy in pixels, read from COCO's ``bbox = [x, y, w, h]`` as ``(x, y, x + w, y + h)``;
    ``image_id`` is the file name without its extension (as VOC's ids are), and ``difficult`` is
    COCO's ``iscrowd`` (a crowd region is neither a hit nor a miss in the VOC evaluation, as in
    COCO's own).

    Labels are 1-based positions in ``categories`` sorted by id, so COCO's non-contiguous ids
    (1..90 with gaps) become 1..C; ``category_ids[label - 1]`` maps a label back.
    ``class_names`` may be given to fix the order (names must all be in the file).
    Image files are ``images_dir / file_name``, ``images_dir`` defaulting to the JSON's folder.

    The file is checked as it is read: annotations for an image that is not listed, of an unknown
    category, or with a box of zero or negative size are collected in :attr:`problems` (messages
    naming the file and the annotation id) and left out; the item of such an image raises.
    A JSON that does not parse or lacks the COCO keys raises ``ValueError`` at once.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        images_dir: str | Path | None = None,
        transform: Transform | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        import json

        self.annotation_file = path = Path(annotation_file)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path}")
        self.images_dir = Path(images_dir) if images_dir is not None else path.parent
        self.transform = transform
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with images, annotations, categories")
        categories = sorted(_json_records(data, "categories", path), key=lambda c: c.get("id", 0))
        try:
            by_id = {int(c["id"]): str(c["name"]) for c in categories}
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: every category needs an integer 'id' and a 'name' ({err})") from None
        if len(set(by_id.values())) != len(by_id):
            raise ValueError(f"{path}: category names repeat: {sorted(by_id.values())}")
        if class_names is None:
            self.category_ids = tuple(by_id)
        else:
            id_of = {name: cid for cid, name in by_id.items()}
            missing = [name for name in class_names if name not in id_of]
            if missing:
                raise ValueError(f"{path}: classes {missing} are not among its categories {sorted(id_of)}")
            self.category_ids = tuple(id_of[name] for name in class_names)
        self.class_names = tuple(by_id[cid] for cid in self.category_ids)
        label_of = {cid: k + 1 for k, cid in enumerate(self.category_ids)}

        self.images: list[dict[str, Any]] = []
        index_of: dict[Any, int] = {}
        for record in _json_records(data, "images", path):
            if "id" not in record or not isinstance(record.get("file_name"), str):
                raise ValueError(f"{path}: every image needs an 'id' and a 'file_name', got {record}")
            if record["id"] in index_of:
                raise ValueError(f"{path}: image id {record['id']} is listed twice")
            index_of[record["id"]] = len(self.images)
            self.images.append(record)
        self.ids = [Path(record["file_name"]).stem for record in self.images]
        self.problems: list[str] = []
        self._objects: list[list[tuple[list[float], int, bool]]] = [[] for _ in self.images]
        self._bad: dict[int, str] = {}
        for ann in _json_records(data, "annotations", path):
            where = f"{path}: annotation {ann.get('id', '?')}"
            if ann.get("image_id") not in index_of:
                self.problems.append(f"{where} is for image id {ann.get('image_id')!r}, which is not listed")
                continue
            index = index_of[ann["image_id"]]
            if ann.get("category_id") not in label_of:
                message = f"{where}: unknown category id {ann.get('category_id')!r} (known: {sorted(label_of)})"
                if class_names is not None and ann.get("category_id") in by_id:
                    continue  # a category left out on purpose by class_names
                self._bad[index] = message
                self.problems.append(message)
                continue
            box = ann.get("bbox")
            ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            if not ok or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
                message = f"{where}: bbox {box} is not [x, y, w, h] with w, h > 0"
                self._bad[index] = message
                self.problems.append(message)
                continue
            x, y, w, h = (float(v) for v in box)
            self._objects[index].append(([x, y, x + w, y + h], label_of[ann["category_id"]], bool(ann.get("iscrowd", 0))))

    def __len__(self) -> int:
        return len(self.images)

    def image_file(self, index: int) -> Path:
        return self.images_dir / self.images[index]["file_name"]

    def annotation(self, index: int) -> dict[str, Any]:
        """The objects of item ``index`` without its image: boxes ``[G, 4]`` xyxy px, labels, difficult."""
        objects = self._objects[index]
        return {
            "boxes": torch.tensor([o[0] for o in objects], dtype=torch.float32).reshape(-1, 4),  # [G, 4]
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
            _check_inside(target["boxes"], image.shape[2], image.shape[1], self.annotation_file)
            if self.transform is not None:
                image, target = self.transform(image, target)
        except Exception as error:  # the message must say which file, as VOCDataset's do
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
    """Write a dataset's items as a COCO-format JSON (and, with ``images_dir``, their JPEGs).

    ``bbox`` is ``[x1, y1, x2 - x1, y2 - y1]`` of each item's xyxy pixel boxes, so
    :class:`COCODataset` reads back exactly the boxes the dataset gave.  (From a
    :class:`VOCDataset`, whose boxes are the devkit's 1-based numbers, that keeps those numbers;
    from :class:`ShapesDataset`, the shapes' pixel edges.)  ``category_ids`` default to 1..C.
    ``file_name`` is ``<image_id>.jpg`` with the path from the JSON's folder to ``images_dir``
    (``images/x.jpg``), so that the JSON alone finds its images; without ``images_dir``, the
    bare name (the images are said to be beside the JSON, or in a folder given when reading).
    """
    import json
    import os

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
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
            name = Path(os.path.relpath(Path(images_dir) / name, out_file.parent)).as_posix()
        images.append({"id": index + 1, "file_name": name, "height": int(image.shape[1]), "width": int(image.shape[2])})
        for box, label, crowd in zip(
            target["boxes"].tolist(), target["labels"].tolist(), target["difficult"].tolist()
        ):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": ids[int(label) - 1],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd),
            })
    categories = [{"id": cid, "name": name} for cid, name in zip(ids, class_names)]
    out_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}) + "\n")
    return out_file


def _voc_year(root: str | Path, year: int) -> Path:
    """``root`` may be the folder holding ``VOCdevkit/`` or ``VOCdevkit/`` itself."""
    root = Path(root)
    for candidate in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no VOC{year} folder under {root} (looked for VOCdevkit/VOC{year} and VOC{year}); "
        "run data_scripts/download_voc.py"
    )


def voc0712_trainval(root: str | Path, transform: Transform | None = None) -> ConcatDataset:
    """VOC2007 trainval + VOC2012 trainval as one dataset (16 551 images), the paper's "07+12"."""
    return ConcatDataset(
        [VOCDataset(_voc_year(root, year), "trainval", transform) for year in (2007, 2012)]
    )


def voc2007_test(root: str | Path, transform: Transform | None = None) -> VOCDataset:
    """VOC2007 test (4952 images): the paper's evaluation set."""
    return VOCDataset(_voc_year(root, 2007), "test", transform)


# --------------------------------------------------------------------------------------------
# Synthetic shapes
# --------------------------------------------------------------------------------------------
def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, param: float) -> np.ndarray:
    """Pixels of shape ``kind`` in a box; ``u``, ``v`` in [-1, 1] run across its width/height."""
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


def _overlap_ok(box: np.ndarray, placed: list[np.ndarray], max_iou: float, max_cover: float) -> bool:
    """Limit overlaps: IoU <= max_iou and no box covered more than ``max_cover`` by the other."""
    for other in placed:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        a = (box[2] - box[0]) * (box[3] - box[1])
        b = (other[2] - other[0]) * (other[3] - other[1])
        if inter / (a + b - inter) > max_iou or inter / min(a, b) > max_cover:
            return False
    return True


class ShapesDataset(Dataset):
    """Synthetic detection images, generated on the fly and deterministic by ``(seed, index)``.

    Each image (uint8 ``[3, S, S]``, ``S = image_size``) has a textured, noisy background (a
    colour gradient with blocky and fine noise, plus a few clutter bars) and 1 to 6 objects of
    the classes in ``SHAPES_CLASSES``, 15 to 200 px on a side at ``S = 300`` (scaled with
    ``S``), aspect ratio 1/2 to 2, in random colours.  Objects may overlap, but by at most 0.3
    IoU, and none is hidden more than half by another.  Boxes are tight xyxy pixel coordinates
    (pixel edges: a shape covering columns 10..19 has x1 = 10, x2 = 20); labels are 1-based;
    ``difficult`` is all False.  Items are independent, so DataLoader workers can share it.
    """

    min_objects, max_objects = 1, 6
    min_size, max_size = 15.0, 200.0  # px at image_size 300

    def __init__(
        self, num_images: int, image_size: int = 300, seed: int = 0, transform: Transform | None = None
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32 px, got {image_size}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            # numpy's generator takes only non-negative integers; say so now, not at the first item
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.transform = transform

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
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
        image = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # [H, W, 3] -> [3, H, W]
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw image ``index``: (uint8 ``[S, S, 3]``, float32 ``[G, 4]`` xyxy px, int64 ``[G]``)."""
        rng = np.random.default_rng([self.seed, index])
        s = self.image_size
        image = self._background(rng, s)  # [S, S, 3] int16
        scale = s / 300.0
        boxes: list[np.ndarray] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            for _attempt in range(20):
                size = math.exp(rng.uniform(math.log(self.min_size), math.log(self.max_size))) * scale
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
        # Fine per-pixel noise over everything (shapes too): a random crop of a noise tile.
        tile = rng.integers(-12, 13, size=(64, 64, 1), dtype=np.int16)
        reps = s // 64 + 2
        oy, ox = rng.integers(0, 64, size=2)
        image += np.tile(tile, (reps, reps, 1))[oy : oy + s, ox : ox + s]
        np.clip(image, 0, 255, out=image)
        return (
            image.astype(np.uint8),
            np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32),
            np.asarray(labels, dtype=np.int64),
        )

    @staticmethod
    def _background(rng: np.random.Generator, s: int) -> np.ndarray:
        """Gradient between two random colours + blocky noise + clutter bars, int16 ``[S, S, 3]``."""
        block = 4
        n = -(-s // block)  # cells per side (ceil)
        c0, c1 = rng.uniform(0, 255, size=(2, 3))
        angle = rng.uniform(0, 2 * math.pi)
        grid = np.arange(n, dtype=np.float32) / max(n - 1, 1)
        t = (np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None] + 1.5) / 3.0  # [n, n]
        low = c0 + (c1 - c0) * t[..., None]  # [n, n, 3]
        low += rng.normal(0, rng.uniform(5, 30), size=(n, n, 1))  # blocky texture
        image = np.repeat(np.repeat(low.astype(np.int16), block, 0), block, 1)[:s, :s]  # [S, S, 3]
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
    def _draw(image: np.ndarray, rng: np.random.Generator, kind: int, x1: int, y1: int, w: int, h: int) -> None:
        """Paint shape ``kind`` filling the box ``[x1, x1 + w) x [y1, y1 + h)`` in place."""
        region = image[y1 : y1 + h, x1 : x1 + w]  # [h, w, 3] view
        u = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1)[None, :]  # [1, w]
        v = ((np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1)[:, None]  # [h, 1]
        param = rng.uniform(0.45, 0.65) if SHAPES_CLASSES[kind] == "ring" else rng.uniform(0.2, 0.35)
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


def write_voc_split(
    dataset: Dataset,
    root: str | Path,
    split: str = "train",
    class_names: Sequence[str] = SHAPES_CLASSES,
    quality: int = 90,
) -> Path:
    """Write a dataset's items to ``root`` in VOC layout: JPEG + XML + ``ImageSets/Main/<split>.txt``.

    Items must be untransformed ``(uint8 [3, H, W], target)`` with pixel-edge xyxy boxes (as
    :class:`ShapesDataset` gives).  Boxes are written as the devkit writes them, 1-based and
    inclusive: a shape covering columns 10..19 (x1 = 10, x2 = 20) becomes ``<xmin>11</xmin>
    <xmax>20</xmax>``; reading back with :class:`VOCDataset` therefore gives x1 + 1, y1 + 1.
    Returns ``root``; existing files of the same ids are overwritten, the split file appended to.
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
        for tag, value in zip(("width", "height", "depth"), (image.shape[2], image.shape[1], 3)):
            ET.SubElement(size, tag).text = str(int(value))
        ET.SubElement(ann, "segmented").text = "0"
        for box, label, hard in zip(
            target["boxes"].tolist(), target["labels"].tolist(), target["difficult"].tolist()
        ):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = class_names[int(label) - 1]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = "1" if hard else "0"
            bndbox = ET.SubElement(obj, "bndbox")
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2)):
                ET.SubElement(bndbox, tag).text = str(value)
        ET.indent(ann, space="    ")
        ET.ElementTree(ann).write(root / "Annotations" / f"{image_id}.xml", encoding="unicode")
        ids.append(image_id)
    with open(root / "ImageSets" / "Main" / f"{split}.txt", "a") as f:
        f.writelines(f"{image_id}\n" for image_id in ids)
    return root


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------
def detection_collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, list[Target]]:
    """``[(image [3, H, W], target), ...]`` -> ``(images [B, 3, H, W], [target, ...])``.

    Images are stacked, so they must share one size (apply a transform that resizes, e.g.
    :class:`ssd_tutorial.augmentation.SSDAugmentation`); targets stay a list because each image
    has its own number of objects.
    """
    if len(batch) == 0:
        raise ValueError("detection_collate got an empty batch")
    images = [image for image, _ in batch]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"detection_collate: images of different sizes {sorted(shapes)} cannot be stacked; "
            "resize them first (e.g. SSDAugmentation)"
        )
    return torch.stack(images), [target for _, target in batch]


def base_dataset(dataset: Any) -> Any:
    """The dataset under any ``torch.utils.data.Subset`` wrappers (the one that reads the files)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset
