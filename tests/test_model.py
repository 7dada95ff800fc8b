"""Tests for ssd_tutorial.model: parity with torchvision's SSD300, output order,
weights, dtypes."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from ssd_tutorial import backbone_weights
from ssd_tutorial.default_boxes import (
    SSD300_COCO,
    SSD300_VOC,
    SSD512_VOC,
    boxes_per_map,
    default_boxes,
)
from ssd_tutorial.model import (
    SSD300,
    SSD512,
    TINY_WIDTH,
    L2Norm,
    build_ssd,
    describe_layers,
    subsample_fc,
    tiny_ssd300,
)

# ssd300_vgg16(num_classes=21, weights=None, weights_backbone=None)
TORCHVISION_SSD300_PARAMS = 26_285_486


@pytest.fixture(scope="module")
def full_model() -> SSD300:
    torch.manual_seed(0)
    return SSD300(num_classes=21).eval()


@pytest.fixture(scope="module")
def full_outputs(full_model: SSD300) -> dict[str, object]:
    """One forward of the full model at batch 1, with the six source maps caught by
    hooks."""
    sources: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sources.append(out))
        for m in [full_model.l2norm, full_model.fc, *full_model.extras]
    ]
    x = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loc, conf = full_model(x)
    for h in hooks:
        h.remove()
    return {"x": x, "loc": loc, "conf": conf, "sources": sources}


def torchvision_ssd300() -> nn.Module:
    """torchvision's SSD300 built on the meta device: no time spent initialising 138M
    VGG weights."""
    with torch.device("meta"):
        return torchvision.models.detection.ssd300_vgg16(
            num_classes=21, weights=None, weights_backbone=None
        )


def tv_vgg16_features() -> nn.Sequential:
    """torchvision's VGG16 conv part alone (no 100M-parameter classifier), randomly
    initialised."""
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])


def test_parameter_count_equals_torchvision(full_model: SSD300):
    tv = torchvision_ssd300()
    tv_count = sum(p.numel() for p in tv.parameters())
    ours = sum(p.numel() for p in full_model.parameters())
    assert tv_count == TORCHVISION_SSD300_PARAMS
    assert ours == tv_count


def test_same_outputs_as_torchvision_with_the_same_weights(
    full_model: SSD300, full_outputs
):
    # Copy our weights into torchvision's SSD300 layer by layer, then compare the raw
    # head outputs (torchvision's backbone + head, skipping its resize/normalize
    # transform).
    # every parameter is overwritten below
    tv = torchvision_ssd300().to_empty(device="cpu").eval()
    ours = (
        [full_model.l2norm.weight]
        + [m.weight for m in full_model.backbone if isinstance(m, nn.Conv2d)]
        + [m.bias for m in full_model.backbone if isinstance(m, nn.Conv2d)]
    )
    tv_params = [tv.backbone.scale_weight] + [
        getattr(m, part)
        for part in ("weight", "bias")
        for m in tv.backbone.features
        if isinstance(m, nn.Conv2d)
    ]
    ours_rest = [
        getattr(m, part)
        for seq in [
            full_model.fc,
            *full_model.extras,
            *full_model.conf_heads,
            *full_model.loc_heads,
        ]
        for m in (seq.modules() if isinstance(seq, nn.Sequential) else [seq])
        if isinstance(m, nn.Conv2d)
        for part in ("weight", "bias")
    ]
    tv_rest = [
        getattr(m, part)
        for seq in [
            *tv.backbone.extra,
            *tv.head.classification_head.module_list,
            *tv.head.regression_head.module_list,
        ]
        for m in (seq.modules() if isinstance(seq, nn.Sequential) else [seq])
        if isinstance(m, nn.Conv2d)
        for part in ("weight", "bias")
    ]
    assert (
        len(ours + ours_rest) == len(tv_params + tv_rest) == len(list(tv.parameters()))
    )
    with torch.no_grad():
        for src, dst in zip(ours + ours_rest, tv_params + tv_rest):
            assert src.shape == dst.shape
            dst.copy_(src)
        tv_out = tv.head(list(tv.backbone(full_outputs["x"]).values()))
    loc, conf = full_outputs["loc"], full_outputs["conf"]
    assert torch.allclose(loc, tv_out["bbox_regression"], atol=1e-4, rtol=1e-3)
    assert torch.allclose(conf, tv_out["cls_logits"], atol=1e-4, rtol=1e-3)


def test_output_shapes(full_outputs):
    loc, conf, sources = (
        full_outputs["loc"],
        full_outputs["conf"],
        full_outputs["sources"],
    )
    assert loc.shape == (1, 8732, 4) and conf.shape == (1, 8732, 21)
    assert [tuple(s.shape[1:]) for s in sources] == [
        (512, 38, 38),
        (1024, 19, 19),
        (512, 10, 10),
        (256, 5, 5),
        (256, 3, 3),
        (256, 1, 1),
    ]


def test_tiny_model_is_the_same_architecture_with_fewer_channels():
    tiny = tiny_ssd300(num_classes=5)
    assert tiny.width_mult == TINY_WIDTH == 0.125
    assert tiny.source_channels == (64, 128, 64, 32, 32, 32)
    loc, conf = tiny(torch.zeros(2, 3, 300, 300))
    assert loc.shape == (2, 8732, 4) and conf.shape == (2, 8732, 5)


@pytest.mark.parametrize("layout", [SSD300_VOC, SSD512_VOC], ids=["ssd300", "ssd512"])
def test_head_outputs_line_up_with_default_boxes(layout):
    # Feed the heads source maps whose channel 0 holds the column x and channel 1 the
    # row y, and make every loc head output, for box a of a cell, (x, y, a, k): then
    # prediction p must be (col, row, box, map) of default box p, which we derive from
    # the default boxes themselves.
    model = build_ssd(3, layout, width_mult=TINY_WIDTH)
    sizes = layout.feature_maps
    maps = []
    for f, ch in zip(sizes, model.source_channels):
        m = torch.zeros(1, ch, f, f)
        m[0, 0] = torch.arange(f, dtype=torch.float32)[None, :]  # column
        m[0, 1] = torch.arange(f, dtype=torch.float32)[:, None]  # row
        maps.append(m)
    with torch.no_grad():
        for k, head in enumerate(model.loc_heads):
            head.weight.zero_()
            head.bias.zero_()
            for a in range(head.out_channels // 4):
                head.weight[a * 4 + 0, 0, 1, 1] = 1.0  # centre tap copies the column
                head.weight[a * 4 + 1, 1, 1, 1] = 1.0  # and the row
                head.bias[a * 4 + 2] = a
                head.bias[a * 4 + 3] = k
    model.source_maps = lambda x: maps  # type: ignore[method-assign]
    size = layout.image_size
    with torch.no_grad():
        loc, _ = model(torch.zeros(1, 3, size, size))
    col, row, box, k = loc[0].round().long().unbind(-1)  # [P] each

    priors = default_boxes(layout)  # [P, 4] cxcywh
    expected_k = torch.repeat_interleave(
        torch.arange(len(sizes)), torch.tensor(boxes_per_map(layout))
    )
    assert torch.equal(k, expected_k)
    steps = torch.tensor(layout.steps, dtype=torch.float32)[expected_k]
    assert torch.allclose((col.float() + 0.5) * steps / size, priors[:, 0], atol=1e-5)
    assert torch.allclose((row.float() + 0.5) * steps / size, priors[:, 1], atol=1e-5)
    # box index a: the first two boxes of a cell are squares, the second one larger
    square = (priors[:, 2] - priors[:, 3]).abs() < 1e-6
    assert bool(square[box < 2].all()) and not bool(square[box >= 2].any())


def test_l2norm_hand_worked():
    # channel vector (3, 4) has length 5 -> (0.6, 0.8), times the initial scale 20 ->
    # (12, 16)
    layer = L2Norm(2)
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    assert torch.allclose(layer(x).flatten(), torch.tensor([12.0, 16.0]))
    # no NaN at 0
    assert torch.allclose(layer(torch.zeros(1, 2, 1, 1)), torch.zeros(1, 2, 1, 1))


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    model = tiny_ssd300(num_classes=4).eval()
    x = torch.randn(2, 3, 300, 300)
    with torch.no_grad():
        loc, conf = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        loc_cl, conf_cl = model_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(loc, loc_cl, atol=1e-4) and torch.allclose(
        conf, conf_cl, atol=1e-4
    )


def test_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(0)
    model = tiny_ssd300(num_classes=4).eval()
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        loc, conf = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loc16, conf16 = model(x)
    assert loc16.dtype == torch.bfloat16 and conf16.shape == (1, 8732, 4)
    assert bool(torch.isfinite(loc16).all() and torch.isfinite(conf16).all())
    scale = float(conf.abs().max())
    assert float((conf16.float() - conf).abs().max()) < 0.1 * scale


def test_describe_layers():
    model = tiny_ssd300(num_classes=3)
    rows = {r["layer"]: r for r in describe_layers(model)}
    # receptive field of VGG16's conv4_3 by hand: 3x3 convs add 2*jump, 2x2 pools add
    # 1*jump:
    # 1 +2+2 (conv1) +1 =6, +4+4 =14 (conv2) +2 =16, +8*3 =40 (conv3) +4 =44, +8*3 = 92
    # at jump 8
    assert rows["conv4_3"]["rf"] == 92 and rows["conv4_3"]["stride"] == 8
    # pool5 (3x3, s1) adds 2*16, fc6 (3x3, dilation 6) adds 12*16: 196 + 32 + 192 = 420
    assert rows["fc6"]["rf"] == 420 and rows["fc7"]["stride"] == 16
    assert [
        r["output"][1]
        for r in rows.values()
        if r["source"] is not None and "head" not in r["layer"]
    ] == [38, 19, 10, 5, 3, 1]
    assert sum(r["params"] for r in rows.values()) == sum(
        p.numel() for p in model.parameters()
    )


def test_subsample_fc_picks_every_fourth_unit_and_every_third_tap():
    gen = torch.Generator().manual_seed(0)
    fc6_w, fc6_b = (
        torch.randn(16, 2 * 49, generator=gen),
        torch.randn(16, generator=gen),
    )
    fc7_w, fc7_b = torch.randn(16, 16, generator=gen), torch.randn(16, generator=gen)
    w6, b6, w7, b7 = subsample_fc(fc6_w, fc6_b, fc7_w, fc7_b)
    assert w6.shape == (4, 2, 3, 3) and w7.shape == (4, 4, 1, 1)
    # unit 2 of the conv is unit 8 of the fc layer; tap (1, 2) is position (3, 6) of the
    # 7x7 grid
    assert w6[2, 1, 1, 2] == fc6_w[8, 1 * 49 + 3 * 7 + 6]
    assert b6[3] == fc6_b[12] and w7[1, 3, 0, 0] == fc7_w[4, 12] and b7[2] == fc7_b[8]
    with pytest.raises(ValueError, match="fc6"):
        subsample_fc(torch.zeros(16, 50), fc6_b, fc7_w, fc7_b)


# -----------------------------------------------------------------------------
# pretrained weights
def test_local_torchvision_state_dict_round_trip(tmp_path):
    torch.manual_seed(3)
    features = tv_vgg16_features()
    path = tmp_path / "vgg16_features.pt"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    model = SSD300(num_classes=21, backbone_weights=str(path)).eval()
    assert torch.equal(model.backbone.conv1_1.weight, features[0].weight)
    assert torch.equal(model.backbone.conv4_3.bias, features[21].bias)
    assert torch.equal(model.fc.conv5_3.weight, features[28].weight)
    # no classifier in the file: taken as the Caffe-style IMAGENET1K_FEATURES -> input
    # converted
    assert torch.allclose(
        model.input_scale.flatten(), 255 * torch.tensor([0.229, 0.224, 0.225])
    )
    # conv4_3 (before L2Norm) equals torchvision's VGG16 up to relu4_3 on the converted
    # input
    features[16].ceil_mode = True  # pool3, as SSD
    # small: the layers are what is compared, not the size
    x = torch.randn(1, 3, 68, 68)
    with torch.no_grad():
        expected = features[:23](x * model.input_scale + model.input_shift)
        got = model.backbone(x * model.input_scale + model.input_shift)
    assert got.shape == (1, 512, 9, 9) and torch.allclose(
        got, expected, atol=1e-5, rtol=1e-4
    )

    # and our own backbone keys load back too
    own = {
        k: v
        for k, v in model.state_dict().items()
        if k.startswith(("backbone.", "fc."))
    }
    own_path = tmp_path / "own.pt"
    torch.save(own, own_path)
    again = SSD300(
        num_classes=3, backbone_weights=own_path, input_convention="imagenet"
    )
    assert torch.equal(again.fc.conv5_1.weight, model.fc.conv5_1.weight)
    assert torch.equal(again.input_scale, torch.ones(1, 3, 1, 1))


def test_imagenet_offline_error_says_what_to_do(monkeypatch):
    def offline(weights):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # never touch the network
    monkeypatch.setattr(backbone_weights, "download_state_dict", offline)
    for name, member, file_name in (
        ("imagenet", "IMAGENET1K_V1", "vgg16_imagenet.pt"),
        ("imagenet_features", "IMAGENET1K_FEATURES", "vgg16_features.pt"),
    ):
        with pytest.raises(RuntimeError) as info:
            SSD300(num_classes=21, backbone_weights=name)
        message = str(info.value)
        assert member in message and "internet" in message
        assert (
            f"backbone_weights='{file_name}'" in message
            and "backbone_weights=None" in message
        )


@pytest.fixture(scope="module")
def tv_vgg16_classifier_state():
    """A torchvision ``vgg16`` state dict (features + classifier keys, the IMAGENET1K_V1
    layout), random weights: what ``VGG16_Weights.IMAGENET1K_V1.get_state_dict()``
    returns, offline."""
    torch.manual_seed(5)
    return torchvision.models.vgg16(weights=None).state_dict()


def test_imagenet_loads_pretrained_fc6_fc7(
    monkeypatch, tmp_path, tv_vgg16_classifier_state
):
    """backbone_weights="imagenet" asks torchvision for IMAGENET1K_V1 and fills fc6/fc7
    by subsampling its classifier (paper p.7), not from the init; the input stays
    ImageNet-normalized."""
    state = tv_vgg16_classifier_state
    seen = []

    def fake_download(weights):
        seen.append(weights)
        return state

    monkeypatch.setattr(backbone_weights, "download_state_dict", fake_download)
    model = SSD300(num_classes=21, backbone_weights="imagenet")
    assert seen == [torchvision.models.VGG16_Weights.IMAGENET1K_V1]
    # fc6 [4096, 25088] = a 7x7 conv over pool5: unit 4u, taps (3i, 3j) -> SSD fc6 unit
    # u, tap (i, j)
    fc6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    u, c, i, j = 5, 17, 2, 1
    assert model.fc.fc6.weight[u, c, i, j] == fc6[4 * u, c, 3 * i, 3 * j]
    assert torch.equal(model.fc.fc6.weight, fc6[::4, :, ::3, ::3])
    assert torch.equal(model.fc.fc6.bias, state["classifier.0.bias"][::4])
    assert torch.equal(
        model.fc.fc7.weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4]
    )
    assert torch.equal(model.fc.fc7.bias, state["classifier.3.bias"][::4])
    assert torch.equal(model.fc.conv5_3.weight, state["features.28.weight"])
    # IMAGENET1K_V1 takes normalized input
    assert torch.equal(model.input_scale, torch.ones(1, 3, 1, 1))
    # the same file saved by hand (the offline route the error message gives) loads the
    # same
    path = tmp_path / "vgg16_imagenet.pt"
    torch.save(state, path)
    by_hand = SSD300(num_classes=21, backbone_weights=path)
    assert torch.equal(by_hand.fc.fc6.weight, model.fc.fc6.weight)
    assert torch.equal(by_hand.fc.fc7.weight, model.fc.fc7.weight)


def test_imagenet_features_weights_go_through_torchvision_weights_api(monkeypatch):
    features = tv_vgg16_features()
    seen = []

    def fake_download(weights):
        seen.append(weights)
        return {f"features.{k}": v for k, v in features.state_dict().items()}

    monkeypatch.setattr(backbone_weights, "download_state_dict", fake_download)
    init_fc6 = float(SSD300(num_classes=21).fc.fc6.weight.detach().std())
    model = SSD300(num_classes=21, backbone_weights="imagenet_features")
    assert seen == [torchvision.models.VGG16_Weights.IMAGENET1K_FEATURES]
    assert torch.equal(model.fc.conv5_2.weight, features[26].weight)
    assert not torch.equal(model.input_scale, torch.ones(1, 3, 1, 1))
    # no classifier: fc6 keeps its (Xavier) init
    assert float(model.fc.fc6.weight.detach().std()) == pytest.approx(
        init_fc6, rel=0.05
    )


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        SSD300(backbone_weights=tmp_path / "nowhere.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"something.weight": torch.zeros(1)}, junk)
    with pytest.raises(ValueError, match="no VGG16 keys"):
        SSD300(backbone_weights=junk)
    with pytest.raises(ValueError, match="width_mult=1.0"):
        SSD300(backbone_weights=junk, width_mult=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        SSD300(num_classes=1)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_ssd300(3)(torch.zeros(1, 1, 300, 300))


# ---------------------------------------------------------------- SSD512


def _conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def test_ssd512_output_shapes_on_the_meta_device():
    # the full-width net, shapes only: on the meta device nothing is computed
    with torch.device("meta"):
        model = SSD512(num_classes=21)
        sources = model.source_maps(torch.empty(2, 3, 512, 512))
        loc, conf = model(torch.empty(2, 3, 512, 512))
    assert [tuple(s.shape[1:]) for s in sources] == [
        (512, 64, 64),
        (1024, 32, 32),
        (512, 16, 16),
        (256, 8, 8),
        (256, 4, 4),
        (256, 2, 2),
        (256, 1, 1),
    ]
    assert loc.shape == (2, 24564, 4) and conf.shape == (2, 24564, 21)
    assert model.image_size == 512 and SSD300(num_classes=21).image_size == 300
    # the released net's extra layers, by conv arithmetic: conv8_2 .. conv11_2 3x3 s2
    # p1, conv12_2 4x4 s1 p1
    n, sizes = 32, []
    for kernel, stride, pad in [(3, 2, 1)] * 4 + [(4, 1, 1)]:
        n = _conv_out(n, kernel, stride, pad)
        sizes.append(n)
    assert sizes == [16, 8, 4, 2, 1] == list(SSD512_VOC.feature_maps[2:])
    last = model.extras[-1]
    assert [name for name, _ in last.named_children()] == [
        "conv12_1",
        "relu12_1",
        "conv12_2",
        "relu12_2",
    ]
    assert last.conv12_2.kernel_size == (4, 4) and last.conv12_2.padding == (1, 1)


def test_ssd512_parameter_count_equals_torchvisions_pieces():
    # torchvision has no SSD512 model, but its VGG extractor with highres=True has
    # conv12 and its SSDHead takes the 7 maps' box counts: the same parameters (its
    # conv10_2/conv11_2 differ in stride and padding only, which hold no parameters)
    from torchvision.models.detection.ssd import SSDHead, _vgg_extractor

    with torch.device("meta"):
        extractor = _vgg_extractor(
            torchvision.models.vgg16(weights=None), highres=True, trainable_layers=5
        )
        head = SSDHead([512, 1024, 512, 256, 256, 256, 256], [4, 6, 6, 6, 6, 4, 4], 21)
        ours = SSD512(num_classes=21)
    theirs = sum(p.numel() for p in extractor.parameters()) + sum(
        p.numel() for p in head.parameters()
    )
    assert sum(p.numel() for p in ours.parameters()) == theirs == 27_188_676


def test_build_ssd_follows_the_layout():
    assert type(build_ssd(3, SSD300_VOC, width_mult=TINY_WIDTH)) is SSD300
    assert type(build_ssd(3, SSD300_COCO, width_mult=TINY_WIDTH)) is SSD300
    assert type(build_ssd(3, SSD512_VOC, width_mult=TINY_WIDTH)) is SSD512
    with pytest.raises(
        ValueError, match="SSD512 has 7 source maps; prior_config has 6"
    ):
        SSD512(num_classes=3, width_mult=TINY_WIDTH, prior_config=SSD300_VOC)
    with pytest.raises(
        ValueError, match="no SSD network for a layout of 1 feature maps"
    ):
        build_ssd(3, SSD300_VOC.__class__(300, (1,), (300,), (30,), (60,), ((2,),)))


def test_ssd512_tiny_smoke_train(tmp_path):
    # a few optimizer steps of the tiny SSD512 on 512 px shapes, through the Trainer:
    # the loss is finite, the checkpoint stores the 7-map layout, and detect's loader
    # rebuilds an SSD512 from it
    from ssd_tutorial.config import get_config
    from ssd_tutorial.detect import load_stored_detector
    from ssd_tutorial.train import train

    cfg = get_config(
        "shapes_cpu",
        image_size=512,
        prior_layout="ssd512_voc",
        shapes_train_images=8,
        shapes_val_images=4,
        batch_size=2,
        max_iters=3,
        warmup_iters=0,
        lr_steps=(100,),
        log_every=1,
        checkpoint_every=0,
        eval_every=3,
        eval_images=4,
        augment=False,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train(cfg, tmp_path, progress=False)
    finally:
        torch.set_num_threads(before)
    assert summary["iterations"] == 3
    assert (
        all(math.isfinite(r["loss"]) for r in summary["losses"])
        and len(summary["losses"]) == 3
    )
    # the periodic evaluation ran at 512 px with 24,564 boxes
    assert summary["map50"] is not None
    stored = load_stored_detector(tmp_path / "last.pt")
    assert isinstance(stored.model, SSD512) and stored.priors.shape == (24564, 4)


def test_describe_layers_of_ssd512_reaches_conv12_2():
    # 512 px
    rows = {
        r["layer"]: r
        for r in describe_layers(SSD512(num_classes=3, width_mult=TINY_WIDTH))
    }
    assert rows["relu12_2"]["output"] == (32, 1, 1) and rows["relu12_2"]["source"] == 6
    assert (
        rows["relu11_2"]["output"] == (32, 2, 2) and rows["relu11_2"]["stride"] == 256
    )
    assert rows["relu11_2"]["centre"] == pytest.approx(8.0)  # cell 0 of the 2x2 map
    # conv12_2 (4x4, padding 1) reads cells -1..2 of that map: its one cell is centred
    # half a cell on, 8 + 0.5 * 256 = 136 px -- not at 256 px, where SSD512_VOC centres
    # its boxes
    assert rows["relu12_2"]["centre"] == pytest.approx(136.0)


def test_config_refuses_a_layout_for_another_image_size():
    from ssd_tutorial.config import get_config

    with pytest.raises(
        ValueError,
        match="prior_layout 'ssd512_voc' is for 512 px images, but image_size is 300",
    ):
        get_config("shapes_cpu", prior_layout="ssd512_voc")
    with pytest.raises(ValueError, match="prior_layout must be one of"):
        get_config("shapes_cpu", prior_layout="ssd1024")
