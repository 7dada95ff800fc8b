"""Your own data: open a VOC-layout folder or a COCO-format JSON, split it, check it,
fine-tune.

What ``python -m ssd_tutorial.train --data PATH`` does before training (chapter 11):

1. :func:`open_data` -- ``PATH`` is a folder in VOC layout (``Annotations/*.xml`` and
   ``JPEGImages/*.jpg``, optionally ``ImageSets/Main/<split>.txt``) or a COCO-format
   ``.json``.  Class names come from the data: VOC -- every ``<name>`` found in the
   XMLs, sorted; COCO -- the ``categories``, sorted by id (their ids are kept in
   ``category_ids``).
2. :func:`split_train_val` -- without a separate validation set, a seeded random split.
3. :func:`check_dataset` -- every item read once, every bad file listed with its reason,
   in ONE error (:class:`DatasetError`) rather than a traceback at the first bad item
   minutes into a run; or, with ``skip_bad``, the bad items left out and counted.
4. :func:`transfer_weights` -- start from another detector: every tensor whose name and
   shape agree is copied; the confidence heads of a model with another class count are
   not (they keep their fresh initialization), which is what fine-tuning to new classes
   needs.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import torch
from defusedxml import DefusedXmlException
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from ssd_tutorial.coco import COCODataset
from ssd_tutorial.data import VOCDataset, base_dataset

__all__ = [
    "DatasetError",
    "DataCheck",
    "voc_class_names",
    "voc_ids",
    "open_data",
    "split_train_val",
    "check_dataset",
    "class_names_of",
    "category_ids_of",
    "transfer_weights",
]


class DatasetError(ValueError):
    """A dataset with bad files; ``problems`` lists each one (file and reason)."""

    def __init__(self, problems: Sequence[str], total: int) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) in a dataset of {total} images (fix "
            "them, or train without the bad images with --skip-bad):\n"
            f"{lines}"
        )


def voc_ids(root: str | Path) -> list[str]:
    """Image ids of a VOC-layout folder without a split file: the stems of
    ``Annotations/*.xml``, sorted."""
    annotations = Path(root) / "Annotations"
    if not annotations.is_dir():
        raise FileNotFoundError(
            f"{root}: no Annotations/ folder (a VOC-layout folder holds Annotations/ "
            "and JPEGImages/)"
        )
    return sorted(path.stem for path in annotations.glob("*.xml"))


def voc_class_names(xml_files: Sequence[str | Path]) -> tuple[str, ...]:
    """Every object ``<name>`` in ``xml_files``, sorted.  Files that do not parse are
    passed over here (:func:`check_dataset` reports them)."""
    names = set()
    for xml_file in xml_files:
        try:
            root = SafeET.parse(str(xml_file)).getroot()
        except (DefusedXmlException, ET.ParseError, OSError):
            continue
        names.update(obj.findtext("name", "").strip() for obj in root.iter("object"))
    names.discard("")
    return tuple(sorted(names))


class _IdsVOC(VOCDataset):
    """A :class:`VOCDataset` over an explicit id list (a folder without
    ImageSets/Main/)."""

    def __init__(self, root: Path, ids: list[str], class_names: Sequence[str]) -> None:
        self.root, self.split, self.transform = root, "(all annotations)", None
        self.class_names = tuple(class_names)
        self.ids = ids
        self._parsed: dict[int, dict[str, Any]] = {}


def open_data(
    path: str | Path,
    images_dir: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    split: str | None = None,
) -> Dataset:
    """The dataset at ``path``: a COCO-format ``.json`` (:class:`COCODataset`) or a
    VOC-layout folder.

    For a folder, ``split`` names ``ImageSets/Main/<split>.txt``; ``None`` takes every
    ``Annotations/*.xml``.  ``class_names`` default to the data's own (see the module
    docstring).
    Items: ``(image uint8 [3, H, W], target)`` with xyxy pixel boxes, as every dataset
    here.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return COCODataset(path, images_dir, class_names=class_names)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--data {path}: neither a VOC-layout folder nor a COCO-format .json file"
        )
    if images_dir is not None:
        raise ValueError(
            "--images is for a COCO JSON; a VOC-layout folder keeps its images in "
            "JPEGImages/"
        )
    if split is not None:
        ids = VOCDataset(
            path, split, class_names=("?",)
        ).ids  # reads and checks the split file
    else:
        ids = voc_ids(path)
    if class_names is None:
        class_names = voc_class_names([path / "Annotations" / f"{i}.xml" for i in ids])
        if not class_names:
            raise ValueError(
                f"{path}: no object <name> in any of its {len(ids)} annotation files"
            )
    return _IdsVOC(path, ids, class_names)


def class_names_of(dataset: Dataset) -> tuple[str, ...]:
    """The class names of a dataset from :func:`open_data` (through any Subset)."""
    return tuple(base_dataset(dataset).class_names)


def category_ids_of(dataset: Dataset) -> tuple[int, ...] | None:
    """COCO category ids of the labels 1..C (``None`` for a VOC folder), through any
    Subset."""
    ids = getattr(base_dataset(dataset), "category_ids", None)
    return tuple(ids) if ids is not None else None


def split_train_val(
    dataset: Dataset, val_fraction: float, seed: int = 0
) -> tuple[Subset, Subset]:
    """A seeded random split: ``round(val_fraction * n)`` images (at least 1) for
    validation.

    The same ``seed`` and size always give the same split, so a resumed run sees the
    same one.
    """
    n = len(dataset)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n_val = max(1, round(val_fraction * n))
    if n_val >= n:
        raise ValueError(
            f"a dataset of {n} image(s) is too small to split off {n_val} for "
            "validation"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    # Two objects: the training side gets a transform (augmentation), the validation
    # side must not.
    return Subset(dataset, sorted(order[n_val:])), Subset(
        copy.copy(dataset), sorted(order[:n_val])
    )


@dataclass
class DataCheck:
    """What :func:`check_dataset` found: the good indices, and one line per bad file."""

    good: list[int]
    problems: list[str]
    total: int

    def summary(self, name: str) -> str:
        usable = f"{len(self.good)} of {self.total} images usable"
        return f"{name}: {usable}, {len(self.problems)} problem(s)"


def _listed_problems(dataset: Dataset) -> list[str]:
    """Problems a reader found while opening the data (COCO: annotations it could not
    place)."""
    return list(getattr(base_dataset(dataset), "problems", []))


def check_dataset(
    dataset: Dataset, skip_bad: bool = False, name: str = "dataset"
) -> tuple[Dataset, DataCheck]:
    """Read every item of ``dataset`` once (untransformed) and collect what is wrong
    with each.

    What is caught is what the readers refuse, each with a message naming the file: an
    image that is missing, unreadable or truncated; XML that does not parse or is
    hostile (entities refused by defusedxml); a box outside its image, reversed or
    empty; an unknown class; in a COCO JSON, annotations for images it does not list.
    An empty dataset is a problem too.  Images without objects are not: they are kept,
    as negatives.

    Returns ``(dataset, check)``: ``dataset`` unchanged when nothing is wrong, else
    (``skip_bad``) a :class:`Subset` of the good items.  Without ``skip_bad`` any
    problem raises :class:`DatasetError` listing all of them.
    """
    listed = _listed_problems(dataset)
    problems = list(listed)
    good = []
    for index in range(len(dataset)):
        try:
            dataset[index]
        except (
            Exception
        ) as error:  # whatever the reader refuses; its message names the file
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            # said once, when the file was read
            if not any(known in message for known in listed):
                problems.append(message)
        else:
            good.append(index)
    if len(dataset) == 0:
        problems.append(f"{name} has no images")
    check = DataCheck(good, problems, len(dataset))
    if problems and (not skip_bad or not good):
        raise DatasetError(problems, len(dataset))
    if len(good) == len(dataset):
        return dataset, check
    return Subset(dataset, good), check


def transfer_weights(
    model: nn.Module, state_dict: dict[str, Tensor]
) -> tuple[list[str], list[str]]:
    """Copy into ``model`` every tensor of ``state_dict`` whose name and shape
    match its own.

    Returns ``(copied, kept)``: ``kept`` are the model's tensors left as
    initialized (e.g. the ``conf_heads`` of a model trained for another number of
    classes).  Raises ``ValueError`` when nothing of the backbone matches
    (another width or another architecture).
    """
    own = model.state_dict()
    copied = [
        k
        for k, v in state_dict.items()
        if k in own and tuple(own[k].shape) == tuple(v.shape)
    ]
    if not any(k.startswith("backbone.") for k in copied):
        raise ValueError(
            "the weights share no backbone tensor with this model (another width_mult "
            f"or another architecture?); their first keys: {list(state_dict)[:4]}"
        )
    model.load_state_dict({k: state_dict[k] for k in copied}, strict=False)
    return copied, [k for k in own if k not in set(copied)]
