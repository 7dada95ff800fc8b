"""Tests of ssd_tutorial.augmentation: hand-worked cases, parity with
torchvision/colorsys, properties."""

from __future__ import annotations

import colorsys
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_tutorial.augmentation import (
    HUE_DELTA,
    IMAGENET_MEAN,
    MIN_IOU_CHOICES,
    PhotometricParams,
    SSDAugmentation,
    _adjust_saturation_hue,
    _mean_pixel,
    _rand,
    _resize_pasted,
    apply_crop,
    apply_photometric,
    apply_zoom_out,
    denormalize,
    hflip,
    hsv_to_rgb,
    normalize,
    resize_image,
    rgb_to_hsv,
    sample_iou_crop,
    sample_photometric,
    sample_zoom_out,
    to_normalized_boxes,
    zoom_out,
)
from ssd_tutorial.boxes import box_iou
from ssd_tutorial.data import ShapesDataset
from ssd_tutorial.gpu_augmentation import sample_crops

PROPERTY = settings(max_examples=40, deadline=None)


@st.composite
def scenes(draw, max_side: int = 120):
    """A random uint8 image with 0-5 valid pixel boxes, labels and difficult flags."""
    width = draw(st.integers(16, max_side))
    height = draw(st.integers(16, max_side))
    n = draw(st.integers(0, 5))
    boxes = []
    for _ in range(n):
        x1 = draw(st.integers(0, width - 2))
        y1 = draw(st.integers(0, height - 2))
        x2 = draw(st.integers(x1 + 1, width))
        y2 = draw(st.integers(y1 + 1, height))
        boxes.append([x1, y1, x2, y2])
    seed = draw(st.integers(0, 2**31 - 1))
    image = torch.randint(
        0,
        256,
        (3, height, width),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(seed),
    )
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        # unique labels track identity
        "labels": torch.arange(1, n + 1, dtype=torch.int64),
        "difficult": torch.tensor([i % 2 == 1 for i in range(n)], dtype=torch.bool),
        "image_id": "scene",
    }
    return image, target, seed


# --------------------------------------------------------------------------------------
# Hand-worked cases
# --------------------------------------------------------------------------------------
def test_hflip_by_hand() -> None:
    image = torch.arange(10.0).reshape(1, 1, 10).expand(3, 2, 10)
    flipped, boxes = hflip(image, torch.tensor([[1.0, 2.0, 4.0, 5.0]]))
    # x -> 10 - x: the box spanning columns 1..4 now spans 6..9.
    assert boxes.tolist() == [[6.0, 2.0, 9.0, 5.0]]
    assert flipped[0, 0].tolist() == [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]


def test_apply_crop_by_hand() -> None:
    image = torch.zeros(3, 10, 10)
    boxes = torch.tensor(
        [[0.0, 0.0, 4.0, 4.0], [3.0, 3.0, 10.0, 10.0], [2.0, 5.0, 6.0, 7.0]]
    )
    labels = torch.tensor([1, 2, 3])
    difficult = torch.tensor([False, True, False])
    out, kept, kept_labels, kept_difficult = apply_crop(
        image, boxes, labels, difficult, (2, 2, 8, 8)
    )
    # Box 1's centre (2, 2) sits on the window's edge: not strictly inside, dropped.
    # Box 2 (centre 6.5, 6.5) is clipped to (3, 3, 8, 8), then shifted by (-2, -2).
    # Box 3 (centre 4, 6) lies inside: (2, 5, 6, 7) -> (0, 3, 4, 5).
    assert out.shape == (3, 6, 6)
    assert kept.tolist() == [[1.0, 1.0, 6.0, 6.0], [0.0, 3.0, 4.0, 5.0]]
    assert kept_labels.tolist() == [2, 3] and kept_difficult.tolist() == [True, False]


def test_zoom_out_by_hand() -> None:
    image = torch.full((3, 2, 3), 200, dtype=torch.uint8)
    params = sample_zoom_out(3, 2, torch.Generator().manual_seed(0), p=1.0)
    assert params is not None and 3 <= params.width <= 12 and 2 <= params.height <= 8
    from ssd_tutorial.augmentation import ZoomOutParams

    canvas, boxes = apply_zoom_out(
        image, torch.tensor([[0.0, 0.0, 3.0, 2.0]]), ZoomOutParams(6, 4, 2, 1)
    )
    assert boxes.tolist() == [[2.0, 1.0, 5.0, 3.0]]
    assert (canvas[:, 1:3, 2:5] == 200).all()
    # The fill is the ImageNet mean in 8 bits: (0.485, 0.456, 0.406) * 255 = (123.7,
    # 116.3, 103.5).
    assert canvas[:, 0, 0].tolist() == [124, 116, 104]


def test_photometric_steps_by_hand() -> None:
    pixel = torch.tensor([100.0, 50.0, 200.0]).reshape(3, 1, 1)
    assert apply_photometric(
        pixel, PhotometricParams(brightness=20.0)
    ).flatten().tolist() == [120.0, 70.0, 220.0]
    assert apply_photometric(
        pixel, PhotometricParams(brightness=80.0)
    ).flatten().tolist() == [180.0, 130.0, 255.0]
    assert apply_photometric(
        pixel, PhotometricParams(contrast=0.5)
    ).flatten().tolist() == [50.0, 25.0, 100.0]
    # Saturation x0: S = 0, every channel becomes V = max = 200.
    assert apply_photometric(
        pixel, PhotometricParams(saturation=0.0)
    ).flatten().tolist() == [200.0, 200.0, 200.0]
    # Saturation x2 of S = (200 - 50) / 200 = 0.75 is capped at 1: min -> 0, others V -
    # (V - c) * 4/3.
    out = apply_photometric(pixel, PhotometricParams(saturation=2.0)).flatten().tolist()
    assert out == pytest.approx([200 - 100 * 4 / 3, 0.0, 200.0], abs=1e-4)
    # Hue: a full turn changes nothing; 120 degrees sends red to green.
    assert torch.allclose(
        apply_photometric(pixel, PhotometricParams(hue=360.0)), pixel, atol=1e-3
    )
    red = torch.tensor([255.0, 0.0, 0.0]).reshape(3, 1, 1)
    green = apply_photometric(red, PhotometricParams(hue=120.0)).flatten().tolist()
    assert green == pytest.approx([0, 255, 0], abs=1e-3)
    swapped = (
        apply_photometric(pixel, PhotometricParams(channel_order=(2, 1, 0)))
        .flatten()
        .tolist()
    )
    assert swapped == [200.0, 50.0, 100.0]


def test_hue_range_is_caffes():
    """Caffe's hue_delta 18 is in OpenCV's uint8 hue units (180 a turn): pure red at the
    top of the range is H = 18 units = 36 degrees, which colorsys gives as (255, 153,
    0)."""
    caffe_hue_delta_units, opencv_units_per_turn = 18, 180
    degrees = caffe_hue_delta_units * 360 / opencv_units_per_turn
    assert HUE_DELTA == degrees
    expected = [255 * c for c in colorsys.hsv_to_rgb(degrees / 360, 1.0, 1.0)]
    assert expected == pytest.approx([255, 153, 0])
    red = torch.tensor([255.0, 0.0, 0.0]).reshape(3, 1, 1)
    top = apply_photometric(red, PhotometricParams(hue=HUE_DELTA)).flatten().tolist()
    assert top == pytest.approx(expected, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    drawn = [sample_photometric(g).hue for _ in range(400)]
    drawn = [h for h in drawn if h is not None]
    assert (
        max(abs(h) for h in drawn) <= HUE_DELTA
        and max(abs(h) for h in drawn) > 0.9 * HUE_DELTA
    )


def test_eval_mode_is_resize_and_normalize_only() -> None:
    mean = torch.tensor(IMAGENET_MEAN).mul(255).round().to(torch.uint8).reshape(3, 1, 1)
    image = mean.expand(3, 50, 100).clone()
    target = {
        "boxes": torch.tensor([[10.0, 5.0, 60.0, 45.0]]),
        "labels": torch.tensor([3]),
        "image_id": "x",
    }
    out, new = SSDAugmentation(size=30, train=False)(image, target)
    assert out.shape == (3, 30, 30)
    assert out.abs().max() < 0.01  # the mean colour normalizes to ~0
    assert new["boxes"].tolist() == [pytest.approx([0.1, 0.1, 0.6, 0.9])]
    assert new["labels"].tolist() == [3] and new["difficult"].tolist() == [False]
    assert new["image_id"] == "x"
    # Same twice: no randomness in eval mode.
    again, _ = SSDAugmentation(size=30, train=False)(image, target)
    assert torch.equal(out, again)


def test_normalize_round_trip() -> None:
    image = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    assert torch.allclose(denormalize(normalize(image)) * 255, image.float(), atol=1e-3)


def test_bad_input_is_refused() -> None:
    target = {"boxes": torch.zeros(1, 4), "labels": torch.tensor([1, 2])}
    with pytest.raises(TypeError, match="uint8"):
        SSDAugmentation()(torch.zeros(3, 10, 10), target)
    with pytest.raises(ValueError, match="1 boxes, 2 labels"):
        SSDAugmentation()(torch.zeros(3, 10, 10, dtype=torch.uint8), target)
    with pytest.raises(ValueError, match="min_iou"):
        sample_iou_crop(torch.zeros(1, 4), 10, 10, min_iou="sometimes")


def test_crop_keeps_whole_image_for_original_option_and_empty_images() -> None:
    boxes = torch.tensor([[1.0, 1.0, 5.0, 5.0]])
    assert sample_iou_crop(boxes, 10, 10, min_iou=None) == (None, None)
    assert sample_iou_crop(torch.zeros(0, 4), 10, 10, min_iou=0.5)[0] is None


def test_every_min_iou_option_is_picked() -> None:
    # A box filling most of the image: every option, IoU 0.9 too, finds patches, so each
    # enters the pool and is picked about 1/7 of the time.
    generator = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[3.0, 2.0, 97.0, 98.0]])
    drawn = [sample_iou_crop(boxes, 100, 100, generator)[1] for _ in range(350)]
    assert set(drawn) == set(MIN_IOU_CHOICES)
    assert all(drawn.count(m) >= 20 for m in MIN_IOU_CHOICES), {
        m: drawn.count(m) for m in MIN_IOU_CHOICES
    }


# --------------------------------------------------------------------------------------
# Parity with independent implementations
# --------------------------------------------------------------------------------------
def test_hsv_matches_colorsys() -> None:
    rgb = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255
    rgb[:, 0, 0] = 77.0  # grey
    rgb[:, 0, 1] = 0.0  # black
    hsv = rgb_to_hsv(rgb)
    # [256, 3] H, S in [0, 1], V in [0, 1]
    expected = np.array(
        [
            colorsys.rgb_to_hsv(*(rgb[:, i, j] / 255).tolist())
            for i in range(16)
            for j in range(16)
        ]
    )
    got = hsv.reshape(3, -1).T.numpy()  # [256, 3]
    assert np.allclose(got[:, 0], expected[:, 0], atol=1e-5)
    assert np.allclose(got[:, 1], expected[:, 1], atol=1e-5)
    assert np.allclose(got[:, 2] / 255, expected[:, 2], atol=1e-6)
    assert torch.allclose(hsv_to_rgb(hsv), rgb, atol=1e-3)


def _hsv_round_trip(
    rgb: torch.Tensor, factor: float | None, degrees: float | None
) -> torch.Tensor:
    hsv = rgb_to_hsv(rgb)
    if factor is not None:
        hsv[1] = (hsv[1] * factor).clamp(0, 1)
    if degrees is not None:
        hsv[0] = (hsv[0] + degrees / 360.0) % 1.0
    return hsv_to_rgb(hsv)


def _awkward_pixels(seed: int) -> torch.Tensor:
    """Random RGB in [0, 255] ``[3, 16, 16]`` plus the corner cases of the hue
    formula."""
    rgb = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 255
    rgb[:, 0, 0] = 77.0  # grey
    rgb[:, 0, 1] = 0.0  # black
    rgb[:, 0, 2] = torch.tensor([200.0, 200.0, 10.0])  # max shared by R and G
    rgb[:, 0, 3] = torch.tensor([30.0, 220.0, 220.0])  # max shared by G and B
    rgb[:, 0, 4] = torch.tensor([250.0, 5.0, 250.0])  # max shared by R and B
    rgb[:, 0, 5] = torch.tensor([255.0, 0.0, 0.0])  # pure red: H = 0
    return rgb.round()


@pytest.mark.parametrize(
    ("factor", "degrees"),
    [(f, None) for f in (0.0, 0.5, 1.3, 3.0)]
    + [(f, d) for f in (None, 0.5, 1.3) for d in (-18.0, 7.0, 18.0, 180.0)],
)
def test_fused_saturation_hue_matches_hsv_round_trip(
    factor: float | None, degrees: float | None
) -> None:
    rgb = _awkward_pixels(2)
    expected = _hsv_round_trip(rgb, factor, degrees)
    assert torch.allclose(
        _adjust_saturation_hue(rgb, factor, degrees), expected, atol=1e-3
    )


def test_fused_saturation_hue_matches_colorsys() -> None:
    rgb = _awkward_pixels(5)
    got = _adjust_saturation_hue(rgb, 0.7, 12.0)
    for i in range(16):
        for j in range(16):
            h, s, v = colorsys.rgb_to_hsv(*(rgb[:, i, j] / 255).tolist())
            expected = colorsys.hsv_to_rgb(
                (h + 12.0 / 360.0) % 1.0, min(s * 0.7, 1.0), v
            )
            assert np.allclose(got[:, i, j].numpy() / 255, expected, atol=1e-5)


@pytest.mark.parametrize("degrees", [-18.0, 7.0, 18.0])
def test_hue_matches_torchvision(degrees: float) -> None:
    rgb = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    ours = apply_photometric(rgb * 255, PhotometricParams(hue=degrees)) / 255
    theirs = TF.adjust_hue(rgb, degrees / 360.0)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_flip_and_resize_match_torchvision() -> None:
    from torchvision import tv_tensors

    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8)
    boxes = torch.tensor([[3.0, 4.0, 20.0, 30.0], [40.0, 1.0, 53.0, 37.0]])
    tv_boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(37, 53))
    ours_image, ours_boxes = hflip(image, boxes)
    assert torch.equal(ours_image, TF.horizontal_flip(image))
    assert torch.equal(
        ours_boxes, TF.horizontal_flip(tv_boxes).as_subclass(torch.Tensor)
    )
    resized = resize_image(image, 30)
    theirs = TF.resize(image, [30, 30], antialias=False)
    assert (
        resized.int() - theirs.int()
    ).abs().max() <= 1  # same bilinear, rounding may differ


def test_iou_crop_window_iou_matches_torchvision() -> None:
    from torchvision.ops import box_iou as tv_box_iou

    boxes = torch.tensor([[10.0, 20.0, 50.0, 70.0], [60.0, 10.0, 90.0, 40.0]])
    generator = torch.Generator().manual_seed(4)
    for min_iou in (0.1, 0.3, 0.5, 0.7):
        window, _ = sample_iou_crop(boxes, 100, 80, generator, min_iou=min_iou)
        if window is not None:
            assert (
                tv_box_iou(torch.tensor([window], dtype=torch.float32), boxes).max()
                >= min_iou
            )


# --------------------------------------------------------------------------------------
# The fused pipeline equals the straightforward order
# --------------------------------------------------------------------------------------
def _straightforward(image, target, generator, size=300):
    """photometric -> zoom out -> crop -> flip -> resize, drawing in SSDAugmentation's
    order."""
    boxes, labels, difficult = (
        target["boxes"].float(),
        target["labels"],
        target["difficult"],
    )
    height, width = image.shape[1:]
    photo = sample_photometric(generator)
    zoom = sample_zoom_out(width, height, generator)
    out = apply_photometric(image.float(), photo).round().to(torch.uint8)
    out, boxes = apply_zoom_out(out, boxes, zoom)
    window, _ = sample_iou_crop(boxes, out.shape[2], out.shape[1], generator)
    flip = _rand(generator) < 0.5
    out, boxes, labels, difficult = apply_crop(out, boxes, labels, difficult, window)
    if flip:
        out, boxes = hflip(out, boxes)
    boxes = to_normalized_boxes(boxes, out.shape[2], out.shape[1])
    return normalize(resize_image(out, size)), boxes, labels


@pytest.mark.parametrize(
    ("part_hw", "offset", "canvas", "size"),
    [
        # zoom-out: a small image on a large canvas
        (
            (375, 500),
            (700, 90),
            (1800, 1400),
            300,
        ),
        ((375, 500), (0, 0), (520, 400), 300),  # the part in a corner
        ((40, 30), (5, 7), (45, 60), 300),  # upsampling
        ((200, 120), (0, 13), (120, 260), 64),  # fill above and below only
        ((1, 1), (3, 2), (9, 4), 5),  # a one-pixel part
    ],
)
def test_resize_pasted_equals_resizing_the_built_canvas(
    part_hw, offset, canvas, size
) -> None:
    part = torch.randint(
        0,
        256,
        (3, *part_hw),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(7),
    )
    (x, y), (width, height) = offset, canvas
    built = _mean_pixel(torch.uint8).expand(3, height, width).clone()
    built[:, y : y + part_hw[0], x : x + part_hw[1]] = part
    expected = F.interpolate(
        built[None].float(), size=(size, size), mode="bilinear", align_corners=False
    )[0]
    got = _resize_pasted(part, offset, canvas, size)
    assert got.shape == (3, size, size) and got.dtype == torch.uint8
    assert (got.float() - expected).abs().max() <= 0.5 + 1e-3  # the same value, rounded


def test_resize_pasted_distorts_only_what_it_reads_with_the_same_result() -> None:
    part = torch.randint(
        0,
        256,
        (3, 375, 500),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(8),
    )
    photo = PhotometricParams(brightness=12.0, contrast=1.3, saturation=0.7, hue=-9.0)
    seen = []

    def distort(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(pixels.shape)
        return apply_photometric(pixels.float(), photo).round_().to(torch.uint8)

    for offset, canvas in (((700, 90), (1800, 1400)), ((3, 0), (503, 380))):
        # distort everything, then resize
        expected = _resize_pasted(distort(part), offset, canvas, 300)
        got = _resize_pasted(part, offset, canvas, 300, distort)
        assert torch.equal(got, expected)
    # 1800 x 1400 canvas: few pixels read
    assert seen[1][1] * seen[1][2] < part.shape[1] * part.shape[2] / 4


def test_fused_pipeline_equals_straightforward_order() -> None:
    dataset = ShapesDataset(25, image_size=120, seed=9)
    augment = SSDAugmentation(size=64)
    for i in range(len(dataset)):
        image, target = dataset[i]
        fused, fused_target = augment(image, target, torch.Generator().manual_seed(i))
        plain, plain_boxes, plain_labels = _straightforward(
            image, target, torch.Generator().manual_seed(i), size=64
        )
        assert (denormalize(fused) - denormalize(plain)).abs().max() * 255 <= 1.0 + 1e-3
        assert torch.equal(fused_target["labels"], plain_labels)
        assert torch.allclose(fused_target["boxes"], plain_boxes, atol=1e-5)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------
@PROPERTY
@given(scenes())
def test_pipeline_boxes_valid_aligned_and_deterministic(scene) -> None:
    image, target, seed = scene
    augment = SSDAugmentation(size=32)
    out, new = augment(image, target, torch.Generator().manual_seed(seed))
    boxes = new["boxes"]
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert boxes.shape[1] == 4 and len(boxes) == len(new["labels"]) == len(
        new["difficult"]
    )
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    # Alignment: labels are unique ids here, and odd ids were the difficult ones.
    assert set(new["labels"].tolist()) <= set(target["labels"].tolist())
    assert new["difficult"].tolist() == [(int(k) - 1) % 2 == 1 for k in new["labels"]]
    again, same = augment(image, target, torch.Generator().manual_seed(seed))
    assert torch.equal(out, again) and torch.equal(boxes, same["boxes"])


@PROPERTY
@given(scenes(), st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9, -math.inf]))
def test_crop_honours_min_iou(scene, min_iou) -> None:
    image, target, seed = scene
    boxes = target["boxes"]
    height, width = image.shape[1:]
    window, used = sample_iou_crop(
        boxes, width, height, torch.Generator().manual_seed(seed), min_iou=min_iou
    )
    assert used == min_iou
    if window is None:
        return
    x1, y1, x2, y2 = window
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert box_iou(torch.tensor([window], dtype=torch.float32), boxes).max() >= min_iou
    out, kept, labels, difficult = apply_crop(
        image, boxes, target["labels"], target["difficult"], window
    )
    assert out.shape == (3, y2 - y1, x2 - x1)
    assert len(kept) >= 1 and len(kept) == len(labels) == len(difficult)
    assert ((kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])).all()
    assert (
        (kept[:, [0, 2]] <= x2 - x1).all()
        and (kept[:, [1, 3]] <= y2 - y1).all()
        and (kept >= 0).all()
    )


@PROPERTY
@given(scenes())
def test_zoom_out_keeps_pixels_and_boxes_together(scene) -> None:
    image, target, seed = scene
    generator = torch.Generator().manual_seed(seed)
    canvas, boxes = zoom_out(image, target["boxes"], generator, p=1.0)
    height, width = image.shape[1:]
    assert (
        width <= canvas.shape[2] <= 4 * width
        and height <= canvas.shape[1] <= 4 * height
    )
    # [G, 4]: the same (left, top, left, top) for every box
    shift = boxes - target["boxes"]
    if len(boxes):
        left, top = int(shift[0, 0]), int(shift[0, 1])
        assert torch.equal(canvas[:, top : top + height, left : left + width], image)
        assert (boxes[:, 2] <= canvas.shape[2]).all() and (
            boxes[:, 3] <= canvas.shape[1]
        ).all()


@PROPERTY
@given(scenes())
def test_flip_twice_is_identity(scene) -> None:
    image, target, _ = scene
    once_image, once_boxes = hflip(image, target["boxes"])
    twice_image, twice_boxes = hflip(once_image, once_boxes)
    assert torch.equal(twice_image, image) and torch.equal(twice_boxes, target["boxes"])


@PROPERTY
@given(st.integers(0, 2**31 - 1))
def test_photometric_stays_in_range_and_is_deterministic(seed) -> None:
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 255
    params = sample_photometric(
        torch.Generator().manual_seed(seed), channel_swap_prob=0.5
    )
    assert params == sample_photometric(
        torch.Generator().manual_seed(seed), channel_swap_prob=0.5
    )
    out = apply_photometric(image, params)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255


def test_hsv_works_on_a_batch_and_on_any_scale() -> None:
    # [B, 3, H, W] gives image by image what [3, H, W] gives; H and S do not depend on
    # the scale
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * 255
    hsv = rgb_to_hsv(x)  # [2, 3, 4, 5]
    for k in range(2):
        torch.testing.assert_close(hsv[k], rgb_to_hsv(x[k]))
    # float32 on the 0..255 scale
    torch.testing.assert_close(hsv_to_rgb(hsv), x, atol=1e-3, rtol=0)
    unit = rgb_to_hsv(x / 255)
    torch.testing.assert_close(unit[:, :2], hsv[:, :2])
    torch.testing.assert_close(unit[:, 2] * 255, hsv[:, 2], atol=1e-3, rtol=0)


def test_box_functions_keep_the_boxes_device() -> None:
    # "meta" tensors stand in for a GPU: a helper tensor made on the CPU would not mix
    # with them
    from ssd_tutorial.augmentation import ZoomOutParams

    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]], device="meta")  # [1, 4] xyxy px
    image = torch.zeros(3, 5, 5, device="meta")
    _, moved = apply_zoom_out(image, boxes, ZoomOutParams(10, 10, 2, 3))
    assert moved.device.type == "meta" and moved.shape == (1, 4)
    assert to_normalized_boxes(boxes, 5, 5).device.type == "meta"


@pytest.mark.parametrize("train", [True, False])
def test_uint8_output_normalizes_to_the_default_output(train: bool) -> None:
    dataset = ShapesDataset(6, image_size=90, seed=3)
    for i in range(len(dataset)):
        image, target = dataset[i]
        default, default_target = SSDAugmentation(48, train=train)(
            image, target, torch.Generator().manual_seed(i)
        )
        raw, raw_target = SSDAugmentation(48, train=train, normalize=False)(
            image, target, torch.Generator().manual_seed(i)
        )
        assert raw.dtype == torch.uint8 and raw.shape == (3, 48, 48)
        assert torch.equal(normalize(raw), default)
        assert torch.equal(raw_target["boxes"], default_target["boxes"])


# --------------------------------------------------------------------------------------
# The crop rule against Caffe's, on real VOC boxes
# --------------------------------------------------------------------------------------
VOC_MINI = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "voc2012_mini100"
)


def caffe_pool_crop(
    norm_boxes: list[list[float]], rng: random.Random
) -> tuple[float, float, float, float]:
    """Caffe SSD's crop choice, written loop by loop from sampler.cpp and ssd_pascal.py.

    ``GenerateBatchSamples``: the whole image (a sampler without constraints) always
    enters the pool; each of the samplers min IoU 0.1, 0.3, 0.5, 0.7, 0.9 and "max IoU
    1" (any patch) draws up to 50 patches (``SampleBBox``: scale U(0.3, 1), aspect
    U(max(0.5, s^2), min(2, 1/s^2)),
    w = s sqrt(ar), h = s / sqrt(ar), uniform offset) and keeps its first that satisfies
    its constraint; annotated_data_layer.cpp picks one pool member uniformly.  Plus our
    one marked departure, a box centre inside the patch.  Normalized xyxy.
    """
    pool = [(0.0, 0.0, 1.0, 1.0)]
    for min_iou in (0.1, 0.3, 0.5, 0.7, 0.9, None):
        for _ in range(50):
            s = rng.uniform(0.3, 1.0)
            ar = rng.uniform(max(0.5, s * s), min(2.0, 1.0 / (s * s)))
            w, h = s * math.sqrt(ar), s / math.sqrt(ar)
            x, y = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
            best, centre_inside = 0.0, False
            for bx1, by1, bx2, by2 in norm_boxes:
                inter = max(0.0, min(x + w, bx2) - max(x, bx1)) * max(
                    0.0, min(y + h, by2) - max(y, by1)
                )
                best = max(best, inter / (w * h + (bx2 - bx1) * (by2 - by1) - inter))
                cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
                centre_inside |= x < cx < x + w and y < cy < y + h
            if centre_inside and (min_iou is None or best >= min_iou):
                pool.append((x, y, x + w, y + h))
                break
    return pool[rng.randrange(len(pool))]


def _mini100_crop_stats(choose, draws: int, seed: int) -> tuple[float, float]:
    """Zoom out (our draws) then ``choose(boxes px, canvas w, canvas h) -> window px |
    None`` on mini100's boxes: the fraction of outputs left uncropped, and the median
    object side (sqrt of area) in the 300 px training image."""
    from ssd_tutorial.data import VOCDataset

    dataset = VOCDataset(VOC_MINI, "trainval")
    annotations = [dataset.annotation(i) for i in range(len(dataset))]
    generator = torch.Generator().manual_seed(seed)
    whole, sides = 0, []
    for i in range(draws):
        ann = annotations[i % len(annotations)]
        width, height, boxes = ann["width"], ann["height"], ann["boxes"].float()
        zoom = sample_zoom_out(width, height, generator)
        if zoom is not None:
            boxes = boxes + torch.tensor([zoom.left, zoom.top] * 2, dtype=boxes.dtype)
            width, height = zoom.width, zoom.height
        window = choose(boxes, width, height, generator)
        whole += window is None
        x1, y1, x2, y2 = window if window is not None else (0, 0, width, height)
        _, kept, _, _ = apply_crop(
            torch.zeros(3, 0, 0), boxes, ann["labels"], ann["difficult"], window
        )
        scale = 300.0 * 300.0 / ((x2 - x1) * (y2 - y1))
        sides += [math.sqrt(float((b[2] - b[0]) * (b[3] - b[1])) * scale) for b in kept]
    return whole / draws, float(np.median(sides))


@pytest.mark.skipif(
    not VOC_MINI.is_dir(), reason="../shared/data/voc2012_mini100 not present"
)
def test_crop_rule_matches_caffe_on_voc_mini100() -> None:
    """Fallback rate and object size after zoom-out + crop, ours against the loop above
    (3000 draws each: about +-1.5 points and +-2 px of sampling noise).  The rule this
    replaced (draw one option, whole image if its 50 trials fail) kept 55 % of the
    outputs uncropped."""
    rng = random.Random(0)

    def caffe(boxes, width, height, _generator):
        norm = (boxes / torch.tensor([width, height, width, height])).tolist()
        x1, y1, x2, y2 = caffe_pool_crop(norm, rng)
        return (
            None
            if (x1, y1, x2, y2) == (0.0, 0.0, 1.0, 1.0)
            else (int(x1 * width), int(y1 * height), int(x2 * width), int(y2 * height))
        )

    def ours(boxes, width, height, generator):
        return sample_iou_crop(boxes, width, height, generator)[0]

    def ours_batched(boxes, width, height, generator):
        norm = boxes / torch.tensor([width, height, width, height])
        crop = sample_crops(
            norm[None], torch.ones(1, len(boxes), dtype=torch.bool), generator
        )[0]
        if torch.equal(crop, torch.tensor([0.0, 0.0, 1.0, 1.0])):
            return None
        return tuple(
            int(v)
            for v in (crop * torch.tensor([width, height, width, height])).floor()
        )

    ref_whole, ref_side = _mini100_crop_stats(caffe, 3000, seed=0)
    assert 0.22 <= ref_whole <= 0.30  # a quarter of the outputs keep the whole image
    for rule in (ours, ours_batched):
        whole, side = _mini100_crop_stats(rule, 3000, seed=1)
        assert abs(whole - ref_whole) <= 0.035, (rule.__name__, whole, ref_whole)
        assert abs(side - ref_side) <= 0.06 * ref_side, (rule.__name__, side, ref_side)


def test_augmentation_reexports_the_photometric_and_preprocessing_names() -> None:
    """Chapters, tests and scripts import these from ssd_tutorial.augmentation; their
    homes are photometric and preprocessing."""
    from ssd_tutorial import augmentation, photometric, preprocessing

    for module in (photometric, preprocessing):
        for name in module.__all__:
            assert getattr(augmentation, name) is getattr(module, name), name
            assert name in augmentation.__all__, name
    for name in ("_rand", "_uniform", "_adjust_saturation_hue"):
        assert getattr(augmentation, name) is getattr(photometric, name), name
    # appendix A imports these from augmentation
    for name in (
        "_mean_pixel",
        "_resize_pasted",
    ):
        assert getattr(augmentation, name) is getattr(preprocessing, name), name
