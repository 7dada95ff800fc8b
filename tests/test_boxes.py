"""Tests for ssd_tutorial.boxes: hand-worked cases, parity with torchvision.ops,
properties, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_tutorial.boxes import (
    box_area,
    box_intersection,
    box_iou,
    check_boxes,
    clip_boxes,
    cxcywh_to_xyxy,
    xyxy_to_cxcywh,
)


def random_xyxy(
    n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """n valid xyxy boxes inside [0, 100]^2 with positive width and height -> [n, 4]."""
    top_left = torch.rand(n, 2, generator=generator, dtype=dtype) * 80
    size = torch.rand(n, 2, generator=generator, dtype=dtype) * 40 + 0.5
    return torch.cat((top_left, top_left + size), dim=1)


# ---------------------------------------------------------------- conversions


def test_xyxy_to_cxcywh_hand_worked():
    # x from 10 to 30 -> centre 20, width 20; y from 20 to 60 -> centre 40, height 40
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 1.0, 0.5]])
    expected = torch.tensor([[20.0, 40.0, 20.0, 40.0], [0.5, 0.25, 1.0, 0.5]])
    assert torch.equal(xyxy_to_cxcywh(boxes), expected)


def test_cxcywh_to_xyxy_hand_worked():
    # centre (0.5, 0.5), 0.2 wide and 0.4 high -> x in [0.4, 0.6], y in [0.3, 0.7]
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]], dtype=torch.float64)
    expected = torch.tensor([[0.4, 0.3, 0.6, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(cxcywh_to_xyxy(boxes), expected, rtol=0, atol=1e-15)


def test_conversions_keep_leading_dims_and_dtype():
    boxes = torch.rand(2, 3, 4, dtype=torch.float64)
    out = xyxy_to_cxcywh(boxes)
    assert out.shape == (2, 3, 4)
    assert out.dtype == torch.float64
    assert cxcywh_to_xyxy(torch.zeros(0, 4)).shape == (0, 4)


def test_conversions_match_torchvision_box_convert():
    g = torch.Generator().manual_seed(0)
    boxes = random_xyxy(50, g)
    torch.testing.assert_close(
        xyxy_to_cxcywh(boxes), torchvision.ops.box_convert(boxes, "xyxy", "cxcywh")
    )
    cxcywh = torchvision.ops.box_convert(boxes, "xyxy", "cxcywh")
    torch.testing.assert_close(
        cxcywh_to_xyxy(cxcywh), torchvision.ops.box_convert(cxcywh, "cxcywh", "xyxy")
    )


# Dyadic rationals k / 1024 with k < 2**12: every sum, difference and halving in the
# conversions is again a dyadic rational with at most 14 significant bits, which float32
# (24-bit mantissa) represents exactly -- so the round trip must be exact, not
# approximately equal.
_dyadic = st.integers(min_value=0, max_value=2**11).map(lambda k: k / 1024)


@settings(max_examples=60, deadline=None)
@given(x1=_dyadic, y1=_dyadic, w=_dyadic, h=_dyadic)
def test_round_trip_is_exact_on_dyadic_boxes(x1, y1, w, h):
    xyxy = torch.tensor([[x1, y1, x1 + w, y1 + h]])
    assert torch.equal(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)
    cxcywh = torch.tensor([[x1, y1, w, h]])
    assert torch.equal(xyxy_to_cxcywh(cxcywh_to_xyxy(cxcywh)), cxcywh)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32),
        min_size=4,
        max_size=4,
    )
)
def test_round_trip_on_arbitrary_floats_is_within_rounding(values):
    # Arbitrary float32 values: each conversion rounds at most twice per coordinate, so
    # the error is a few ulps of the largest magnitude involved (|v| <= 2e3 -> ulp ~
    # 1.2e-4).
    x1, y1, w, h = values
    xyxy = torch.tensor([[x1, y1, x1 + abs(w), y1 + abs(h)]])
    torch.testing.assert_close(
        cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy, rtol=0, atol=1e-3
    )


# --------------------------------------------------------- area, clipping, intersection


def test_box_area_hand_worked_and_reversed_is_zero():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 2.0, 3.0],  # 2 x 3 = 6
            [1.0, 1.0, 1.0, 5.0],  # zero width -> 0
            [4.0, 4.0, 2.0, 6.0],  # reversed x (x2 < x1): documented as 0, not -4
        ]
    )
    assert box_area(boxes).tolist() == [6.0, 0.0, 0.0]


def test_box_area_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    boxes = random_xyxy(100, g)
    torch.testing.assert_close(box_area(boxes), torchvision.ops.box_area(boxes))


def test_clip_boxes_hand_worked():
    boxes = torch.tensor([[-0.2, 0.1, 0.5, 1.3], [1.2, 1.5, 2.0, 2.0]])
    clipped = clip_boxes(boxes)
    # the second box lies wholly outside: it collapses onto the corner (1, 1) with area
    # 0
    torch.testing.assert_close(
        clipped, torch.tensor([[0.0, 0.1, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0]])
    )
    assert box_area(clipped)[1] == 0


def test_clip_boxes_matches_torchvision():
    g = torch.Generator().manual_seed(2)
    boxes = random_xyxy(100, g) * 1.5 - 20  # some boxes stick out on every side
    # torchvision takes size as (height, width)
    torch.testing.assert_close(
        clip_boxes(boxes, width=90.0, height=70.0),
        torchvision.ops.clip_boxes_to_image(boxes, (70, 90)),
    )


def test_box_intersection_hand_worked():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 4.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    # overlap 1x1; touching along the edge x=2 -> 0; far away -> 0
    assert box_intersection(a, b).tolist() == [[1.0, 0.0, 0.0]]


# ---------------------------------------------------------------- IoU


def test_box_iou_hand_worked():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 6.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    iou = box_iou(a, b)
    assert iou.shape == (3, 3)
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7
    assert iou[0, 0].item() == pytest.approx(1 / 7)
    # [0,0,4,2] vs [2,0,6,2]: intersection 2x2 = 4, union 8 + 8 - 4 = 12
    assert iou[1, 1].item() == pytest.approx(1 / 3)
    # [1,1,3,3] inside [0,0,4,4]: intersection 4, union 16
    assert iou[2, 2].item() == pytest.approx(0.25)
    # [0,0,2,2] and [2,0,6,2] only touch: 0
    assert iou[0, 1].item() == 0.0


def test_box_iou_of_a_box_with_itself_is_one():
    g = torch.Generator().manual_seed(3)
    boxes = random_xyxy(20, g)
    torch.testing.assert_close(torch.diagonal(box_iou(boxes, boxes)), torch.ones(20))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, m", [(1, 1), (7, 13), (64, 5), (0, 3)])
def test_box_iou_matches_torchvision(n, m, dtype):
    g = torch.Generator().manual_seed(10 * n + m)
    a, b = random_xyxy(n, g, dtype), random_xyxy(m, g, dtype)
    ours = box_iou(a, b)
    assert ours.shape == (n, m)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, torchvision.ops.box_iou(a, b))


def test_box_iou_zero_area_boxes_give_zero_not_nan():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    line = torch.tensor([[0.0, 1.0, 3.0, 1.0]])
    big = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    boxes = torch.cat((point, line, big))
    iou = box_iou(boxes, boxes)
    assert not torch.isnan(iou).any()
    # a zero-area box overlaps nothing, not even itself; the real box still has IoU 1
    # with itself
    expected = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.equal(iou, expected)
    # torchvision divides 0 by 0 here; we document 0 instead
    assert torch.isnan(torchvision.ops.box_iou(point, point)).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log2_scale=st.integers(-6, 6))
def test_box_iou_properties(seed, log2_scale):
    g = torch.Generator().manual_seed(seed)
    a, b = random_xyxy(5, g, torch.float64), random_xyxy(4, g, torch.float64)
    iou = box_iou(a, b)
    assert ((iou >= 0) & (iou <= 1)).all()
    torch.testing.assert_close(iou.T, box_iou(b, a))  # symmetric
    # scale invariance: multiplying every coordinate by 2^k multiplies every area by
    # 4^k, exactly in floating point, so the IoU does not change at all
    s = 2.0**log2_scale
    assert torch.equal(box_iou(a * s, b * s), iou)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.zeros(3, 5), ValueError),  # not [..., 4]
        (torch.zeros(4, 3), ValueError),
        (torch.tensor(1.0), ValueError),  # a scalar
        (torch.zeros(2, 4, dtype=torch.int64), TypeError),  # integer boxes
        ([[0.0, 0.0, 1.0, 1.0]], TypeError),  # a list, not a tensor
    ],
)
def test_bad_shapes_and_types_raise_clear_errors(bad, error):
    good = torch.zeros(1, 4)
    for fn in (xyxy_to_cxcywh, cxcywh_to_xyxy, box_area, clip_boxes):
        with pytest.raises(error):
            fn(bad)
    with pytest.raises(error, match="^a "):
        box_iou(bad, good)
    with pytest.raises(error, match="^b "):
        box_iou(good, bad)


def test_wrong_shape_message_names_the_shape():
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 4\], got \[3, 5\]"):
        xyxy_to_cxcywh(torch.zeros(3, 5))


def test_box_iou_needs_two_dimensional_inputs():
    with pytest.raises(ValueError, match=r"\[N,4\] and \[M,4\]"):
        box_iou(torch.zeros(2, 3, 4), torch.zeros(1, 4))


def test_reversed_boxes_error_when_order_is_required():
    boxes = torch.tensor(
        [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [3.0, 0.0, 1.0, 2.0]]
    )
    with pytest.raises(ValueError, match=r"gt row 2 is not a valid xyxy box"):
        check_boxes(boxes, "gt", require_ordered=True)
    check_boxes(boxes[:2], "gt", require_ordered=True)  # ordered rows pass


def test_reversed_boxes_count_as_zero_area_in_iou():
    # documented result: a reversed box covers nothing, so it overlaps nothing -- even
    # the box with the same corners put in order, which torchvision would score as
    # overlapping
    reversed_box = torch.tensor([[4.0, 4.0, 0.0, 0.0]])
    ordered = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    assert box_iou(reversed_box, ordered).item() == 0.0
    assert box_iou(reversed_box, reversed_box).item() == 0.0
    assert math.isfinite(box_iou(ordered, reversed_box).item())
