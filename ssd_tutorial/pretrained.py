"""Other people's trained SSD300 weight files: their key layouts, input conventions,
class names and default boxes, and where to download them.

* ``"torchvision-coco"`` -- torchvision's ``ssd300_vgg16``,
  ``SSD300_VGG16_Weights.COCO_V1`` (25.1 box AP on COCO val2017; 91 outputs: background
  + torchvision's COCO label ids 1..90, the unused ids named ``"N/A"``); downloaded
  through torchvision's weights API, hash-checked.
* ``"ssd-pytorch-voc"`` -- amdegroot/ssd.pytorch's ``ssd300_mAP_77.43_v2.pth`` (77.43 %
  VOC2007 test mAP as its README reports; 21 outputs in ``data.VOC_CLASSES`` order).
* ``"ssd-pytorch-vgg16-reducedfc"`` -- ssd.pytorch's ImageNet backbone, a starting point
  for training: ``fetch_published(name)`` returns its path for
  ``SSD300(backbone_weights=...)``.

A local file of either detector layout (torchvision's keys ``backbone.features.*``,
``head.*``; ssd.pytorch's ``vgg.*``, ``L2Norm.weight``, ``extras.*``, ``loc.*``,
``conf.*``) is told apart by its keys (:func:`detect_layout`) and renamed to ours;
:func:`model_from_state_dict` builds the model with the layout's default boxes and input
transform.  Loading one as a detector (model + names + source) is
:func:`ssd_tutorial.detector.load_detector`'s job.

Files are cached where torch.hub keeps checkpoints (:func:`published_file`); offline, a
missing file gives a RuntimeError naming the URL and the path to put it at.  Every file
is read with ``weights_only=True``.  torchvision's file name carries the first 8 hex
digits of its SHA-256, checked on download and again on the cached copy; amdegroot
publishes none, so only ``expected_sha256`` (if given) and the content (every key and
shape) are checked.  How closely their detections are reproduced, and why not bit for
bit, is in the README and chapter 08.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from torchvision.models.detection import SSD300_VGG16_Weights

from ssd_tutorial.backbone_weights import (
    CONV_NAMES,
    SSD_PYTORCH_FC_INDICES,
    TORCHVISION_CONV_INDICES,
    set_input_affine,
)
from ssd_tutorial.data import VOC_CLASSES
from ssd_tutorial.default_boxes import (
    SSD_PYTORCH_VOC,
    TORCHVISION_COCO,
    DefaultBoxConfig,
    boxes_per_cell,
)
from ssd_tutorial.model import SSD300, VGG16_LAYERS
from ssd_tutorial.preprocessing import InputTransform
from ssd_tutorial.published import (  # re-exported: the file names of published weights
    PUBLISHED,
    PublishedWeights,
    _published,
    fetch_state_dict,
    published_file,
    read_state_file,
    sha256_of,
)

__all__ = [
    "PublishedWeights",
    "PUBLISHED",
    "LAYOUTS",
    "TORCHVISION_MEAN_255",
    "SSD_PYTORCH_MEAN_RGB",
    "SSD_PYTORCH_COCO",
    "coco_categories",
    "detect_layout",
    "convert_torchvision_ssd300",
    "convert_ssd_pytorch",
    "published_file",
    "sha256_of",
    "fetch_published",
    "load_ssd_pytorch_vgg16_reducedfc",
    "model_from_state_dict",
    "fetch_state_dict",
    "read_state_file",
]


LAYOUTS = ("torchvision", "ssd.pytorch")

# What each network wants as input, per RGB channel on the 0..255 scale.
# torchvision ssd300_vgg16: image_mean [0.48235, 0.45882, 0.40784], image_std [1/255] *
# 3 on 0..1 RGB ("undo the 0-1 scaling of toTensor"), i.e. 255 * rgb - 255 * image_mean.
TORCHVISION_MEAN_255 = tuple(255.0 * m for m in (0.48235, 0.45882, 0.40784))
# ssd.pytorch: what its network sees is RGB minus (123, 117, 104) -- not BGR.
# data/voc0712.py, VOCDetection.pull_item: cv2.imread gives BGR (l.126), the transform
# subtracts MEANS = (104, 117,
# 123) from the B, G, R channels (data/config.py l.11; utils/augmentations.py
# SubtractMeans for training, data/__init__.py base_transform for testing), and then
# ``img = img[:, :, (2, 1, 0)] # to rgb`` (l.136) flips the channels before the tensor
# is made.  eval.py, which measures the mAP, goes through that same pull_item (l.379,
# BaseTransform(300, (104, 117, 123)) l.430), and demo/demo.ipynb flips too (``x = x[:,
# :, ::-1]``).  "BGR input with mean (104, 117, 123)" is the step before the flip.
# (test.py l.44-46 feeds pull_image's BGR without the flip: that script disagrees with
# training, so we follow training and eval.py.)  No channel swap at load.
SSD_PYTORCH_MEAN_RGB = (123.0, 117.0, 104.0)

# ssd.pytorch builds the ``coco`` priors for any class count but 21 (ssd.py: ``self.cfg
# = (coco, voc)[num_classes == 21]``): torchvision's sizes (data/config.py coco: min 21,
# 45, ..., max ..., 315), clipped as ssd.pytorch clips (cx, cy, w, h all clamped).
SSD_PYTORCH_COCO = DefaultBoxConfig(
    **{**TORCHVISION_COCO.__dict__, "clip_form": "cxcywh"}
)


def coco_categories() -> list[str]:
    """torchvision's COCO label names, index = label id: ``[0]`` is ``"__background__"``
    and the ids COCO leaves unused are ``"N/A"`` (91 entries;
    ``SSD300_VGG16_Weights.COCO_V1.meta``)."""
    return list(SSD300_VGG16_Weights.COCO_V1.meta["categories"])


# -------------------------------------------------------------------------- key layouts
def _torchvision_key_map() -> dict[str, str]:
    """torchvision ``ssd300_vgg16`` state-dict key -> ours, for the 71 tensors.

    torchvision (ssd.py, SSDFeatureExtractorVGG): ``backbone.features`` = vgg16.features
    up to conv4_3 (indices as in torchvision's VGG); ``backbone.scale_weight`` = the
    L2Norm scale; ``backbone.extra.0`` = [pool4, conv5_1, relu, conv5_2, relu, conv5_3,
    relu, Sequential(pool5, fc6, relu, fc7, relu)]; ``backbone.extra.1..4`` = [1x1 conv,
    relu, 3x3 conv, relu] for conv8..conv11; ``head.regression_head`` /
    ``head.classification_head``: ``module_list.k``, one 3x3 conv per source map,
    channels ``a * K + j`` for box a, value j -- as ours.
    """
    names: dict[str, str] = {"backbone.scale_weight": "l2norm.weight"}
    for index, name in zip(TORCHVISION_CONV_INDICES[:10], CONV_NAMES[:10]):
        names[f"backbone.features.{index}"] = f"backbone.{name}"
    for position, name in zip((1, 3, 5), CONV_NAMES[10:]):
        names[f"backbone.extra.0.{position}"] = f"fc.{name}"
    names["backbone.extra.0.7.1"] = "fc.fc6"
    names["backbone.extra.0.7.3"] = "fc.fc7"
    for k in range(4):
        names[f"backbone.extra.{k + 1}.0"] = f"extras.{k}.conv{k + 8}_1"
        names[f"backbone.extra.{k + 1}.2"] = f"extras.{k}.conv{k + 8}_2"
    for k in range(6):
        names[f"head.regression_head.module_list.{k}"] = f"loc_heads.{k}"
        names[f"head.classification_head.module_list.{k}"] = f"conf_heads.{k}"
    return _with_parts(names)


def _ssd_pytorch_key_map() -> dict[str, str]:
    """ssd.pytorch ``SSD`` state-dict key -> ours, for the 71 tensors.

    ssd.pytorch (ssd.py): ``vgg`` = nn.ModuleList of vgg() (convs at 0, 2, 5, ..., 28,
    pool5 at 30, conv6 = our fc6 at 31, conv7 = our fc7 at 33); ``L2Norm.weight``;
    ``extras`` = the 8 convs of add_extras() (conv8_1, conv8_2, ..., conv11_2; the ReLUs
    are F.relu in forward);
    ``loc.k`` / ``conf.k``: one 3x3 conv per source map, outputs permuted to
    channels-last and flattened as ours.
    """
    names: dict[str, str] = {"L2Norm.weight": "l2norm.weight"}
    for index, name in zip(TORCHVISION_CONV_INDICES, CONV_NAMES):
        module = "fc" if name.startswith("conv5") else "backbone"
        names[f"vgg.{index}"] = f"{module}.{name}"
    for name, index in SSD_PYTORCH_FC_INDICES.items():
        names[f"vgg.{index}"] = f"fc.{name}"
    for j in range(8):
        names[f"extras.{j}"] = f"extras.{j // 2}.conv{j // 2 + 8}_{j % 2 + 1}"
    for k in range(6):
        names[f"loc.{k}"] = f"loc_heads.{k}"
        names[f"conf.{k}"] = f"conf_heads.{k}"
    return _with_parts(names)


def _with_parts(prefixes: dict[str, str]) -> dict[str, str]:
    """Module-name map -> full-key map (``.weight`` and ``.bias``; the L2Norm scale is
    one key)."""
    full: dict[str, str] = {}
    for theirs, ours in prefixes.items():
        if ours == "l2norm.weight":
            full[theirs] = ours
            continue
        for part in ("weight", "bias"):
            full[f"{theirs}.{part}"] = f"{ours}.{part}"
    return full


_KEY_MAPS = {"torchvision": _torchvision_key_map, "ssd.pytorch": _ssd_pytorch_key_map}
# keys that identify each layout
_SIGNATURES = {
    "torchvision": (
        "backbone.features.0.weight",
        "head.classification_head.module_list.0.weight",
    ),
    "ssd.pytorch": ("vgg.0.weight", "L2Norm.weight", "conf.0.weight"),
}


def detect_layout(state_dict: Mapping[str, object]) -> str | None:
    """``"torchvision"``, ``"ssd.pytorch"`` or None, from the keys that only that layout
    has."""
    for layout, keys in _SIGNATURES.items():
        if all(k in state_dict for k in keys):
            return layout
    return None


def _rename(
    state_dict: Mapping[str, Tensor], layout: str, source: str
) -> dict[str, Tensor]:
    """Their keys -> ours, strictly: a missing or an unexpected key is a ValueError
    naming it."""
    key_map = _KEY_MAPS[layout]()
    missing = [k for k in key_map if k not in state_dict]
    extra = [k for k in state_dict if k not in key_map]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}")
        raise ValueError(
            f"{source}: not a complete {layout} SSD300 state dict: {'; '.join(parts)}"
        )
    return {ours: state_dict[theirs] for theirs, ours in key_map.items()}


def convert_torchvision_ssd300(
    state_dict: Mapping[str, Tensor], source: str = "state dict"
) -> dict[str, Tensor]:
    """torchvision ``ssd300_vgg16`` state dict -> an :class:`SSD300` state dict (without
    the ``input_scale``/``input_shift`` buffers: see :func:`set_input_transform`).

    The tensors are the same objects, renamed; no layout change is needed: both heads
    order their channels box by box, then value by value, and both flatten maps
    row-major.  Raises ValueError naming any missing or unexpected key.
    """
    return _rename(state_dict, "torchvision", source)


def convert_ssd_pytorch(
    state_dict: Mapping[str, Tensor], source: str = "state dict"
) -> dict[str, Tensor]:
    """amdegroot/ssd.pytorch ``SSD`` state dict -> an :class:`SSD300` state dict
    (without the input buffers).  Same tensors renamed; ValueError naming any missing or
    unexpected key."""
    return _rename(state_dict, "ssd.pytorch", source)


def _load_converted(
    model: SSD300, converted: dict[str, Tensor], layout: str, source: str
) -> None:
    """Load ``converted`` into ``model`` after checking every shape (errors name their
    key and ours)."""
    theirs_of = {ours: theirs for theirs, ours in _KEY_MAPS[layout]().items()}
    own = model.state_dict()
    for key, value in converted.items():
        if not isinstance(value, Tensor):
            raise ValueError(
                f"{source}: {theirs_of[key]} is a {type(value).__name__}, not a tensor"
            )
        if value.shape != own[key].shape:
            raise ValueError(
                f"{source}: {theirs_of[key]} has shape {list(value.shape)}, SSD300 "
                f"expects {list(own[key].shape)} (for our {key})"
            )
    model.load_state_dict(converted, strict=False)
    not_loaded = [
        k for k in own if k not in converted and k not in ("input_scale", "input_shift")
    ]
    if not_loaded:  # cannot happen with a complete key map; a guard against editing one
        raise ValueError(f"{source}: nothing for {not_loaded[:4]}")


def _num_classes(state_dict: Mapping[str, Tensor], layout: str, source: str) -> int:
    """Classes (with background) from the first conf head: ``[4 * C, 512, 3, 3]``."""
    key = (
        "head.classification_head.module_list.0.weight"
        if layout == "torchvision"
        else "conf.0.weight"
    )
    weight = state_dict[key]
    # 4 boxes per cell on conv4_3 in both layouts
    anchors = boxes_per_cell(TORCHVISION_COCO)[0]
    if (
        not isinstance(weight, Tensor)
        or weight.ndim != 4
        or weight.shape[0] % anchors
        or weight.shape[0] < 2 * anchors
    ):
        shape = (
            list(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        )
        raise ValueError(
            f"{source}: {key} has shape {shape}, expected [{anchors} * classes, 512, "
            "3, 3]"
        )
    return weight.shape[0] // anchors


def model_from_state_dict(
    state_dict: Mapping[str, Tensor], source: str
) -> tuple[SSD300, tuple[str, ...]]:
    """An :class:`SSD300` (on the CPU, train mode) with the weights of a state dict of
    either layout (:func:`detect_layout`), and its class names (without background).

    The class count comes from the conf head; the default boxes, labels and input
    transform from the layout: torchvision -> ``TORCHVISION_COCO`` boxes, COCO names for
    91 outputs, ``rgb - 255 (0.48235, 0.45882, 0.40784)`` after a float resize (as its
    ``GeneralizedRCNNTransform``); ssd.pytorch -> ``SSD_PYTORCH_VOC`` boxes and VOC
    names for 21 outputs (``SSD_PYTORCH_COCO`` boxes otherwise, as ssd.pytorch does),
    ``rgb - (123, 117, 104)`` after a uint8 resize (OpenCV's, as it does).  Other
    counts: numbered names.
    """
    layout = detect_layout(state_dict)
    if layout is None:
        some = sorted(state_dict)[:5]
        raise ValueError(
            f"{source}: neither a torchvision ssd300_vgg16 nor an ssd.pytorch SSD300 "
            f"state dict (expected {_SIGNATURES['torchvision'][0]!r} or "
            f"{_SIGNATURES['ssd.pytorch'][0]!r} ...), got keys "
            f"{some}{' ...' if len(state_dict) > 5 else ''}; a checkpoint of this "
            "package goes to --checkpoint (detect) / detector.load_detector instead"
        )
    num_classes = _num_classes(state_dict, layout, source)
    if layout == "torchvision":
        converted = convert_torchvision_ssd300(state_dict, source)
        prior_config = TORCHVISION_COCO
        categories = coco_categories()
        names = categories[1:] if num_classes == len(categories) else None
        mean_255, resize = TORCHVISION_MEAN_255, "float"
    else:
        converted = convert_ssd_pytorch(state_dict, source)
        voc = num_classes == len(VOC_CLASSES) + 1
        prior_config = SSD_PYTORCH_VOC if voc else SSD_PYTORCH_COCO
        names = list(VOC_CLASSES) if voc else None
        mean_255, resize = SSD_PYTORCH_MEAN_RGB, "uint8"
    if names is None:
        names = [str(k) for k in range(1, num_classes)]
    with torch.device("meta"):  # no time spent on an init that the weights overwrite
        model = SSD300(num_classes=num_classes, prior_config=prior_config)
    model = model.to_empty(device="cpu")
    _load_converted(model, converted, layout, source)
    with torch.no_grad():
        set_input_affine(model, mean_255)
    model.input_transform = InputTransform(prior_config.image_size, resize)
    return model, tuple(names)


def _vgg16_reducedfc_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of ssd.pytorch's ``vgg`` ModuleList (vgg16_reducedfc.pth), from
    VGG16_LAYERS."""
    shapes: dict[str, tuple[int, ...]] = {}
    channels = [v for v in VGG16_LAYERS if isinstance(v, int)]
    c_in = 3
    for index, c_out in zip(TORCHVISION_CONV_INDICES, channels):
        shapes[f"{index}.weight"], shapes[f"{index}.bias"] = (
            (c_out, c_in, 3, 3),
            (c_out,),
        )
        c_in = c_out
    fc6, fc7 = SSD_PYTORCH_FC_INDICES["fc6"], SSD_PYTORCH_FC_INDICES["fc7"]
    # conv6: 3x3, dilation 6
    shapes[f"{fc6}.weight"], shapes[f"{fc6}.bias"] = (
        (1024, 512, 3, 3),
        (1024,),
    )
    # conv7: 1x1
    shapes[f"{fc7}.weight"], shapes[f"{fc7}.bias"] = (
        (1024, 1024, 1, 1),
        (1024,),
    )
    return shapes


def load_ssd_pytorch_vgg16_reducedfc(
    path: str | Path | None = None,
    *,
    progress: bool = True,
    expected_sha256: str | None = None,
) -> dict[str, Tensor]:
    """ssd.pytorch's ``vgg16_reducedfc.pth`` state dict (``"0.weight"`` ...
    ``"33.bias"``), checked strictly: exactly the 30 keys of its ``vgg`` ModuleList with
    their shapes.

    ``path`` None: the cached or downloaded published file.
    ``SSD300(backbone_weights=path)`` reads the same file (as Caffe-style weights: RGB
    on 0..255 minus the mean, the input ssd.pytorch trains it with); this function is
    for checking a copy, and for :func:`fetch_published`.
    """
    source: str
    if path is None:
        state = fetch_state_dict(
            "ssd-pytorch-vgg16-reducedfc", progress, expected_sha256
        )
        source = str(published_file("ssd-pytorch-vgg16-reducedfc"))
    else:
        state, source = read_state_file(path, expected_sha256), str(path)
    expected = _vgg16_reducedfc_shapes()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise ValueError(
            f"{source}: not ssd.pytorch's vgg16_reducedfc layout: missing "
            f"{missing[:4]}, unexpected {extra[:4]}"
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(
                f"{source}: {key} has shape {list(state[key].shape)}, expected "
                f"{list(shape)}"
            )
    return state


def fetch_published(
    name: str, *, progress: bool = True, expected_sha256: str | None = None
) -> Path:
    """Make sure the file of published weights ``name`` is in torch.hub's cache
    (downloading it if needed, checking it as :func:`load_pretrained` does) and return
    its path.

    ``fetch_published("ssd-pytorch-vgg16-reducedfc")`` is the way to ssd.pytorch's
    backbone for ``SSD300(backbone_weights=...)``.
    """
    weights = _published(name)
    if weights.layout == "ssd.pytorch-vgg":
        load_ssd_pytorch_vgg16_reducedfc(
            progress=progress, expected_sha256=expected_sha256
        )
    else:
        state = fetch_state_dict(name, progress, expected_sha256)
        _rename(state, weights.layout, str(published_file(name)))
    return published_file(name)
