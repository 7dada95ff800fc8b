"""Tests for ssd_tutorial.default_boxes: counts, hand-worked boxes, scales, parity with
torchvision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from ssd_tutorial.boxes import cxcywh_to_xyxy
from ssd_tutorial.default_boxes import (
    LAYOUTS,
    PAPER,
    SSD300_COCO,
    SSD300_VOC,
    SSD512_VOC,
    TORCHVISION_COCO,
    DefaultBoxConfig,
    boxes_per_cell,
    boxes_per_map,
    default_boxes,
    paper_scales,
)


@pytest.fixture(scope="module")
def priors() -> torch.Tensor:
    return default_boxes(SSD300_VOC)


def test_shape_dtype_and_per_map_counts(priors):
    assert priors.shape == (8732, 4)
    assert priors.dtype == torch.float32
    assert boxes_per_cell(SSD300_VOC) == (4, 6, 6, 6, 4, 4)
    # 38^2*4, 19^2*6, 10^2*6, 5^2*6, 3^2*4, 1^2*4
    assert boxes_per_map(SSD300_VOC) == (5776, 2166, 600, 150, 36, 4)
    assert sum(boxes_per_map(SSD300_VOC)) == 8732


def test_first_boxes_of_the_38x38_map_by_hand(priors):
    # Cell (0, 0) of conv4_3: centre (0.5 * 8 / 300, 0.5 * 8 / 300) = (1/75, 1/75).
    # s = 30 / 300 = 0.1; extra square sqrt(30 * 60) / 300 = sqrt(2) / 10;
    # ratio 2: w = 0.1 * sqrt(2), h = 0.1 / sqrt(2), then its transpose.
    c = 1 / 75
    r2 = math.sqrt(2)
    expected = torch.tensor(
        [
            [c, c, 0.1, 0.1],
            [c, c, r2 / 10, r2 / 10],
            [c, c, 0.1 * r2, 0.1 / r2],
            [c, c, 0.1 / r2, 0.1 * r2],
        ]
    )
    torch.testing.assert_close(priors[:4], expected, rtol=0, atol=1e-7)
    # next cell to the right: x centre (1.5 * 8) / 300 = 0.04, same y, same shapes
    torch.testing.assert_close(
        priors[4:8, :2], torch.tensor([[0.04, c]] * 4), rtol=0, atol=1e-7
    )
    # first cell of the second row starts after 38 cells x 4 boxes = 152 boxes
    torch.testing.assert_close(
        priors[152, :2], torch.tensor([c, 0.04]), rtol=0, atol=1e-7
    )


def test_last_box_is_the_tall_one_of_the_1x1_map(priors):
    # map 1x1: centre (0.5, 0.5); s = 264 / 300 = 0.88; last box is ratio 1/2:
    # w = 0.88 / sqrt(2) = 0.622254, h = 0.88 * sqrt(2) = 1.244508 (taller than the
    # image: no clip)
    torch.testing.assert_close(
        priors[-1], torch.tensor([0.5, 0.5, 0.622254, 1.244508]), rtol=0, atol=1e-6
    )


def test_scales_in_pixels_equal_the_preset_sizes(priors):
    starts = [0]
    for n in boxes_per_map(SSD300_VOC)[:-1]:
        starts.append(starts[-1] + n)
    for k, start in enumerate(starts):
        small, extra = priors[start], priors[start + 1]
        lo, hi = SSD300_VOC.min_sizes[k], SSD300_VOC.max_sizes[k]
        assert small[2].item() * 300 == pytest.approx(lo, abs=1e-4)
        assert small[3].item() * 300 == pytest.approx(lo, abs=1e-4)
        assert extra[2].item() * 300 == pytest.approx(math.sqrt(lo * hi), abs=1e-4)


def test_every_box_of_a_cell_has_the_area_of_its_scale(priors):
    # the ratio boxes keep the area s_k^2 of the small square: w*h = s^2 a / a
    s = 0.1
    areas = priors[:4, 2] * priors[:4, 3]
    torch.testing.assert_close(areas[[0, 2, 3]], torch.full((3,), s * s))


def test_centres_of_the_released_layout_reach_past_the_image(priors):
    # Caffe SSD: steps are rounded strides, so the last centre of map k is (f_k - 0.5)
    # step_k / 300:
    # 38x38: 37.5 * 8 = 300 -> exactly 1.0;  10x10: 9.5 * 32 = 304 -> 1.0133, outside
    # the image;
    # 19x19: 18.5 * 16 = 296;  5x5: 4.5 * 64 = 288;  3x3: 2.5 * 100 = 250;  1x1: 150.
    expected_last = [300 / 300, 296 / 300, 304 / 300, 288 / 300, 250 / 300, 150 / 300]
    start = 0
    for k, n in enumerate(boxes_per_map(SSD300_VOC)):
        centres = priors[start : start + n, :2]
        assert centres.min().item() > 0
        assert centres.max().item() == pytest.approx(expected_last[k], abs=1e-6)
        start += n


def test_centres_are_row_major(priors):
    first_map = priors[:5776].reshape(38, 38, 4, 4)  # [row, col, box, cxcywh]
    # along a row x grows and y stays; down a column y grows and x stays
    assert (first_map[:, 1:, 0, 0] > first_map[:, :-1, 0, 0]).all()
    assert torch.equal(first_map[:, 1:, 0, 1], first_map[:, :-1, 0, 1])
    assert (first_map[1:, :, 0, 1] > first_map[:-1, :, 0, 1]).all()


def test_paper_preset_reproduces_the_formula():
    # paper p.6: s_k = 0.2 + (0.9 - 0.2) (k - 1) / 5 = 0.2, 0.34, 0.48, 0.62, 0.76, 0.9
    expected = [0.2, 0.34, 0.48, 0.62, 0.76, 0.9]
    assert paper_scales() == pytest.approx(expected, abs=1e-12)
    assert [v / 300 for v in PAPER.min_sizes] == pytest.approx(expected, abs=1e-12)
    assert PAPER.steps == pytest.approx([300 / f for f in (38, 19, 10, 5, 3, 1)])
    boxes = default_boxes(PAPER)
    assert boxes.shape == (8732, 4)
    assert boxes[0, 2].item() == pytest.approx(0.2, abs=1e-7)  # first square of conv4_3
    # centre (i + 0.5) / |f_k|
    assert boxes[0, 0].item() == pytest.approx(0.5 / 38, abs=1e-7)


def test_clip_keeps_count_and_keeps_boxes_in_the_image():
    clipped_cfg = DefaultBoxConfig(**{**SSD300_VOC.__dict__, "clip": True})
    clipped = cxcywh_to_xyxy(default_boxes(clipped_cfg))
    assert clipped.shape == (8732, 4)
    assert clipped.min() >= 0 and clipped.max() <= 1
    unclipped = cxcywh_to_xyxy(default_boxes(SSD300_VOC))
    # so clipping really changed something
    assert unclipped.min() < 0 and unclipped.max() > 1


def _torchvision_priors_xyxy(cfg: DefaultBoxConfig) -> torch.Tensor:
    """torchvision's DefaultBoxGenerator set to cfg's layout -> [P, 4] xyxy normalized.

    It takes scales s_1..s_{m+1} with the extra box sqrt(s_k s_{k+1}), so it can
    reproduce a layout only when max_sizes[k] == min_sizes[k + 1].
    """
    size = cfg.image_size
    scales = [v / size for v in cfg.min_sizes] + [cfg.max_sizes[-1] / size]
    generator = DefaultBoxGenerator(
        [list(r) for r in cfg.aspect_ratios],
        scales=scales,
        steps=list(cfg.steps),
        clip=cfg.clip,
    )
    images = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
    feature_maps = [torch.zeros(1, 1, f, f) for f in cfg.feature_maps]
    return generator(images, feature_maps)[0] / size  # pixels xyxy -> normalized


def test_ssd300_matches_torchvision_default_box_generator(priors):
    # the layout torchvision can express
    assert SSD300_VOC.max_sizes[:-1] == SSD300_VOC.min_sizes[1:]
    theirs = _torchvision_priors_xyxy(SSD300_VOC)
    assert theirs.shape == (8732, 4)
    torch.testing.assert_close(cxcywh_to_xyxy(priors), theirs, rtol=0, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    maps=st.lists(
        st.tuples(st.integers(1, 6), st.sampled_from([(), (2,), (2, 3), (3,)])),
        min_size=1,
        max_size=4,
    ),
    sizes=st.lists(st.integers(5, 90), min_size=5, max_size=5, unique=True),
)
def test_random_layouts_match_torchvision(maps, sizes):
    sizes = sorted(sizes)[: len(maps) + 1]
    cfg = DefaultBoxConfig(
        image_size=96,
        feature_maps=tuple(f for f, _ in maps),
        steps=tuple(96 / f for f, _ in maps),
        min_sizes=tuple(sizes[:-1]),
        max_sizes=tuple(sizes[1:]),
        aspect_ratios=tuple(r for _, r in maps),
    )
    ours = default_boxes(cfg)
    assert ours.shape[0] == sum(f * f * (2 + 2 * len(r)) for f, r in maps)
    torch.testing.assert_close(
        cxcywh_to_xyxy(ours), _torchvision_priors_xyxy(cfg), rtol=0, atol=1e-6
    )


# ----------------------------------------------------------- SSD512 and the COCO layout


def _caffe_prior_loop(
    image_size, maps, steps, min_sizes, max_sizes, ratios
) -> np.ndarray:
    """An independent computation of a layout: Caffe's PriorBoxLayer::Forward_cpu loop
    order (map, then h, then w, then min box, max box, each ratio a then 1/a), one box
    at a time, in numpy float64 -> [P, 4] cxcywh normalized."""
    out = []
    for f, step, lo, hi, rs in zip(maps, steps, min_sizes, max_sizes, ratios):
        for i in range(f):
            for j in range(f):
                cx, cy = (j + 0.5) * step / image_size, (i + 0.5) * step / image_size
                out.append((cx, cy, lo / image_size, lo / image_size))
                side = np.sqrt(lo * hi) / image_size
                out.append((cx, cy, side, side))
                for a in rs:
                    for r in (a, 1.0 / a):
                        out.append(
                            (
                                cx,
                                cy,
                                lo * np.sqrt(r) / image_size,
                                lo / np.sqrt(r) / image_size,
                            )
                        )
    return np.array(out)


def test_ssd512_has_24564_boxes_in_the_released_layout():
    # numbers typed from the released ssd_pascal_512.py's formula: min_ratio 15,
    # max_ratio 90, step 15, conv4_3 at 7% / 15% of 512 px
    assert SSD512_VOC.feature_maps == (64, 32, 16, 8, 4, 2, 1)
    assert SSD512_VOC.steps == (8, 16, 32, 64, 128, 256, 512)
    assert SSD512_VOC.min_sizes == pytest.approx(
        (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8), abs=1e-9
    )
    assert SSD512_VOC.max_sizes == pytest.approx(
        (76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6), abs=1e-9
    )
    assert boxes_per_cell(SSD512_VOC) == (4, 6, 6, 6, 6, 4, 4)
    # 64^2*4 + 32^2*6 + 16^2*6 + 8^2*6 + 4^2*6 + 2^2*4 + 1*4
    assert boxes_per_map(SSD512_VOC) == (16384, 6144, 1536, 384, 96, 16, 4)
    priors = default_boxes(SSD512_VOC)
    assert priors.shape == (24564, 4) and priors.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layouts_match_an_independent_loop(name):
    cfg = LAYOUTS[name]
    expected = _caffe_prior_loop(
        cfg.image_size,
        cfg.feature_maps,
        cfg.steps,
        cfg.min_sizes,
        cfg.max_sizes,
        cfg.aspect_ratios,
    )
    ours = default_boxes(cfg).double().numpy()
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7)


def test_ssd512_hand_worked_corners():
    priors = default_boxes(SSD512_VOC)
    # first box: cell (0, 0) of the 64x64 map, centre 4 / 512, side 35.84 / 512 = 0.07
    torch.testing.assert_close(
        priors[0], torch.tensor([4 / 512, 4 / 512, 0.07, 0.07]), rtol=0, atol=1e-7
    )
    # the 1x1 map (conv12_2) is the last 4 boxes: centre 256 / 512 = 0.5, s = 460.8 /
    # 512 = 0.9, extra square sqrt(460.8 * 537.6) / 512 = sqrt(0.9 * 1.05)
    torch.testing.assert_close(
        priors[-4, :3], torch.tensor([0.5, 0.5, 0.9]), rtol=0, atol=1e-7
    )
    assert priors[-3, 2].item() == pytest.approx(math.sqrt(0.9 * 1.05), abs=1e-6)
    # the 4x4 map (conv10_2) has ratio 3 boxes, unlike SSD300's 3x3 map: 6 per cell
    start = 16384 + 6144 + 1536 + 384
    assert priors[start + 5, 3].item() == pytest.approx(
        307.2 / 512 * math.sqrt(3), abs=1e-6
    )


def test_ssd512_matches_torchvision_default_box_generator():
    # torchvision has no SSD512 model with this layout, but its generator can express
    # the boxes
    assert SSD512_VOC.max_sizes[:-1] == SSD512_VOC.min_sizes[1:]
    theirs = _torchvision_priors_xyxy(SSD512_VOC)
    assert theirs.shape == (24564, 4)
    torch.testing.assert_close(
        cxcywh_to_xyxy(default_boxes(SSD512_VOC)), theirs, rtol=0, atol=1e-6
    )


def test_coco_layout_is_caffes_ssd_coco():
    # paper Sec. 3.4: conv4_3 at 0.07 ("21 pixels for a 300 x 300 image"), then s_min =
    # 0.15;
    # ssd_coco.py: step floor((90 - 15) / 4) = 18 -> 15, 33, 51, 69, 87 % of 300 px
    assert SSD300_COCO.min_sizes == (21, 45, 99, 153, 207, 261)
    assert SSD300_COCO.max_sizes == (45, 99, 153, 207, 261, 315)
    assert not SSD300_COCO.clip
    # torchvision's COCO layout has the same sizes, only clipped
    assert (SSD300_COCO.min_sizes, SSD300_COCO.max_sizes) == (
        TORCHVISION_COCO.min_sizes,
        TORCHVISION_COCO.max_sizes,
    )
    assert default_boxes(SSD300_COCO).shape == (8732, 4)


# ---------------------------------------------------------------- bad input


def _cfg(**changes) -> DefaultBoxConfig:
    return DefaultBoxConfig(**{**SSD300_VOC.__dict__, **changes})


def test_mismatched_lengths_are_refused():
    with pytest.raises(
        ValueError, match="steps has 5 entries, but there are 6 feature maps"
    ):
        _cfg(steps=(8, 16, 32, 64, 100))


def test_min_size_above_max_size_is_refused():
    with pytest.raises(ValueError, match="map 2: need 0 < min_size <= max_size"):
        _cfg(min_sizes=(30, 60, 200, 162, 213, 264))


def test_non_positive_ratio_is_refused():
    with pytest.raises(ValueError, match="map 0: aspect ratios must be positive"):
        _cfg(aspect_ratios=((0,), (2, 3), (2, 3), (2, 3), (2,), (2,)))


@pytest.mark.parametrize(
    "changes, message",
    [
        # a step of 0 used to put every centre of the map at (0, 0), silently
        ({"steps": (8, 16, 0, 64, 100, 300)}, "map 2: step must be positive"),
        (
            {"feature_maps": (38, 19, 10, 5, 3, 0)},
            "map 5: feature map size must be a positive",
        ),
        ({"image_size": 0}, "image_size must be positive"),
    ],
)
def test_non_positive_geometry_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**changes)


def test_paper_scales_needs_two_maps():
    with pytest.raises(ValueError, match="m=1"):
        paper_scales(1)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        SSD300_VOC.image_size = 512  # type: ignore[misc]
