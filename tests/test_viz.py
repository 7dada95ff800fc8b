"""Tests for ssd_tutorial.viz: image conversion, the sample photo, what the box helpers
draw."""

from __future__ import annotations

import inspect
import math

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

from ssd_tutorial.boxes import box_iou
from ssd_tutorial.default_boxes import SSD300_VOC
from ssd_tutorial.viz import (
    COLORS,
    add_box_legend,
    default_box_names,
    draw_boxes,
    draw_default_boxes,
    load_sample_photo,
    show_image,
    show_source,
    to_hwc,
)


@pytest.fixture
def ax():
    fig, axes = plt.subplots()
    yield axes
    plt.close(fig)


def rectangles(ax) -> list[tuple[float, float, float, float]]:
    """The rectangles on ax as (x, y, width, height), rounded to 4 decimals."""
    return [
        tuple(
            round(v, 4) for v in (p.get_x(), p.get_y(), p.get_width(), p.get_height())
        )
        for p in ax.patches
        if isinstance(p, Rectangle)
    ]


def test_to_hwc_uint8_chw_tensor():
    image = torch.zeros(3, 2, 5, dtype=torch.uint8)
    image[0, 1, 4] = 255  # red channel, row 1, column 4
    image[2, 0, 0] = 51
    out = to_hwc(image)
    assert out.shape == (2, 5, 3)
    assert out[1, 4, 0] == 1.0
    assert out[0, 0, 2] == pytest.approx(0.2)  # 51 / 255


def test_to_hwc_grayscale_float_and_numpy():
    gray = torch.full((1, 4, 4), 0.5)
    out = to_hwc(gray)
    assert out.shape == (4, 4, 3) and np.all(out == 0.5)
    hwc = np.full((3, 2, 3), 1.5)  # out-of-range floats are clipped for imshow
    assert np.all(to_hwc(hwc) == 1.0)


def test_sample_photo_is_the_documented_tensor():
    photo = load_sample_photo()
    assert photo.dtype == torch.uint8
    assert photo.shape == (3, 600, 512)
    assert photo.is_contiguous()
    assert 40 < photo.float().mean().item() < 215  # a real photo, not a blank


def test_show_image_hides_axes_and_sets_title(ax):
    show_image(torch.zeros(3, 4, 4), ax=ax, title="blank")
    assert ax.get_title() == "blank"
    assert not ax.axison


def test_draw_boxes_geometry_labels_and_scale(ax):
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])
    draw_boxes(ax, boxes, labels=["cat", 2], scale=(200, 100))
    # x scales by 200 and y by 100: (0.1*200, 0.2*100, 0.4*200, 0.4*100)
    assert rectangles(ax) == [(20.0, 20.0, 80.0, 40.0), (0.0, 0.0, 200.0, 100.0)]
    assert [t.get_text() for t in ax.texts] == ["cat", "2"]


def test_draw_boxes_colours(ax):
    draw_boxes(ax, [[0, 0, 1, 1], [0, 0, 2, 2]], colors=["red", "blue"])
    # one RGB colour
    draw_boxes(ax, [[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]], colors=(0.0, 1.0, 0.0))
    edge = [tuple(round(c, 3) for c in p.get_edgecolor()[:3]) for p in ax.patches]
    assert edge == [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)] + [(0.0, 1.0, 0.0)] * 3


def test_draw_default_boxes_of_the_1x1_map_by_hand(ax):
    # The 1x1 map has one cell centred at (0.5, 0.5) with 4 boxes (scale in pixels of
    # 300):
    # 264 x 264, sqrt(264 * 315) square, 264 sqrt2 x 264/sqrt2, and its transpose.
    draw_default_boxes(ax, map_index=5, cells=[(0, 0)], scale=(300, 300))
    extra = math.sqrt(264 * 315)
    wide, narrow = 264 * math.sqrt(2), 264 / math.sqrt(2)
    expected = [
        (150 - 132, 150 - 132, 264, 264),
        (150 - extra / 2, 150 - extra / 2, extra, extra),
        (150 - wide / 2, 150 - narrow / 2, wide, narrow),
        (150 - narrow / 2, 150 - wide / 2, narrow, wide),
    ]
    drawn = rectangles(ax)
    assert len(drawn) == 4
    for got, want in zip(drawn, expected):
        assert got == pytest.approx(want, abs=1e-3)
    (centre,) = ax.lines  # the red dot at the cell centre
    assert (centre.get_xdata()[0], centre.get_ydata()[0]) == pytest.approx((150, 150))


def test_draw_default_boxes_several_cells_are_the_model_priors(ax):
    draw_default_boxes(
        ax, map_index=1, cells=[(0, 0), (18, 18)], cfg=SSD300_VOC, show_centres=False
    )
    # [12, 4] xyxy
    drawn = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rectangles(ax)])
    assert drawn.shape == (12, 4)  # 6 boxes per cell of the 19x19 map
    assert not ax.lines
    # the last cell of the 19x19 map is centred at 18.5 * 16 / 300 on both axes
    centre = (drawn[6:, :2] + drawn[6:, 2:]) / 2
    torch.testing.assert_close(
        centre, torch.full((6, 2), 18.5 * 16 / 300), atol=1e-3, rtol=0
    )
    # first two are squares of 60 px and sqrt(60*111) px
    sides = (drawn[:2, 2] - drawn[:2, 0]) * 300
    torch.testing.assert_close(
        sides, torch.tensor([60.0, math.sqrt(60 * 111)]), atol=0.05, rtol=0
    )
    # opposite corners of the map do not overlap
    assert box_iou(drawn[:1], drawn[6:7]).item() == 0.0


@pytest.mark.parametrize(
    "map_index, cell", [(6, (0, 0)), (-1, (0, 0)), (5, (1, 0)), (0, (0, 38))]
)
def test_draw_default_boxes_refuses_cells_outside_the_map(ax, map_index, cell):
    with pytest.raises(IndexError, match="out of range|outside feature map"):
        draw_default_boxes(ax, map_index=map_index, cells=[cell])


def test_show_source_is_the_real_source():
    src = show_source(box_iou)
    assert repr(src).startswith("def box_iou(a: Tensor, b: Tensor) -> Tensor:")
    assert "torch.where(union > 0" in repr(src)
    assert inspect.getsource(box_iou).rstrip("\n") == repr(src)
    markdown = src._repr_markdown_()
    assert markdown == "```python\n" + repr(src) + "\n```"
    # no library's HTML is stored in the notebooks
    assert not hasattr(src, "_repr_html_")


def test_show_source_fence_outlasts_backticks_in_the_code():
    """A docstring holding ``` must not close the fenced block early."""
    from ssd_tutorial.viz import _Source

    code = 'def f():\n    """Run:\n\n    ````\n    f()\n    ````\n    """'
    markdown = _Source(code)._repr_markdown_()
    fence = markdown.split("python", 1)[0]
    assert fence == "`````" and markdown.endswith("\n" + fence)
    assert markdown[len(fence) + len("python\n") : -len(fence) - 1] == code


def test_default_box_names_follow_the_order_and_colours_of_the_drawn_boxes(ax):
    # map 1 (19x19) has ratios (2, 3): 6 boxes; map 0 has ratio 2 only: 4 boxes
    assert default_box_names(SSD300_VOC, 1) == [
        "1:1, side s_k",
        "1:1, side sqrt(s_k s_k+1)",
        "2:1",
        "1:2",
        "3:1",
        "1:3",
    ]
    names = default_box_names(SSD300_VOC, 0)
    assert len(names) == 4
    draw_default_boxes(ax, map_index=0, cells=[(10, 10)], show_centres=False)
    drawn = [p for p in ax.patches if isinstance(p, Rectangle)]
    # box 2 is "2:1": wider than high; box 3 "1:2": higher than wide; colours COLORS[i]
    assert (
        drawn[2].get_width() > drawn[2].get_height()
        and drawn[3].get_width() < drawn[3].get_height()
    )
    assert [tuple(p.get_edgecolor()[:3]) for p in drawn] == [
        tuple(c[:3]) for c in COLORS[:4]
    ]
    add_box_legend(ax, names)
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == names
    assert [tuple(h.get_color()[:3]) for h in legend.legend_handles] == [
        tuple(c[:3]) for c in COLORS[:4]
    ]


def test_add_box_legend_refuses_mismatched_lengths(ax):
    add_box_legend(
        ax, ["truth", "guess"], colors=["lime", "orange"], linestyles=["-", "--"]
    )
    assert [h.get_linestyle() for h in ax.get_legend().legend_handles] == ["-", "--"]
    with pytest.raises(ValueError, match="2 names, 1 colors"):
        add_box_legend(ax, ["truth", "guess"], colors=["lime"])
