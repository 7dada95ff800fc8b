"""The SSD300 network: VGG16 turned into six source feature maps, and two 3x3 heads on
each.

Paper p.4, fig. 2.  Layer by layer (sizes for a 300 x 300 input, ``width_mult = 1``):

* VGG16 conv1_1 .. conv4_3 (pool3 in ceil mode, so 75 -> 38)     -> source 1: conv4_3,
  512 x 38 x 38, rescaled by ``L2Norm`` (a learned scale per channel, initialised to 20)
* pool4, conv5_1 .. conv5_3, pool5 3x3 stride 1, fc6 as a 3x3 conv with dilation 6
  (1024), fc7 as a 1x1 conv (1024)                                          -> source 2:
  fc7, 1024 x 19 x 19
* conv8_1 1x1 256, conv8_2 3x3 stride 2 512                         -> source 3: 512 x
  10 x 10
* conv9_1 1x1 128, conv9_2 3x3 stride 2 256                         -> source 4: 256 x 5
  x 5
* conv10_1 1x1 128, conv10_2 3x3 (no padding) 256                   -> source 5: 256 x 3
  x 3
* conv11_1 1x1 128, conv11_2 3x3 (no padding) 256                   -> source 6: 256 x 1
  x 1

On each source map k, a 3x3 conv predicts ``A_k * 4`` offsets (loc) and another ``A_k *
C`` class scores (conf), with A = (4, 6, 6, 6, 4, 4) boxes per cell.  Their outputs are
flattened in the order of :func:`ssd_tutorial.default_boxes.default_boxes`: map, row y,
column x, box.

:class:`SSD512` is the same network for 512 x 512 inputs with seven source maps (64, 32,
16, 8, 4, 2, 1): conv10_2 and conv11_2 get stride 2, and conv12_2 (a 4x4 conv) is added.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssd_tutorial.backbone_weights import (
    CAFFE_MEAN,
    CONV_NAMES,
    backbone_conv_keys,
    is_ssd_pytorch_vgg,
    map_backbone_keys,
    read_backbone_state,
    set_input_affine,
    subsample_fc,
)
from ssd_tutorial.default_boxes import (
    SSD300_VOC,
    SSD512_VOC,
    DefaultBoxConfig,
    boxes_per_cell,
    default_boxes,
)
from ssd_tutorial.preprocessing import InputTransform

__all__ = [
    "TINY_WIDTH",
    "VGG16_LAYERS",
    "L2Norm",
    "SSD300",
    "SSD512",
    "build_ssd",
    "tiny_ssd300",
    "subsample_fc",
    "describe_layers",
]

# The CPU preset: every channel count x 1/8 (conv1_1 has 8 channels, fc7 128).  Same 300
# x 300 input, same layers, same 8732 default boxes; about 64 times fewer weights.
TINY_WIDTH = 0.125

# VGG16 "D" up to conv5_3: channel counts, "M" = 2x2 max pool, "C" = that in ceil mode.
# fmt: skip
VGG16_LAYERS: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "C",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
)
# Extra layers (paper fig. 2): (1x1 channels, 3x3 channels, stride, padding) for
# conv8..conv11.
_EXTRAS = ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))
# SSD512 (the paper's footnote in Sec. 3.4: "we add extra conv12_2 for prediction"):
# conv8_2 .. conv11_2 all 3x3 stride 2 padding 1 (512 -> 64, 32, 16, 8, 4, 2), then
# conv12_1 1x1 128 and conv12_2 a 4x4 conv, stride 1, padding 1 (2 -> 1), as in the
# released Caffe net (ssd_pascal_512.py's AddExtraLayers, where they are named conv6_x
# .. conv10_x).  (1x1 channels, out channels, stride, padding, kernel). torchvision's
# SSDFeatureExtractorVGG(highres=True) keeps SSD300's unpadded conv10/conv11 (maps 64,
# 32, 16, 8, 6, 4, 1): a different net.
_EXTRAS_512 = (
    (256, 512, 2, 1, 3),
    (128, 256, 2, 1, 3),
    (128, 256, 2, 1, 3),
    (128, 256, 2, 1, 3),
    (128, 256, 1, 1, 4),
)


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


class L2Norm(nn.Module):
    """Normalize each position's channel vector to unit length, then scale channel c by
    ``weight[c]``.

    ``[B, C, H, W]`` -> ``[B, C, H, W]``.  Paper p.7 (after ParseNet): conv4_3's
    features have a larger scale than the later layers'; L2 normalization with a learned
    scale (initialised to ``init_scale`` = 20, as in the released code) brings them in
    line.  Computed in float32 so that it behaves the same under bf16/fp16 autocast.
    """

    def __init__(
        self, channels: int, init_scale: float = 20.0, eps: float = 1e-10
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init_scale)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        normed = F.normalize(x.float(), p=2.0, dim=1, eps=self.eps)  # [B, C, H, W]
        return (normed * self.weight.float().view(1, -1, 1, 1)).to(x.dtype)


def _conv(c_in: int, c_out: int, kernel: int, **kwargs: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=kernel, **kwargs)


def _check_ssd_arguments(
    model_name: str,
    num_classes: float,
    width_mult: float,
    input_convention: str,
    prior_config: DefaultBoxConfig,
    extras: tuple[tuple[int, ...], ...],
) -> tuple[int, ...]:
    """Raise ValueError for an argument :class:`SSD300` cannot build from (before any
    layer is made); else return ``prior_config``'s boxes per cell, one per source
    map."""
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(
            "num_classes counts background too and must be an integer >= 2, got "
            f"{num_classes}"
        )
    if not width_mult > 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    if input_convention not in ("auto", "imagenet", "caffe"):
        raise ValueError(
            "input_convention must be 'auto', 'imagenet' or 'caffe', got "
            f"{input_convention!r}"
        )
    anchors = boxes_per_cell(prior_config)
    if len(anchors) != len(extras) + 2:
        raise ValueError(
            f"{model_name} has {len(extras) + 2} source maps; prior_config has "
            f"{len(anchors)}"
        )
    return anchors


def _build_conv4_3(width_mult: float) -> tuple[nn.Sequential, int]:
    """VGG16 conv1_1 .. conv4_3 (+ ReLU), the first source map: ``[B, 3, 300, 300]`` ->
    ``[B, C, 38, 38]``.  Returns the layers and C (512 x ``width_mult``)."""
    layers: list[tuple[str, nn.Module]] = []
    convs = iter(CONV_NAMES)
    c_in, pools = 3, 0
    for v in VGG16_LAYERS[:13]:  # up to conv4_3
        if v in ("M", "C"):
            pools += 1
            # ceil: 75 -> 38
            layers.append((f"pool{pools}", nn.MaxPool2d(2, 2, ceil_mode=(v == "C"))))
        else:
            name = next(convs)
            c_out = _scaled(v, width_mult)
            layers += [
                (name, _conv(c_in, c_out, 3, padding=1)),
                (f"relu{name[4:]}", nn.ReLU(inplace=True)),
            ]
            c_in = c_out
    return nn.Sequential(OrderedDict(layers)), c_in


def _build_fc7(c_in: int, width_mult: float) -> nn.Sequential:
    """pool4, conv5_x, pool5, fc6, fc7 (+ ReLUs), the second source map: conv4_3's
    ``[B, c_in, 38, 38]`` -> ``[B, 1024 x width_mult, 19, 19]``."""
    c = lambda n: _scaled(n, width_mult)  # noqa: E731
    layers: list[tuple[str, nn.Module]] = [("pool4", nn.MaxPool2d(2, 2))]
    for name in CONV_NAMES[10:]:
        layers += [
            (name, _conv(c_in, c(512), 3, padding=1)),
            (f"relu{name[4:]}", nn.ReLU(inplace=True)),
        ]
        c_in = c(512)
    layers += [
        # paper p.7: "we change pool5 from 2x2-s2 to 3x3-s1"
        ("pool5", nn.MaxPool2d(3, stride=1, padding=1)),
        # paper p.7: fc6 and fc7 become convolutions, fc6 with the atrous (dilated)
        # algorithm
        ("fc6", _conv(c_in, c(1024), 3, padding=6, dilation=6)),
        ("relu6", nn.ReLU(inplace=True)),
        ("fc7", _conv(c(1024), c(1024), 1)),
        ("relu7", nn.ReLU(inplace=True)),
    ]
    return nn.Sequential(OrderedDict(layers))


def _build_extras(
    extras: tuple[tuple[int, ...], ...], width_mult: float
) -> nn.ModuleList:
    """conv8 .. conv11 (conv12 for SSD512), the last source maps: one block per spec
    ``(1x1 channels, out channels, stride, padding[, kernel])`` of ``extras``, each
    ``[B, C_in, f, f]`` -> ``[B, out x width_mult, f', f']``, starting from fc7's
    channels."""
    c = lambda n: _scaled(n, width_mult)  # noqa: E731
    blocks = []
    c_in = c(1024)
    for i, (mid, out, stride, pad, *kernel) in enumerate(extras, start=8):
        blocks.append(
            nn.Sequential(
                OrderedDict(
                    [
                        (f"conv{i}_1", _conv(c_in, c(mid), 1)),
                        (f"relu{i}_1", nn.ReLU(inplace=True)),
                        (
                            f"conv{i}_2",
                            _conv(
                                c(mid),
                                c(out),
                                kernel[0] if kernel else 3,
                                stride=stride,
                                padding=pad,
                            ),
                        ),
                        (f"relu{i}_2", nn.ReLU(inplace=True)),
                    ]
                )
            )
        )
        c_in = c(out)
    return nn.ModuleList(blocks)


def _build_heads(
    source_channels: tuple[int, ...], anchors: tuple[int, ...], num_classes: int
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The 3x3 heads on each source map ``[B, C_k, f, f]``: loc ``-> [B, A_k * 4, f,
    f]`` and conf ``-> [B, A_k * num_classes, f, f]``.  The loc heads are made first
    (the order decides the random initialisation)."""
    loc_heads = nn.ModuleList(
        _conv(ch, a * 4, 3, padding=1) for ch, a in zip(source_channels, anchors)
    )
    conf_heads = nn.ModuleList(
        _conv(ch, a * num_classes, 3, padding=1)
        for ch, a in zip(source_channels, anchors)
    )
    return loc_heads, conf_heads


class SSD300(nn.Module):
    """SSD300 (paper p.4, fig. 2) on a VGG16 backbone.

    Args:
        num_classes: classes including background (21 for VOC: 20 + background at index
        0).
        backbone_weights: ``None`` (Xavier init everywhere, train from scratch),
        ``"imagenet"``
            (torchvision's ``VGG16_Weights.IMAGENET1K_V1``, downloaded or from the torch
            hub cache: conv1_1 .. conv5_3, and fc6/fc7 subsampled from its classifier as
            in the paper), ``"imagenet_features"`` (``IMAGENET1K_FEATURES``: the convs
            only), or a path to a local state dict of a torchvision ``vgg16``
            (``features.N.*`` keys, optionally ``classifier.*``), of this model's
            backbone (``backbone.*``, ``fc.*``), or ssd.pytorch's
            ``vgg16_reducedfc.pth`` (``N.*`` keys, convs and the reduced fc6/fc7 at
            31/33; see :func:`ssd_tutorial.pretrained.fetch_published`).
        width_mult: multiplies every channel count; ``TINY_WIDTH`` (0.125) is the CPU
        preset.
            Pretrained weights need ``width_mult = 1``.
        input_convention: what input the backbone weights expect.  ``"auto"``: the
        Caffe-style
            IMAGENET1K_FEATURES weights (0..255 minus mean) unless the state dict
            carries finite ``classifier`` weights (a torchvision classification
            checkpoint, which expects ImageNet-normalized input) or our own fc6/fc7;
            ssd.pytorch's vgg16_reducedfc.pth (Caffe-converted, fc6/fc7 included) is
            Caffe-style.  ``"imagenet"`` or ``"caffe"`` force one.  The model always
            *takes* ImageNet-normalized input; for Caffe weights it converts it first.

    ``forward(x [B, 3, 300, 300] float, ImageNet-normalized)`` ->
    ``(loc [B, 8732, 4], conf_logits [B, 8732, num_classes])`` in default-box order.
    The model owns its layout: ``prior_config`` (a :class:`DefaultBoxConfig`, saved in
    training checkpoints) and ``default_boxes()`` (``[P, 4]`` cxcywh, the order of the
    outputs); and ``input_transform`` (raw uint8 image -> the input it takes).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone_weights: str | Path | None = None,
        width_mult: float = 1.0,
        *,
        input_convention: str = "auto",
        prior_config: DefaultBoxConfig = SSD300_VOC,
        _extras: tuple[tuple[int, ...], ...] = _EXTRAS,
    ) -> None:
        super().__init__()
        anchors = _check_ssd_arguments(
            type(self).__name__,
            num_classes,
            width_mult,
            input_convention,
            prior_config,
            _extras,
        )
        # the model owns its default boxes: default_boxes()
        self.prior_config = prior_config
        self.image_size = int(prior_config.image_size)
        # uint8 [3, H, W] -> float [3, S, S]; published weights may bring another resize
        self.input_transform = InputTransform(self.image_size)
        self.num_classes = int(num_classes)
        self.width_mult = float(width_mult)
        self.boxes_per_cell = anchors
        c = lambda n: _scaled(n, width_mult)  # noqa: E731

        # Made and registered in this order: torch's default init draws from the global
        # generator as each conv is made, and _xavier_init walks self.modules() in
        # registration order, so the order decides a seeded model's weights.
        self.backbone, c_in = _build_conv4_3(width_mult)  # the first source map
        self.l2norm = L2Norm(c(512))
        self.fc = _build_fc7(c_in, width_mult)  # the second source map
        self.extras = _build_extras(_extras, width_mult)  # the last ones
        self.source_channels = (c(512), c(1024)) + tuple(c(spec[1]) for spec in _extras)
        self.loc_heads, self.conf_heads = _build_heads(
            self.source_channels, anchors, self.num_classes
        )

        # x -> x * input_scale + input_shift before conv1_1; identity unless Caffe-style
        # weights.
        self.register_buffer("input_scale", torch.ones(1, 3, 1, 1))
        self.register_buffer("input_shift", torch.zeros(1, 3, 1, 1))

        self._xavier_init()
        if backbone_weights is not None:
            if width_mult != 1.0:
                raise ValueError(
                    f"backbone_weights={backbone_weights!r} needs width_mult=1.0 (the "
                    "pretrained VGG16 has full channel counts), got "
                    f"width_mult={width_mult}"
                )
            self.load_backbone(backbone_weights, input_convention)

    def _xavier_init(self) -> None:
        # Caffe SSD: every new conv gets Xavier (uniform) weights and zero biases.
        # Departure:
        # torch's xavier_uniform_ has variance 2 / (fan_in + fan_out), Caffe's filler 1
        # / fan_in; recipes.build_model(init="caffe_xavier") gives Caffe's (the VOC
        # preset does).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    # -------------------------------------------------------------- pretrained backbone
    def load_backbone(
        self, weights: str | Path, input_convention: str = "auto"
    ) -> None:
        """Load ImageNet VGG16 weights into conv1_1 .. conv5_3 (and fc6/fc7 when
        available).

        ``weights`` is ``"imagenet"``, ``"imagenet_features"`` or a path; see the class
        docstring and :mod:`ssd_tutorial.backbone_weights`, which knows the file
        layouts.
        """
        state, source = read_backbone_state(weights)
        mapped, has_fc = map_backbone_keys(state, set(self.state_dict()), source)
        missing = [k for k in backbone_conv_keys() if k not in mapped]
        if missing:
            raise ValueError(
                f"backbone_weights from {source}: missing "
                f"{missing[:4]}{' ...' if len(missing) > 4 else ''}"
            )
        own = self.state_dict()
        for key, value in mapped.items():
            if own[key].shape != value.shape:
                raise ValueError(
                    f"backbone_weights from {source}: {key} has shape "
                    f"{list(value.shape)}, the model expects {list(own[key].shape)}"
                )
        self.load_state_dict(mapped, strict=False)
        if input_convention == "auto":
            input_convention = (
                "imagenet" if has_fc and not is_ssd_pytorch_vgg(state) else "caffe"
            )
        with torch.no_grad():  # Caffe weights want 255 * (rgb - CAFFE_MEAN)
            caffe = input_convention == "caffe"
            set_input_affine(self, [255.0 * m for m in CAFFE_MEAN] if caffe else None)

    def default_boxes(self) -> Tensor:
        """``[P, 4]`` cxcywh normalized: the default boxes of :attr:`prior_config`, in
        the order of ``forward``'s outputs (8732 for SSD300, 24564 for SSD512)."""
        return default_boxes(self.prior_config)

    # ------------------------------------------------------------------ forward
    def source_maps(self, x: Tensor) -> list[Tensor]:
        """The six source feature maps for ``x [B, 3, H, W]``: conv4_3 (after L2Norm),
        fc7, conv8_2, conv9_2, conv10_2, conv11_2 -> ``[B, C_k, f_k, f_k]`` with f =
        (38, 19, 10, 5, 3, 1) at 300 px."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"SSD300 takes images [B, 3, H, W], got {list(x.shape)}")
        # identity unless Caffe-style backbone weights
        x = x * self.input_scale + self.input_shift
        x = self.backbone(x)  # conv4_3: [B, 512w, 38, 38]
        sources = [self.l2norm(x)]
        x = self.fc(x)  # fc7: [B, 1024w, 19, 19]
        sources.append(x)
        for block in self.extras:
            x = block(x)
            sources.append(x)
        return sources

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, 3, 300, 300]`` -> ``(loc [B, 8732, 4], conf_logits [B, 8732,
        num_classes])``."""
        sources = self.source_maps(x)
        batch = x.shape[0]
        locs, confs = [], []
        for source, loc_head, conf_head in zip(
            sources, self.loc_heads, self.conf_heads
        ):
            # a head's channel a*4 + j is offset j of box a; moving channels last puts
            # the boxes of one cell together and the cells in row-major order, like
            # default_boxes()
            loc = loc_head(source).permute(0, 2, 3, 1)  # [B, f, f, A*4]
            conf = conf_head(source).permute(0, 2, 3, 1)  # [B, f, f, A*C]
            locs.append(loc.reshape(batch, -1, 4))  # [B, f*f*A, 4]
            confs.append(conf.reshape(batch, -1, self.num_classes))  # [B, f*f*A, C]
        # [B, 8732, 4], [B, 8732, C]
        return torch.cat(locs, dim=1), torch.cat(confs, dim=1)

    # ------------------------------------------------------------------ introspection
    def trunk_layers(self) -> Iterator[tuple[str, nn.Module, int | None]]:
        """The layers from the image to conv11_2 in order, as ``(name, module,
        source_index)``.

        ``source_index`` is k (0..5) for the layer whose output is source map k, else
        None.  The L2Norm of conv4_3 is listed right after relu4_3 as source 0 (a
        branch: the trunk continues from the un-normalized conv4_3).
        """
        for name, module in self.backbone.named_children():
            yield name, module, None
        yield "conv4_3_norm", self.l2norm, 0
        children = list(self.fc.named_children())
        for i, (name, module) in enumerate(children):
            yield name, module, 1 if i == len(children) - 1 else None
        for k, block in enumerate(self.extras, start=2):
            children = list(block.named_children())
            for i, (name, module) in enumerate(children):
                yield name, module, k if i == len(children) - 1 else None


class SSD512(SSD300):
    """SSD512 (paper Sec. 3.4 footnote; Table 6: SSD512* 79.8% mAP on VOC2007 test):
    SSD300's layers with stride-2 conv10_2 and conv11_2 and one more source, conv12_2 --
    seven maps, 64 .. 1.

    Same arguments as :class:`SSD300`; ``prior_config`` defaults to
    :data:`~ssd_tutorial.default_boxes.SSD512_VOC`.  ``forward(x [B, 3, 512, 512])`` ->
    ``(loc [B, 24564, 4], conf_logits [B, 24564, num_classes])``.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone_weights: str | Path | None = None,
        width_mult: float = 1.0,
        *,
        input_convention: str = "auto",
        prior_config: DefaultBoxConfig = SSD512_VOC,
    ) -> None:
        super().__init__(
            num_classes,
            backbone_weights,
            width_mult,
            input_convention=input_convention,
            prior_config=prior_config,
            _extras=_EXTRAS_512,
        )


def build_ssd(
    num_classes: int,
    prior_config: DefaultBoxConfig = SSD300_VOC,
    backbone_weights: str | Path | None = None,
    width_mult: float = 1.0,
) -> SSD300:
    """The network for a default-box layout: :class:`SSD512` for a layout of 7 maps,
    else :class:`SSD300` (6 maps); any other count raises ValueError."""
    maps = len(prior_config.feature_maps)
    if maps not in (6, 7):
        raise ValueError(
            f"no SSD network for a layout of {maps} feature maps (6: SSD300, 7: SSD512)"
        )
    cls = SSD512 if maps == 7 else SSD300
    return cls(num_classes, backbone_weights, width_mult, prior_config=prior_config)


def tiny_ssd300(num_classes: int) -> SSD300:
    """The CPU preset: ``SSD300(num_classes, width_mult=TINY_WIDTH)`` (same input, same
    8732 boxes)."""
    return SSD300(num_classes=num_classes, backbone_weights=None, width_mult=TINY_WIDTH)


def describe_layers(
    model: SSD300, image_size: int | None = None
) -> list[dict[str, object]]:
    """One row per trunk layer and per head: name, output shape, parameters, receptive
    field.

    Runs ``model`` layer by layer on a zero image ``[1, 3, image_size, image_size]`` for
    the shapes (``image_size`` default: the model's, 300 or 512 for SSD512).  The
    receptive field ``rf`` (pixels), the ``stride`` (jump between neighbouring cells,
    pixels) and ``centre`` (centre of cell 0, pixels, pixel i spanning [i, i+1]) follow
    from each layer's kernel k, stride s, padding p and dilation d:

        k_eff = d (k - 1) + 1,   rf += (k_eff - 1) * jump,
        centre += ((k_eff - 1) / 2 - p) * jump,   jump *= s

    A head (3x3, stride 1, padding 1) adds ``2 * jump`` to its source map's receptive
    field.
    """
    if image_size is None:
        image_size = getattr(model, "image_size", 300)
    rows: list[dict[str, object]] = []
    rf, jump, centre = 1.0, 1.0, 0.5
    source_geometry: dict[int, tuple[float, float, float]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = torch.zeros(1, 3, image_size, image_size, device=model.input_scale.device)
        x = x * model.input_scale + model.input_shift
        trunk = x
        for name, module, source in model.trunk_layers():
            if isinstance(module, L2Norm):
                out = module(trunk)  # a branch: the trunk itself goes on un-normalized
            else:
                trunk = module(trunk)
                out = trunk
                if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
                    k, s, p, d = (
                        _pair0(getattr(module, a))
                        for a in ("kernel_size", "stride", "padding", "dilation")
                    )
                    k_eff = d * (k - 1) + 1
                    rf += (k_eff - 1) * jump
                    centre += ((k_eff - 1) / 2 - p) * jump
                    jump *= s
            rows.append(
                {
                    "layer": name,
                    "type": type(module).__name__,
                    "output": tuple(out.shape[1:]),
                    "params": sum(p.numel() for p in module.parameters()),
                    "rf": int(rf),
                    "stride": int(jump),
                    "centre": centre,
                    "source": source,
                }
            )
            if source is not None:
                source_geometry[source] = (rf, jump, centre)
        for kind, heads in (("loc", model.loc_heads), ("conf", model.conf_heads)):
            for k, head in enumerate(heads):
                f_rf, f_jump, f_centre = source_geometry[k]
                shape = rows[[r["source"] for r in rows].index(k)]["output"]
                rows.append(
                    {
                        "layer": f"{kind}_head{k}",
                        "type": "Conv2d",
                        "output": (head.out_channels, shape[1], shape[2]),
                        "params": sum(p.numel() for p in head.parameters()),
                        "rf": int(f_rf + 2 * f_jump),
                        "stride": int(f_jump),
                        "centre": f_centre,
                        "source": k,
                    }
                )
    model.train(was_training)
    return rows


def _pair0(v: int | tuple[int, ...]) -> int:
    """Conv/pool attributes are ints or (h, w) pairs; SSD's are square, so take the
    first."""
    return int(v[0]) if isinstance(v, tuple) else int(v)
