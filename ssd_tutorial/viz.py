"""Plotting helpers the chapters share: images, boxes, default boxes, and real source
code.

Everything draws on a matplotlib ``Axes`` and returns it, so chapters can compose
figures.  Images may be ``uint8 [3, H, W]`` tensors, ``float [3, H, W]`` tensors in [0,
1], or ``[H, W, 3]`` numpy arrays.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from torch import Tensor

from ssd_tutorial.boxes import cxcywh_to_xyxy
from ssd_tutorial.default_boxes import (
    SSD300_VOC,
    DefaultBoxConfig,
    boxes_per_cell,
    boxes_per_map,
    default_boxes,
)

__all__ = [
    "COLORS",
    "to_hwc",
    "load_sample_photo",
    "show_image",
    "draw_boxes",
    "draw_default_boxes",
    "default_box_names",
    "add_box_legend",
    "show_source",
]

# A qualitative palette (matplotlib's tab10) so class k always gets the same colour.
COLORS = [plt.get_cmap("tab10")(i) for i in range(10)]


def to_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """Any supported image -> ``[H, W, 3]`` float array in [0, 1] for ``imshow``."""
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)  # [3, H, W] -> [H, W, 3]
        image = image.numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=-1)
    return np.clip(image, 0.0, 1.0)


def load_sample_photo() -> Tensor:
    """The photo every chapter uses: matplotlib's sample ``grace_hopper.jpg`` -> uint8
    ``[3, 600, 512]``.

    It ships with matplotlib, so no download is needed.
    """
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        array = plt.imread(f)  # [H, W, 3] uint8
    # np.array copies: imread may hand back a read-only array, which torch warns about
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).contiguous()


def show_image(
    image: Tensor | np.ndarray, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """Show an image without axes ticks."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(to_hwc(image))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def draw_boxes(
    ax: Axes,
    boxes_xyxy: Tensor | np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[Any] | None = None,
    colors: Sequence[Any] | Any | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    linewidth: float = 2.0,
    linestyle: str = "-",
    alpha: float = 1.0,
    fontsize: float = 9,
) -> Axes:
    """Draw ``[N, 4]`` xyxy boxes on ``ax``.

    ``scale = (width, height)`` turns normalized boxes into pixels.  ``labels`` (strings
    or numbers) are written at each box's top-left corner.  ``colors`` is one colour or
    one per box.
    """
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    sx, sy = scale
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if colors is None:
            color = COLORS[i % len(COLORS)]
        elif (
            isinstance(colors, (list, tuple))
            and len(colors) == len(boxes)
            and not isinstance(colors[0], float)
        ):
            color = colors[i]
        else:
            color = colors
        ax.add_patch(
            Rectangle(
                (x1 * sx, y1 * sy),
                (x2 - x1) * sx,
                (y2 - y1) * sy,
                fill=False,
                edgecolor=color,
                linewidth=linewidth,
                linestyle=linestyle,
                alpha=alpha,
            )
        )
        if labels is not None:
            ax.text(
                x1 * sx,
                y1 * sy,
                str(labels[i]),
                color="white",
                fontsize=fontsize,
                va="bottom",
                bbox=dict(facecolor=color, edgecolor="none", pad=1, alpha=0.8),
            )
    return ax


def draw_default_boxes(
    ax: Axes,
    map_index: int,
    cells: Sequence[tuple[int, int]] = ((0, 0),),
    cfg: DefaultBoxConfig = SSD300_VOC,
    scale: tuple[float, float] = (1.0, 1.0),
    show_centres: bool = True,
) -> Axes:
    """Draw the default boxes of the given ``(row, col)`` cells of feature map
    ``map_index``.

    Boxes come from :func:`ssd_tutorial.default_boxes.default_boxes`, so what is drawn
    is what the model uses.  ``scale = (width, height)`` maps normalized coordinates to
    the image.
    """
    n_maps = len(cfg.feature_maps)
    if not 0 <= map_index < n_maps:
        raise IndexError(
            f"map_index {map_index} is out of range: the layout has {n_maps} maps"
        )
    f = cfg.feature_maps[map_index]
    for row, col in cells:
        if not (0 <= row < f and 0 <= col < f):
            raise IndexError(
                f"cell ({row}, {col}) is outside feature map {map_index} of size "
                f"{f}x{f}"
            )
    priors = default_boxes(cfg)  # [P, 4] cxcywh normalized
    start = sum(boxes_per_map(cfg)[:map_index])
    a = boxes_per_cell(cfg)[map_index]
    for row, col in cells:
        first = start + (row * f + col) * a
        cell_boxes = cxcywh_to_xyxy(priors[first : first + a])  # [A, 4] xyxy
        draw_boxes(
            ax,
            cell_boxes,
            colors=[COLORS[i % 10] for i in range(a)],
            scale=scale,
            linewidth=1.5,
        )
        if show_centres:
            cx, cy = priors[first, :2].tolist()
            ax.plot(cx * scale[0], cy * scale[1], "o", color="red", markersize=3)
    return ax


def default_box_names(
    cfg: DefaultBoxConfig = SSD300_VOC, map_index: int = 0
) -> list[str]:
    """Names of one cell's default boxes of map ``map_index``, in the order they are
    drawn.

    The order is that of :func:`ssd_tutorial.default_boxes.default_boxes`: the square of
    side s_k, the square of side sqrt(s_k s_k+1), then for each aspect ratio a a box a:1
    (wide) and its transpose 1:a.  ``draw_default_boxes`` gives box i the colour
    ``COLORS[i]``.
    """
    names = ["1:1, side s_k", "1:1, side sqrt(s_k s_k+1)"]
    for a in cfg.aspect_ratios[map_index]:
        a_text = f"{a:g}"
        names += [f"{a_text}:1", f"1:{a_text}"]
    return names


def add_box_legend(
    ax: Axes,
    names: Sequence[str],
    colors: Sequence[Any] | None = None,
    linestyles: Sequence[str] | str = "-",
    **legend_kwargs: Any,
) -> Axes:
    """A legend that says what each box colour means: one line per ``names[i]``.

    ``colors`` defaults to ``COLORS`` (the colours ``draw_boxes`` and
    ``draw_default_boxes`` use by default); ``linestyles`` is one style or one per name.
    Extra keyword arguments go to ``ax.legend`` (e.g. ``loc``, ``fontsize``, ``ncols``).
    """
    if colors is None:
        colors = [COLORS[i % len(COLORS)] for i in range(len(names))]
    if isinstance(linestyles, str):
        linestyles = [linestyles] * len(names)
    if not (len(colors) == len(names) == len(linestyles)):
        raise ValueError(
            f"add_box_legend: {len(names)} names, {len(colors)} colors and "
            f"{len(linestyles)} linestyles must have the same length"
        )
    handles = [
        Line2D([], [], color=c, linestyle=ls, linewidth=2, label=str(n))
        for n, c, ls in zip(names, colors, linestyles)
    ]
    ax.legend(handles=handles, **legend_kwargs)
    return ax


class _Source:
    """The source of a function: a fenced Python block in a notebook, plain text
    elsewhere.

    The notebook stores Markdown, not highlighted HTML: Sphinx highlights it when the
    book is built and Jupyter/Colab when they render it, so the stored output is the
    source text itself (what nbval should compare) and not one Pygments release's HTML.
    """

    def __init__(self, code: str) -> None:
        self.code = code

    def __repr__(self) -> str:
        return self.code

    def _repr_markdown_(self) -> str:
        # A fence longer than any run of backticks inside the code cannot be closed by
        # it.
        longest = max((len(run) for run in re.findall(r"`+", self.code)), default=0)
        fence = "`" * max(3, longest + 1)
        return f"{fence}python\n{self.code}\n{fence}"


def show_source(obj: Any) -> _Source:
    """The real source of ``obj`` (a function, class or module) for display in a
    chapter.

    Chapters show the package's code with this instead of copying it, so the book can
    never drift from what runs.
    """
    return _Source(inspect.getsource(obj).rstrip("\n"))
