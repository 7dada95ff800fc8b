"""Tests for ssd_tutorial.pretrained: published layouts into our SSD300, parity with
torchvision's own detector, ssd.pytorch's layout and input, the backbone file, downloads
and bad input.

Offline throughout: the published files themselves are never downloaded.  Random weights
in the published layouts stand in for them (built from torchvision's own model, and from
a re-creation of ssd.pytorch's module structure written here from its source).
"""

from __future__ import annotations

import json
import math
import urllib.error
from itertools import product
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from ssd_tutorial import pretrained, published
from ssd_tutorial.augmentation import resize_image
from ssd_tutorial.boxes import cxcywh_to_xyxy
from ssd_tutorial.data import VOC_CLASSES, ShapesDataset, read_image
from ssd_tutorial.default_boxes import (
    SSD300_VOC,
    SSD_PYTORCH_VOC,
    TORCHVISION_COCO,
    DefaultBoxConfig,
    default_boxes,
)
from ssd_tutorial.detector import Detector, detector_from_state_dict, load_pretrained
from ssd_tutorial.inference import Predictor, preprocess
from ssd_tutorial.model import SSD300
from ssd_tutorial.pretrained import (
    PUBLISHED,
    convert_ssd_pytorch,
    convert_torchvision_ssd300,
    detect_layout,
    load_ssd_pytorch_vgg16_reducedfc,
    published_file,
)

MINI100 = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "voc2012_mini100"
    / "JPEGImages"
)
# torchvision ssd300_vgg16 image_mean
TV_MEAN_01 = torch.tensor([0.48235, 0.45882, 0.40784]).view(3, 1, 1)
# Added to every background logit of the random heads: the foreground scores then spread
# from below 0.01 to ~0.1, so some pass the 0.01 threshold, most do not, and the 200 cap
# is reached on some images but not all (photos: 132, 200, 200, 132 detections;
# synthetic: 200, 61, 32, 200).
BACKGROUND_BIAS = 9.5


def _randomize(module: nn.Module, seed: int, first_conv_scale: float) -> None:
    """He-normal conv weights and small random biases, seeded; the first conv scaled
    down so that 0..255 input gives O(1) activations (otherwise every softmax
    saturates)."""
    g = torch.Generator().manual_seed(seed)
    first = True
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt(2.0 / fan_in) * (first_conv_scale if first else 1.0)
                first = False
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


# ============================================================================ default
# boxes
def _torchvision_generator_boxes() -> tuple[Tensor, Tensor]:
    """torchvision ssd300_vgg16's own DefaultBoxGenerator -> (cxcywh normalized, xyxy
    pixels)."""
    generator = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    maps = (38, 19, 10, 5, 3, 1)
    cxcywh = generator._grid_default_boxes([[f, f] for f in maps], [300, 300])
    images = ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)])
    xyxy_px = generator(images, [torch.zeros(1, 1, f, f) for f in maps])[0]
    return cxcywh, xyxy_px


def _ssd_pytorch_prior_box(cfg: dict) -> Tensor:
    """ssd.pytorch's PriorBox.forward (layers/functions/prior_box.py), loop for loop."""
    mean: list[float] = []
    for k, f in enumerate(cfg["feature_maps"]):
        for i, j in product(range(f), repeat=2):
            f_k = cfg["min_dim"] / cfg["steps"][k]
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = cfg["min_sizes"][k] / cfg["min_dim"]
            mean += [cx, cy, s_k, s_k]
            s_k_prime = math.sqrt(s_k * (cfg["max_sizes"][k] / cfg["min_dim"]))
            mean += [cx, cy, s_k_prime, s_k_prime]
            for ar in cfg["aspect_ratios"][k]:
                mean += [cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)]
                mean += [cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)]
    out = torch.tensor(mean).view(-1, 4)
    return out.clamp_(max=1, min=0) if cfg["clip"] else out


# ssd.pytorch data/config.py, ``voc``
SSD_PYTORCH_VOC_CFG = {
    "feature_maps": [38, 19, 10, 5, 3, 1],
    "min_dim": 300,
    "steps": [8, 16, 32, 64, 100, 300],
    "min_sizes": [30, 60, 111, 162, 213, 264],
    "max_sizes": [60, 111, 162, 213, 264, 315],
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    "clip": True,
}


def test_torchvision_coco_preset_is_torchvisions_default_boxes_bit_for_bit():
    cxcywh, xyxy_px = _torchvision_generator_boxes()
    ours = default_boxes(TORCHVISION_COCO)
    assert ours.shape == (8732, 4)
    assert torch.equal(ours, cxcywh)
    assert torch.equal(cxcywh_to_xyxy(ours) * 300, xyxy_px)
    # torchvision clamps only (w, h): the 10x10 map's last column keeps cx = 9.5 * 32 /
    # 300 > 1
    assert ours[:, 0].max() > 1.0 and ours[:, 2:].max() == 1.0


def test_ssd_pytorch_voc_preset_is_its_prior_box_bit_for_bit():
    ours = default_boxes(SSD_PYTORCH_VOC)
    assert torch.equal(ours, _ssd_pytorch_prior_box(SSD_PYTORCH_VOC_CFG))
    # ssd.pytorch clamps cx, cy, w, h: it differs from SSD300_VOC (unclipped) in 134
    # boxes
    changed = (ours != default_boxes(SSD300_VOC)).any(dim=1)
    assert int(changed.sum()) == 134
    # and its coco config (any class count but 21) is SSD_PYTORCH_COCO
    coco = {
        **SSD_PYTORCH_VOC_CFG,
        "min_sizes": [21, 45, 99, 153, 207, 261],
        "max_sizes": [45, 99, 153, 207, 261, 315],
    }
    assert torch.equal(
        default_boxes(pretrained.SSD_PYTORCH_COCO), _ssd_pytorch_prior_box(coco)
    )


def test_clip_form_is_checked_and_old_presets_keep_xyxy():
    assert SSD300_VOC.clip_form == "xyxy" and not SSD300_VOC.clip
    with pytest.raises(ValueError, match="clip_form must be one of"):
        DefaultBoxConfig(
            **{**SSD300_VOC.__dict__, "clip": True, "clip_form": "corners"}
        )


# ============================================================================
# torchvision
@pytest.fixture(scope="module")
def tv_model() -> nn.Module:
    """torchvision's ssd300_vgg16 (91 classes) with seeded random weights, eval mode."""
    with torch.device("meta"):  # skip the init of VGG16's 120M-parameter classifier
        model = torchvision.models.detection.ssd300_vgg16(
            weights=None, weights_backbone=None, num_classes=91
        )
    model = model.to_empty(device="cpu").eval()
    _randomize(model, seed=0, first_conv_scale=0.01)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.backbone.scale_weight.copy_(15 + 10 * torch.rand(512, generator=g))
        for head in model.head.classification_head.module_list:
            # channel a * 91 + 0: box a's background
            head.bias.view(-1, 91)[:, 0] += BACKGROUND_BIAS
    return model


@pytest.fixture(scope="module")
def tv_detector(tv_model) -> Detector:
    return detector_from_state_dict(tv_model.state_dict(), "random torchvision weights")


@pytest.fixture(scope="module")
def images() -> list[Tensor]:
    """Three 300 x 300 photos (VOC2012 mini100, resized) or, without ../shared, three
    synthetic images; and one 300 x 600 image whose resize to 300 x 300 is exact (every
    column twice)."""
    files = sorted(MINI100.glob("*.jpg"))[:3] if MINI100.is_dir() else []
    if len(files) == 3:
        square = [resize_image(read_image(f), 300) for f in files]
    else:
        square = [ShapesDataset(3, seed=5)[i][0] for i in range(3)]
    # bilinear 600 -> 300 samples x = 2j + 0.5: the mean of two equal pixels, exact in
    # uint8 and float
    wide = square[0].repeat_interleave(2, dim=-1)  # [3, 300, 600]
    return square + [wide]


def _match(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> Tensor:
    """Index into ``ours`` of each of ``theirs``' detections (same label, nearest box);
    asserts a one-to-one match.  Equal-within-float scores may come in either order, so
    pair, don't zip."""
    assert len(ours["labels"]) == len(theirs["labels"])
    if len(theirs["labels"]) == 0:
        return torch.zeros(0, dtype=torch.long)
    # [N, N] px
    gap = (theirs["boxes"][:, None, :] - ours["boxes"][None, :, :]).abs().amax(-1)
    gap = gap + (theirs["scores"][:, None] - ours["scores"][None, :]).abs() * 1e4
    gap[theirs["labels"][:, None] != ours["labels"][None, :]] = float("inf")
    partner = gap.argmin(dim=1)  # [N]
    assert torch.equal(partner.sort().values, torch.arange(len(partner))), (
        "detections do not pair up"
    )
    return partner


def test_conversion_gives_torchvisions_raw_outputs(tv_model, tv_detector, images):
    image = images[0]
    with torch.no_grad():
        # torchvision's transform on 0..1 RGB: (x - mean) / (1 / 255)
        x_tv = ((image.float() / 255 - TV_MEAN_01) * 255)[None]
        head = tv_model.head(list(tv_model.backbone(x_tv).values()))
        # our input: ImageNet-normalized
        loc, conf = tv_detector.model(preprocess(image)[None])
    torch.testing.assert_close(loc, head["bbox_regression"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conf, head["cls_logits"], rtol=1e-4, atol=1e-4)
    # and the input buffers turn ImageNet-normalized input into torchvision's, to float
    # precision
    model = tv_detector.model
    torch.testing.assert_close(
        preprocess(image)[None] * model.input_scale + model.input_shift,
        x_tv,
        rtol=0,
        atol=1e-4,
    )


def test_detections_equal_torchvisions_own(tv_model, tv_detector, images):
    """The published torchvision weights through detect.py's path (Predictor with the
    loaded priors, score threshold 0.01 = torchvision's score_thresh) give torchvision's
    detections: same count, labels, boxes in the image's pixels and scores, image by
    image."""
    with torch.no_grad():
        # boxes in each image's pixels
        theirs = tv_model([im.float() / 255 for im in images])
    # float32 as torchvision; auto may pick bf16
    predictor = Predictor(
        tv_detector.model,
        priors=tv_detector.priors,
        device="cpu",
        score_threshold=0.01,
        batch_size=8,
        precision="fp32",
    )
    ours = predictor(images)
    counts = []
    for mine, tv in zip(ours, theirs):
        partner = _match(mine, tv)
        counts.append(len(partner))
        assert torch.equal(mine["labels"][partner], tv["labels"])
        # px
        torch.testing.assert_close(
            mine["boxes"][partner], tv["boxes"], rtol=0, atol=2e-3
        )
        torch.testing.assert_close(
            mine["scores"][partner], tv["scores"], rtol=0, atol=1e-5
        )
        # the order agrees too, but for scores equal to float precision
        torch.testing.assert_close(mine["scores"], tv["scores"], rtol=0, atol=1e-5)
    # the 200 cap reached on some images, the 0.01 threshold deciding on others; many
    # boxes survive
    assert max(counts) == 200 and 10 < min(counts) < 200
    # the 300 x 600 image: boxes in its own pixels
    assert ours[3]["boxes"][:, 2].max() > 300


def test_detect_cli_runs_torchvision_coco(
    tmp_path, monkeypatch, capsys, tv_model, images
):
    """``python -m ssd_tutorial.detect img --weights torchvision-coco`` end to end, the
    download replaced by the random weights: same detections as torchvision above the
    threshold."""
    from PIL import Image

    from ssd_tutorial.detect import main

    monkeypatch.setattr(
        published,
        "_download_state_dict",
        lambda name, progress=True: tv_model.state_dict(),
    )
    path = tmp_path / "photo.png"
    Image.fromarray(images[1].permute(1, 2, 0).numpy()).save(path)
    threshold = 0.015
    assert (
        main(
            [
                str(path),
                "--weights",
                "torchvision-coco",
                "--output",
                str(tmp_path / "out.png"),
                "--score-threshold",
                str(threshold),
                "--device",
                "cpu",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with torch.no_grad():
        tv = tv_model([images[1].float() / 255])[0]
    keep = tv["scores"] > threshold
    assert 0 < len(report["detections"]) == int(keep.sum())
    categories = pretrained.coco_categories()
    # torchvision's ids
    assert all(d["label"] == categories[d["label_id"]] for d in report["detections"])
    assert sorted(d["label_id"] for d in report["detections"]) == sorted(
        tv["labels"][keep].tolist()
    )
    # JSON: 4 decimals, best first
    scores = torch.tensor([d["score"] for d in report["detections"]])
    torch.testing.assert_close(scores, tv["scores"][keep], rtol=0, atol=1e-4)
    assert (tmp_path / "out.png").is_file()


def test_coco_names_keep_torchvisions_label_ids(tv_detector):
    names = tv_detector.class_names
    categories = pretrained.coco_categories()
    assert len(names) == 90 and categories[0] == "__background__"
    # id 12 is "N/A", as in torchvision
    assert names[0] == "person" and names.count("N/A") == 10
    assert all(names[i - 1] == categories[i] for i in range(1, 91))
    assert tv_detector.model.num_classes == 91 and not tv_detector.model.training
    assert torch.equal(tv_detector.priors, default_boxes(TORCHVISION_COCO))


def test_torchvision_key_map_is_complete_and_errors_name_the_key(tv_model):
    state = tv_model.state_dict()
    converted = convert_torchvision_ssd300(state)
    # 35 convs x (weight, bias) + the L2Norm scale
    assert len(converted) == len(state) == 71
    assert converted["fc.fc6.weight"] is state["backbone.extra.0.7.1.weight"]
    assert converted["extras.3.conv11_2.bias"] is state["backbone.extra.4.2.bias"]
    broken = {
        k: v for k, v in state.items() if k != "head.regression_head.module_list.4.bias"
    }
    with pytest.raises(
        ValueError, match=r"missing \['head.regression_head.module_list.4.bias'\]"
    ):
        convert_torchvision_ssd300(broken)
    wrong = {**state, "backbone.extra.2.2.weight": torch.zeros(256, 128, 1, 1)}
    with pytest.raises(
        ValueError, match=r"backbone.extra.2.2.weight has shape \[256, 128, 1, 1\]"
    ):
        detector_from_state_dict(wrong, "wrong.pth")


# ============================================================================
# ssd.pytorch
class SsdPytorchReplica(nn.Module):
    """amdegroot/ssd.pytorch's SSD300 module structure (ssd.py: vgg(), add_extras(),
    multibox(), SSD.forward; layers/modules/l2norm.py), re-created here to give its
    exact key names."""

    def __init__(self, num_classes: int = 21) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in [
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
        ]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            elif v == "C":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers += [
                    nn.Conv2d(c_in, v, kernel_size=3, padding=1),
                    nn.ReLU(inplace=True),
                ]
                c_in = v
        layers += [
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, kernel_size=1),
            nn.ReLU(inplace=True),
        ]
        self.vgg = nn.ModuleList(layers)
        self.L2Norm = nn.Module()
        self.L2Norm.weight = nn.Parameter(torch.full((512,), 20.0))
        self.extras = nn.ModuleList(
            [
                nn.Conv2d(1024, 256, 1),
                nn.Conv2d(256, 512, 3, stride=2, padding=1),
                nn.Conv2d(512, 128, 1),
                nn.Conv2d(128, 256, 3, stride=2, padding=1),
                nn.Conv2d(256, 128, 1),
                nn.Conv2d(128, 256, 3),
                nn.Conv2d(256, 128, 1),
                nn.Conv2d(128, 256, 3),
            ]
        )
        sources = [512, 1024, 512, 256, 256, 256]
        boxes = [4, 6, 6, 6, 4, 4]
        self.loc = nn.ModuleList(
            nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(sources, boxes)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(sources, boxes)
        )
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x``: RGB 0..255 minus (123, 117, 104) -> (conv4_3 after L2Norm, loc,
        conf)."""
        sources = []
        for k in range(23):
            x = self.vgg[k](x)
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
        sources.append(self.L2Norm.weight.view(1, -1, 1, 1) * (x / norm))
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, v in enumerate(self.extras):
            x = F.relu(v(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        loc = torch.cat(
            [
                l(s).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
                for s, l in zip(sources, self.loc)
            ],
            1,
        )
        conf = torch.cat(
            [
                c(s).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
                for s, c in zip(sources, self.conf)
            ],
            1,
        )
        return (
            sources[0],
            loc.view(x.shape[0], -1, 4),
            conf.view(x.shape[0], -1, self.num_classes),
        )


@pytest.fixture(scope="module")
def ssd_pytorch_model() -> SsdPytorchReplica:
    model = SsdPytorchReplica().eval()
    _randomize(model, seed=2, first_conv_scale=0.01)
    with torch.no_grad():
        model.L2Norm.weight.copy_(
            15 + 10 * torch.rand(512, generator=torch.Generator().manual_seed(3))
        )
    return model


def test_ssd_pytorch_layout_lands_in_the_right_places(ssd_pytorch_model, images):
    state = ssd_pytorch_model.state_dict()
    assert len(state) == 71 and detect_layout(state) == "ssd.pytorch"
    loaded = detector_from_state_dict(state, "random ssd.pytorch weights")
    assert loaded.class_names == VOC_CLASSES and torch.equal(
        loaded.priors, default_boxes(SSD_PYTORCH_VOC)
    )
    model = loaded.model
    image = images[1]
    with torch.no_grad():
        # ssd.pytorch's network input: RGB minus (123, 117, 104), 0..255 (see
        # pretrained.py)
        x_theirs = (image.float() - torch.tensor([123.0, 117.0, 104.0]).view(3, 1, 1))[
            None
        ]
        conv4_3, loc_theirs, conf_theirs = ssd_pytorch_model(x_theirs)
        x_ours = preprocess(image)[None]
        sources = model.source_maps(x_ours)
        loc, conf = model(x_ours)
    # conv1_1 .. conv4_3, L2Norm
    torch.testing.assert_close(sources[0], conv4_3, rtol=1e-4, atol=1e-4)
    # fc6/fc7, extras, loc heads
    torch.testing.assert_close(loc, loc_theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conf, conf_theirs, rtol=1e-4, atol=1e-4)  # conf heads
    assert conf.std() > 0.1 and loc.std() > 0.1  # not a comparison of zeros


def test_ssd_pytorch_bad_keys_are_named(ssd_pytorch_model):
    state = ssd_pytorch_model.state_dict()
    wrong = {**state, "conf.3.weight": torch.zeros(6 * 20, 256, 3, 3)}
    with pytest.raises(
        ValueError,
        match=r"conf.3.weight has shape \[120, 256, 3, 3\], SSD300 expects \[126",
    ):
        detector_from_state_dict(wrong, "wrong.pth")
    missing = {k: v for k, v in state.items() if k != "extras.5.bias"}
    with pytest.raises(ValueError, match=r"missing \['extras.5.bias'\]"):
        convert_ssd_pytorch(missing)
    extra = {**state, "vgg.35.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected \['vgg.35.weight'\]"):
        detector_from_state_dict(extra, "extra.pth")


def test_ssd_pytorch_voc_classes_are_ours():
    # ssd.pytorch data/voc0712.py VOC_CLASSES ("always index 0"), label = index + 1
    theirs = (
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
    assert VOC_CLASSES == theirs == tuple(sorted(theirs))


@pytest.fixture()
def hub_dir(tmp_path, monkeypatch) -> Path:
    """torch.hub's cache in a temporary folder; any real download attempt fails as
    offline."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return hub


def test_cached_ssd_pytorch_voc_loads_with_weights_only(
    hub_dir, monkeypatch, ssd_pytorch_model
):
    target = published_file("ssd-pytorch-voc")
    assert target == hub_dir / "checkpoints" / "ssd300_mAP_77.43_v2.pth"
    target.parent.mkdir(parents=True)
    torch.save(ssd_pytorch_model.state_dict(), target)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k)
    )
    loaded = load_pretrained("ssd-pytorch-voc")
    assert calls and all(c.get("weights_only") is True for c in calls)
    assert (
        "ssd-pytorch-voc" in loaded.source
        and PUBLISHED["ssd-pytorch-voc"].url in loaded.source
    )
    assert torch.equal(loaded.model.fc.fc6.weight, ssd_pytorch_model.vgg[31].weight)
    # the same file by path: told apart by its keys
    by_path = load_pretrained(str(target))
    assert by_path.source == str(target) and by_path.class_names == VOC_CLASSES
    # a pinned checksum is checked
    with pytest.raises(RuntimeError, match="differs from the expected"):
        load_pretrained("ssd-pytorch-voc", expected_sha256="0" * 64)


@pytest.mark.parametrize(
    "name", ["torchvision-coco", "ssd-pytorch-voc", "ssd-pytorch-vgg16-reducedfc"]
)
def test_offline_error_names_url_and_where_to_put_the_file(hub_dir, name):
    with pytest.raises(RuntimeError) as info:
        if name == "ssd-pytorch-vgg16-reducedfc":
            pretrained.fetch_published(name)
        else:
            load_pretrained(name)
    message = str(info.value)
    assert PUBLISHED[name].url in message
    assert str(hub_dir / "checkpoints" / Path(PUBLISHED[name].url).name) in message
    assert "no network in tests" in message


def test_corrupt_cached_torchvision_file_is_refused_by_its_hash(hub_dir):
    target = published_file("torchvision-coco")
    assert target.name == "ssd300_vgg16_coco-b556d3b4.pth"
    target.parent.mkdir(parents=True)
    torch.save({"backbone.features.0.weight": torch.zeros(1)}, target)
    with pytest.raises(RuntimeError, match="does not start with b556d3b4"):
        load_pretrained("torchvision-coco")


# ============================================================================
# vgg16_reducedfc
def test_vgg16_reducedfc_is_a_backbone_file(tmp_path, ssd_pytorch_model, images):
    """ssd.pytorch's backbone file is its ``vgg`` ModuleList's state dict ("0.weight" ..
    "33.bias", train.py: ``ssd_net.vgg.load_state_dict``); SSD300(backbone_weights=path)
    loads it, fc6/fc7 included, as Caffe-style weights (RGB 0..255 minus the mean)."""
    vgg = ssd_pytorch_model.vgg
    path = tmp_path / "vgg16_reducedfc.pth"
    torch.save(vgg.state_dict(), path)
    assert sorted(load_ssd_pytorch_vgg16_reducedfc(path)) == sorted(vgg.state_dict())
    model = SSD300(num_classes=21, backbone_weights=path).eval()
    assert torch.equal(model.backbone.conv1_1.weight, vgg[0].weight)
    assert torch.equal(model.backbone.conv4_3.bias, vgg[21].bias)
    assert torch.equal(model.fc.conv5_3.weight, vgg[28].weight)
    assert torch.equal(model.fc.fc6.weight, vgg[31].weight) and torch.equal(
        model.fc.fc7.bias, vgg[33].bias
    )
    caffe = SSD300(num_classes=21, backbone_weights=path, input_convention="caffe")
    assert torch.equal(model.input_scale, caffe.input_scale) and torch.equal(
        model.input_shift, caffe.input_shift
    )
    with torch.no_grad():
        x = images[2]
        # IMAGENET1K_FEATURES' mean (the Caffe mean)
        fc7_theirs = (x.float() - 255 * TV_MEAN_01)[None]
        for layer in vgg:
            fc7_theirs = layer(fc7_theirs)
        fc7_ours = model.fc(
            model.backbone(preprocess(x)[None] * model.input_scale + model.input_shift)
        )
    torch.testing.assert_close(fc7_ours, fc7_theirs, rtol=1e-4, atol=1e-4)


def test_vgg16_reducedfc_bad_shape_is_named(tmp_path, ssd_pytorch_model):
    state = dict(ssd_pytorch_model.vgg.state_dict())
    state["31.weight"] = torch.zeros(1024, 512, 1, 1)
    path = tmp_path / "bad_vgg.pth"
    torch.save(state, path)
    with pytest.raises(
        ValueError,
        match=r"31.weight has shape \[1024, 512, 1, 1\], expected \[1024, 512, 3, 3\]",
    ):
        load_ssd_pytorch_vgg16_reducedfc(path)
    with pytest.raises(ValueError, match="fc.fc6.weight has shape"):
        SSD300(num_classes=21, backbone_weights=path)


# ============================================================================ bad input
class _Payload:
    pass


def test_bad_files_and_names(tmp_path):
    neither = tmp_path / "neither.pth"
    torch.save(
        {"encoder.layer.0.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)},
        neither,
    )
    with pytest.raises(
        ValueError,
        match=r"neither.pth: neither a torchvision .* got keys \['decoder.bias', "
        r"'encoder",
    ):
        load_pretrained(neither)
    ours = tmp_path / "ours.pt"
    torch.save({"l2norm.weight": torch.zeros(2)}, ours)
    with pytest.raises(ValueError, match="--checkpoint"):
        load_pretrained(ours)
    evil = tmp_path / "evil.pth"
    torch.save({"vgg.0.weight": _Payload()}, evil)
    with pytest.raises(RuntimeError, match="weights_only"):
        load_pretrained(evil)
    with pytest.raises(FileNotFoundError, match="torchvision-coco, ssd-pytorch-voc"):
        load_pretrained(tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="a backbone, not a detector"):
        load_pretrained("ssd-pytorch-vgg16-reducedfc")


def _photos_of_other_sizes() -> list[Tensor]:
    """Photos at their own size (VOC2012 mini100: about 500 x 375), or without ../shared
    one synthetic image of an odd size, never 300 x 300: the resize is then not
    exact."""
    files = sorted(MINI100.glob("*.jpg"))[3:8] if MINI100.is_dir() else []
    if files:
        return [read_image(f) for f in files]
    return [
        torch.nn.functional.interpolate(
            ShapesDataset(1, image_size=300, seed=9)[0][0][None].float(),
            size=(375, 500),
            mode="bilinear",
        )[0]
        .round()
        .byte()
    ]


def test_torchvision_weights_give_torchvisions_detections_at_any_size(
    tv_model, tmp_path
):
    """Loaded through the one loader from a saved state dict, torchvision's ssd300_vgg16
    runs with its own input transform (a float resize, not our uint8 one) and gives its
    detections on photos that are not 300 x 300: >= 95 % of its best 50 matched (same
    label, IoU > 0.99), scores within 1e-4."""
    from torchvision.ops import box_iou

    from ssd_tutorial.detector import load_detector

    path = tmp_path / "ssd300_vgg16_random.pth"
    torch.save(tv_model.state_dict(), path)
    detector = load_detector(path)
    assert detector.input_transform.resize == "float"
    predictor = detector.predictor(device="cpu", score_threshold=0.01, precision="fp32")
    for photo in _photos_of_other_sizes():
        assert photo.shape[1:] != (300, 300)
        with torch.no_grad():
            theirs = tv_model([photo.float() / 255])[0]
        ours = predictor([photo])[0]
        top = min(50, len(theirs["scores"]))
        assert top >= 20  # the peaky random heads give plenty above 0.01
        matched = 0
        for box, label, score in zip(
            theirs["boxes"][:top], theirs["labels"][:top], theirs["scores"][:top]
        ):
            same = ours["labels"] == label
            if not same.any():
                continue
            iou = box_iou(box[None], ours["boxes"][same])[0]  # [N]
            best = int(iou.argmax())
            if (
                iou[best] > 0.99
                and abs(float(ours["scores"][same][best] - score)) <= 1e-4
            ):
                matched += 1
        assert matched >= 0.95 * top, (
            f"{matched} of torchvision's top {top} matched on a {list(photo.shape)} "
            "photo"
        )
