"""ImageNet VGG16 weights for SSD's backbone: where they come from, and how their keys
and input convention map onto :class:`ssd_tutorial.model.SSD300`.

Three sources (see ``SSD300(backbone_weights=...)``): torchvision's ``VGG16_Weights``
(the classification model ``IMAGENET1K_V1``, whose fc6/fc7 become SSD's by
:func:`subsample_fc`, or the Caffe-ported convs ``IMAGENET1K_FEATURES``), ssd.pytorch's
``vgg16_reducedfc.pth``, and a state dict of our own backbone.  The model always takes
ImageNet-normalized RGB; weights trained on Caffe-style input (RGB on 0..255 minus a
mean) get a fixed affine map in front (:func:`set_input_affine`).
:func:`download_state_dict` is the package's one network call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import VGG16_Weights

from ssd_tutorial.cli import ExternalError
from ssd_tutorial.preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CONV_NAMES",
    "TORCHVISION_CONV_INDICES",
    "SSD_PYTORCH_FC_INDICES",
    "CAFFE_MEAN",
    "IMAGENET_WEIGHTS",
    "subsample_fc",
    "is_ssd_pytorch_vgg",
    "download_state_dict",
    "read_backbone_state",
    "map_backbone_keys",
    "backbone_conv_keys",
    "set_input_affine",
]

# The 13 convs of VGG16 "D" in order (conv5_x live in SSD300.fc, the rest in .backbone).
# fmt: skip
CONV_NAMES = (
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv5_1",
    "conv5_2",
    "conv5_3",
)
# Index of every conv of torchvision's vgg16().features, in CONV_NAMES order.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# ssd.pytorch's ``vgg`` nn.ModuleList (ssd.py, vgg()) has the same conv indices, then
# pool5 at 30, conv6 (our fc6) at 31 and conv7 (our fc7) at 33; its vgg16_reducedfc.pth
# holds exactly that ModuleList's state dict ("0.weight" ... "33.bias").
SSD_PYTORCH_FC_INDICES = {"fc6": 31, "fc7": 33}
# torchvision VGG16_Weights.IMAGENET1K_FEATURES transforms: RGB in 0..1 minus this mean,
# x 255
CAFFE_MEAN = (0.48235, 0.45882, 0.40784)
IMAGENET_WEIGHTS = {
    # backbone_weights name -> (torchvision VGG16_Weights member, file name for the
    # offline hint)
    "imagenet": ("IMAGENET1K_V1", "vgg16_imagenet.pt"),
    "imagenet_features": ("IMAGENET1K_FEATURES", "vgg16_features.pt"),
}


def subsample_fc(
    fc6_weight: Tensor,
    fc6_bias: Tensor,
    fc7_weight: Tensor,
    fc7_bias: Tensor,
    keep_every: int = 4,
    tap_every: int = 3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """VGG16's fully connected fc6/fc7 as SSD's convolutions, by subsampling (paper
    p.7).

    ``fc6_weight [4096, 512*7*7]`` is a 7x7 convolution over pool5 ``[512, 7, 7]``;
    keeping every ``keep_every``-th output unit and every ``tap_every``-th kernel tap in
    each direction gives ``[1024, 512, 3, 3]``: a 3x3 kernel whose taps lie 3 cells
    apart on the stride-32 map, i.e. 6 cells apart on SSD's stride-16 pool5 -- hence
    dilation 6.  ``fc7_weight [4096, 4096]`` becomes ``[1024, 1024, 1, 1]``.  The paper
    does not say which units it kept; we keep every 4th unit starting at 0, and taps 0,
    3, 6 (DeepLab, which SSD follows here, calls this subsampling "decimation").
    """
    out6, in6 = fc6_weight.shape
    grid = 7
    channels = in6 // (grid * grid)
    if channels * grid * grid != in6 or fc7_weight.shape != (out6, out6):
        raise ValueError(
            "subsample_fc expects fc6 [N, C*7*7] and fc7 [N, N], got "
            f"{list(fc6_weight.shape)} and {list(fc7_weight.shape)}"
        )
    w6 = fc6_weight.reshape(out6, channels, grid, grid)  # [4096, 512, 7, 7]
    w6 = w6[::keep_every, :, ::tap_every, ::tap_every].contiguous()  # [1024, 512, 3, 3]
    b6 = fc6_bias[::keep_every].contiguous()  # [1024]
    w7 = fc7_weight[::keep_every, ::keep_every]  # [1024, 1024]
    w7 = w7.reshape(w7.shape[0], w7.shape[1], 1, 1).contiguous()  # [1024, 1024, 1, 1]
    b7 = fc7_bias[::keep_every].contiguous()  # [1024]
    return w6, b6, w7, b7


def is_ssd_pytorch_vgg(state: Mapping[str, Any]) -> bool:
    """Is ``state`` ssd.pytorch's ``vgg`` ModuleList (keys "0.weight" .. "33.bias")?"""
    return "0.weight" in state and f"{SSD_PYTORCH_FC_INDICES['fc7']}.weight" in state


def download_state_dict(
    source: Any, progress: bool = False, **kwargs: Any
) -> dict[str, Tensor]:
    """The one place that touches the network (tests replace it): a torchvision weights
    enum member (``VGG16_Weights.IMAGENET1K_V1``, ``SSD300_VGG16_Weights.COCO_V1``)
    through its ``get_state_dict``, or a URL through
    ``torch.hub.load_state_dict_from_url``; both read with ``weights_only=True`` into
    torch.hub's cache.  ``kwargs`` go to that call."""
    if isinstance(source, str):
        return torch.hub.load_state_dict_from_url(
            source, map_location="cpu", progress=progress, weights_only=True, **kwargs
        )
    return source.get_state_dict(progress=progress, **kwargs)


def _fetch_imagenet_vgg16(name: str) -> dict[str, Tensor]:
    """torchvision's VGG16 state dict for ``backbone_weights=name`` (torch hub cache,
    else download).  Any failure (no network, bad cache) becomes a RuntimeError that
    says what to do offline."""
    member, file_name = IMAGENET_WEIGHTS[name]
    try:
        return download_state_dict(getattr(VGG16_Weights, member))
    except Exception as err:
        raise ExternalError(
            f"backbone_weights={name!r}: could not get torchvision's "
            f"VGG16_Weights.{member} "
            f"({type(err).__name__}: {err}). Without a network: on a machine with "
            "internet run\n"
            '  python -c "import torch, torchvision; '
            "torch.save(torchvision.models.VGG16_Weights."
            f"{member}.get_state_dict(progress=True), '{file_name}')\"\n"
            f"copy {file_name} here and pass backbone_weights='{file_name}' "
            "(or put the downloaded file in the torch hub cache, "
            "~/.cache/torch/hub/checkpoints/), "
            "or train from scratch with backbone_weights=None."
        ) from err


def read_backbone_state(weights: str | Path) -> tuple[dict[str, Tensor], str]:
    """``(state dict, description)`` for ``backbone_weights``: a name of
    :data:`IMAGENET_WEIGHTS` (downloaded once) or a state-dict file, read with
    ``weights_only=True``; a missing or unreadable file is an error naming it."""
    if isinstance(weights, str) and weights in IMAGENET_WEIGHTS:
        return _fetch_imagenet_vgg16(
            weights
        ), f"torchvision VGG16_Weights.{IMAGENET_WEIGHTS[weights][0]}"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone_weights: no file at {str(path)!r} (pass 'imagenet', None, or "
            "the path of a saved VGG16 state dict)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors of all kinds: say which file
        raise ValueError(
            f"backbone_weights: {str(path)!r} is not a loadable state dict: {err}"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(
            f"backbone_weights: {str(path)!r} holds a {type(state).__name__}, not a "
            "state dict"
        )
    return state, str(path)


def _module_of(conv_name: str) -> str:
    return "fc" if conv_name.startswith("conv5") else "backbone"


def backbone_conv_keys() -> list[str]:
    """The 26 keys of SSD300's VGG convs (``backbone.conv1_1.weight`` ...
    ``fc.conv5_3.bias``)."""
    return [
        f"{_module_of(n)}.{n}.{part}" for n in CONV_NAMES for part in ("weight", "bias")
    ]


def map_backbone_keys(
    state: Mapping[str, Tensor], own_keys: set[str], source: str
) -> tuple[dict[str, Tensor], bool]:
    """torchvision ``features.N.*`` (+ ``classifier.*``), ssd.pytorch ``N.*`` or our own
    ``backbone.*``/``fc.*`` keys -> SSD300's keys.  Returns the mapped tensors and
    whether fc6/fc7 came with them (subsampled from a finite classifier:
    :func:`subsample_fc`)."""
    mapped = {
        k: v
        for k, v in state.items()
        if k.startswith(("backbone.", "fc.")) and k in own_keys
    }
    # torchvision's "features.N" and ssd.pytorch's bare "N" share the conv indices
    prefix = "" if is_ssd_pytorch_vgg(state) else "features."
    for index, name in zip(TORCHVISION_CONV_INDICES, CONV_NAMES):
        for part in ("weight", "bias"):
            if f"{prefix}{index}.{part}" in state:
                mapped[f"{_module_of(name)}.{name}.{part}"] = state[
                    f"{prefix}{index}.{part}"
                ]
    if prefix == "":
        for name, index in SSD_PYTORCH_FC_INDICES.items():
            for part in ("weight", "bias"):
                if f"{index}.{part}" in state:
                    mapped[f"fc.{name}.{part}"] = state[f"{index}.{part}"]
    has_fc = "fc.fc6.weight" in mapped and "fc.fc7.weight" in mapped
    fc_keys = (
        "classifier.0.weight",
        "classifier.0.bias",
        "classifier.3.weight",
        "classifier.3.bias",
    )
    if all(k in state for k in fc_keys) and all(
        bool(torch.isfinite(state[k]).all()) for k in fc_keys
    ):
        fc6_w, fc6_b, fc7_w, fc7_b = subsample_fc(*(state[k] for k in fc_keys))
        mapped.update(
            {
                "fc.fc6.weight": fc6_w,
                "fc.fc6.bias": fc6_b,
                "fc.fc7.weight": fc7_w,
                "fc.fc7.bias": fc7_b,
            }
        )
        has_fc = True
    if not mapped:
        raise ValueError(
            f"backbone_weights from {source}: no VGG16 keys found (expected "
            "'features.0.weight' ..., '0.weight' ... (vgg16_reducedfc.pth) or "
            f"'backbone.conv1_1.weight' ...), got {sorted(state)[:4]}"
        )
    return mapped, has_fc


def set_input_affine(
    model: nn.Module, mean_255: Sequence[float] | None, scale: float = 1.0
) -> None:
    """Make ``model`` feed its weights ``(rgb_255 - mean_255) * scale`` while it takes,
    like every model of this package, ImageNet-normalized RGB ``x = (rgb_255 / 255 -
    mean) / std``.

    From ``rgb_255 = 255 (x std + mean)``: ``input_scale = 255 std scale`` and
    ``input_shift = (255 mean - mean_255) scale``, per channel, applied before conv1_1.
    ``mean_255`` None: the identity (weights trained on ImageNet-normalized input).
    """
    if mean_255 is None:
        model.input_scale.fill_(1.0)
        model.input_shift.zero_()
        return
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    target = torch.tensor([float(m) for m in mean_255], dtype=torch.float64).view(
        1, 3, 1, 1
    )
    model.input_scale.copy_(255.0 * std * scale)
    model.input_shift.copy_((255.0 * mean - target) * scale)
