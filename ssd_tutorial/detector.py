"""A loaded detector, and the one way to load one.

:class:`Detector` is what every tool runs: the model (which owns its default boxes and
its input transform), the class names, the COCO category ids it was trained with (if
any) and where it came from.  :func:`load_detector` makes one from any of:

* a training checkpoint of this package (``last.pt``: ``{"model", "config",
  "class_names", "prior_config", ...}``) -- names, ids and default boxes as stored;
* a plain state dict of :class:`~ssd_tutorial.model.SSD300` / ``SSD512`` (such as
  ``book/results/shapes_tiny.pt``) -- width and class count read from the shapes, names
  by class count (:func:`default_class_names`);
* published weights by name (``"torchvision-coco"``, ``"ssd-pytorch-voc"``) or such a
  file on disk (:mod:`ssd_tutorial.pretrained` knows their layouts).

Every file is read with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssd_tutorial.checkpoint import stored_prior_config
from ssd_tutorial.data import SHAPES_CLASSES, VOC_CLASSES
from ssd_tutorial.default_boxes import (
    SSD300_VOC,
    SSD512_VOC,
    DefaultBoxConfig,
    boxes_per_cell,
)
from ssd_tutorial.inference import Predictor
from ssd_tutorial.model import SSD300, build_ssd
from ssd_tutorial.preprocessing import InputTransform
from ssd_tutorial.pretrained import LAYOUTS, detect_layout, model_from_state_dict
from ssd_tutorial.published import PUBLISHED, fetch_state_dict, read_state_file

__all__ = [
    "Detector",
    "load_detector",
    "load_pretrained",
    "detector_from_state_dict",
    "default_class_names",
    "split_class_names",
    "resolve_class_names",
    "detection_records",
]


@dataclass(frozen=True, eq=False)
class Detector:
    """A model ready to detect, with what it needs to be understood.

    * ``model`` -- :class:`SSD300` (or SSD512) in eval mode; ``model.prior_config`` /
      ``model.default_boxes()`` are its default boxes, ``model.input_transform`` its
      resize;
    * ``class_names`` -- without background: label ``k`` is ``class_names[k - 1]``;
    * ``names_stored`` -- whether the weights themselves store those names (a training
      checkpoint does; published weights bring a dataset's list; a plain state dict
      none);
    * ``category_ids`` -- the COCO ids of labels 1..C when trained on a COCO JSON, else
      None;
    * ``source`` -- where it came from (a path, or a published name with its URL).
    """

    model: SSD300
    class_names: tuple[str, ...]
    source: str
    names_stored: bool = False
    category_ids: tuple[int, ...] | None = None

    @property
    def prior_config(self) -> DefaultBoxConfig:
        return self.model.prior_config

    @property
    def priors(self) -> Tensor:
        """``[P, 4]`` cxcywh normalized: the model's default boxes."""
        return self.model.default_boxes()

    @property
    def input_transform(self) -> InputTransform:
        return self.model.input_transform

    @property
    def names(self) -> tuple[str, ...] | None:
        """The names the weights store, or None (then ``class_names`` are defaults)."""
        return self.class_names if self.names_stored else None

    def predictor(self, **kwargs: Any) -> Predictor:
        """A :class:`~ssd_tutorial.inference.Predictor` for this model (``kwargs``:
        thresholds, device, precision ...)."""
        return Predictor(self.model, **kwargs)


def default_class_names(num_classes: int) -> list[str]:
    """Names for a model without stored ones: ShapesDataset's (6 outputs), VOC's (21),
    else numbers."""
    for names in (SHAPES_CLASSES, VOC_CLASSES):
        if num_classes == len(names) + 1:
            return list(names)
    return [str(k) for k in range(1, num_classes)]


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:25]) + (" ..." if len(names) > 25 else "")


def split_class_names(text: str) -> list[str]:
    """``--classes "a, b,c"`` -> ``["a", "b", "c"]`` (blank entries dropped)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def resolve_class_names(
    given: Sequence[str] | None,
    stored: Sequence[str] | None,
    num_classes: int,
    source: str | Path,
) -> list[str]:
    """The class names to use for a model with ``num_classes`` outputs (background
    included).

    Names the weights store (``stored``) are the truth: ``given`` names (``--classes``)
    must be the same, in the same order -- a model's label k means one class, and
    another order would silently score or label every detection as another class.
    Without stored names, ``given`` names just need the model's count; without either,
    :func:`default_class_names`.
    """
    if stored is not None:
        if given is not None and list(given) != list(stored):
            raise ValueError(
                f"the class names given ({len(given)}: {_listed(given)}) differ from "
                f"those stored in {source} ({len(stored)}: {_listed(stored)}); the "
                "names and their order must be the same"
            )
        return list(stored)
    if given is None:
        return default_class_names(num_classes)
    if len(given) != num_classes - 1:
        raise ValueError(
            f"{len(given)} classes given ({_listed(given)}), but the weights from "
            f"{source} have {num_classes - 1} (+ background) and store no names"
        )
    return list(given)


def detection_records(
    detections: dict[str, Tensor],
    names: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """One JSON-ready dict per detection (``boxes`` xyxy pixels, ``scores``, 1-based
    ``labels``): label name and id, score, box; with ``category_ids`` (a model trained
    on a COCO JSON) also the ``category_id`` of that file, which is not the label when
    the file's ids have gaps."""
    records = []
    for box, score, label in zip(
        detections["boxes"].tolist(),
        detections["scores"].tolist(),
        detections["labels"].tolist(),
    ):
        record: dict[str, Any] = {"label": names[label - 1], "label_id": label}
        if category_ids is not None:
            record["category_id"] = category_ids[label - 1]
        record.update(score=round(score, 4), box_xyxy_px=[round(v, 1) for v in box])
        records.append(record)
    return records


def _width_and_classes(
    state_dict: dict[str, Tensor], prior_config: DefaultBoxConfig, path: str | Path
) -> tuple[float, int]:
    """(width_mult, num_classes) of an SSD state dict, from its L2Norm and first conf
    head (``boxes_per_cell`` of ``prior_config``'s first map times C channels)."""
    try:
        l2norm = state_dict["l2norm.weight"]  # [512 * width]: conv4_3's channels
        conf_head = state_dict["conf_heads.0.weight"]  # [boxes_per_cell * C, in, 3, 3]
    except KeyError as missing:
        raise ValueError(
            f"{path}: not an SSD300 state dict: no {missing} key"
        ) from None
    return l2norm.shape[0] / 512, conf_head.shape[0] // boxes_per_cell(prior_config)[0]


def _from_checkpoint(state: dict[str, Any], path: str | Path) -> Detector:
    """A training checkpoint or a plain state dict of this package -> Detector (CPU)."""
    names: list[str] | None = None
    category_ids = None
    if isinstance(state.get("model"), dict):  # a training checkpoint
        names = list(state.get("class_names", [])) or None
        if state.get("category_ids"):
            category_ids = tuple(int(c) for c in state["category_ids"])
        prior_config = stored_prior_config(state)
        state = state["model"]
    else:  # a plain state dict: SSD512 has a seventh head (conv12_2)
        prior_config = SSD512_VOC if "conf_heads.6.weight" in state else SSD300_VOC
    width, num_classes = _width_and_classes(state, prior_config, path)
    if names is not None and len(names) != num_classes - 1:
        raise ValueError(
            f"{path}: {len(names)} class names for a model of {num_classes - 1} "
            "classes (+ background)"
        )
    if category_ids is not None and len(category_ids) != len(names or []):
        raise ValueError(
            f"{path}: {len(category_ids)} category ids for {len(names or [])} class "
            "names"
        )
    # no init (nor random draws) for weights that are overwritten
    with torch.device("meta"):
        # SSD300, or SSD512 for 7 maps
        model = build_ssd(num_classes, prior_config, None, width)
    model = model.to_empty(device="cpu")
    model.load_state_dict(state)  # strict: every tensor, the input buffers included
    return Detector(
        model=model,
        class_names=tuple(
            names if names is not None else default_class_names(num_classes)
        ),
        source=str(path),
        names_stored=names is not None,
        category_ids=category_ids,
    )


def load_detector(
    source: str | Path,
    device: str | torch.device = "cpu",
    *,
    progress: bool = True,
    expected_sha256: str | None = None,
) -> Detector:
    """The one loader: a checkpoint path, a published name or a weight file ->
    :class:`Detector` (model in eval mode on ``device``).  See the module docstring for
    what each gives.

    A missing file is a FileNotFoundError naming it; a file of no known layout a
    ValueError naming it and some of its keys; a pickle (or any non-``weights_only``
    content) is refused.
    """
    if isinstance(source, str) and source in PUBLISHED:
        return load_pretrained(
            source, device, progress=progress, expected_sha256=expected_sha256
        )
    path = _existing_file(source)
    state = read_state_file(path, expected_sha256)
    if detect_layout(state) is not None:  # torchvision's or ssd.pytorch's keys
        return detector_from_state_dict(state, str(path), device)
    detector = _from_checkpoint(state, path)
    detector.model.to(device).eval()
    return detector


def _existing_file(source: str | Path) -> Path:
    """``source`` as the path of a file, or a FileNotFoundError that names it and the
    published detectors (which a typo in a name would also land here)."""
    path = Path(source)
    if not path.is_file():
        detectors = ", ".join(n for n, w in PUBLISHED.items() if w.layout in LAYOUTS)
        raise FileNotFoundError(
            f"{str(source)!r}: no checkpoint or weight file there, nor published "
            f"weights by that name ({detectors})"
        )
    return path


def load_pretrained(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    progress: bool = True,
    expected_sha256: str | None = None,
) -> Detector:
    """Published weights by name (``"torchvision-coco"``, ``"ssd-pytorch-voc"``) or a
    local file of either layout -> :class:`Detector` (model in eval mode on ``device``).

    Names are downloaded once into torch.hub's cache (offline: RuntimeError naming the
    URL and the path to put the file at).  A file of neither layout: ValueError naming
    it.
    """
    if isinstance(name_or_path, str) and name_or_path in PUBLISHED:
        weights = PUBLISHED[name_or_path]
        if weights.layout not in LAYOUTS:
            raise ValueError(
                f"{name_or_path!r} is a backbone, not a detector: pass "
                f"backbone_weights=fetch_published({name_or_path!r}) to SSD300 / the "
                "training config"
            )
        state = fetch_state_dict(name_or_path, progress, expected_sha256)
        source = f"{weights.name} ({weights.description}; {weights.url})"
    else:
        path = _existing_file(name_or_path)
        state, source = read_state_file(path, expected_sha256), str(path)
    return detector_from_state_dict(state, source, device)


def detector_from_state_dict(
    state_dict: dict[str, Tensor], source: str, device: str | torch.device = "cpu"
) -> Detector:
    """A state dict of torchvision's or ssd.pytorch's layout (in memory) ->
    :class:`Detector` with that layout's default boxes, names and input transform
    (:func:`ssd_tutorial.pretrained.model_from_state_dict`)."""
    model, names = model_from_state_dict(state_dict, source)
    return Detector(model=model.to(device).eval(), class_names=names, source=source)
