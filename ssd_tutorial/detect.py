"""Run a trained SSD on an image and draw what it finds.

    python -m ssd_tutorial.detect photo.jpg --checkpoint runs/shapes_gpu/last.pt --output out.png
    python -m ssd_tutorial.detect shapes.png --checkpoint book/results/shapes_tiny.pt --output out.png

The checkpoint is either a training checkpoint (``last.pt``: a dict with ``"model"`` and
``"config"``) or a plain ``state_dict`` of :class:`ssd_tutorial.model.SSD300` (such as
``book/results/shapes_tiny.pt``); both are read with ``weights_only=True``.  For a plain
state dict, the width and the number of classes are read from the weights' shapes, and class
names are those of ShapesDataset (6 outputs) or VOC (21 outputs), else numbers.
The detections are printed as JSON (boxes in the image's pixels, xyxy).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssd_tutorial.data import read_image

__all__ = ["model_from_checkpoint", "read_image_file", "detect_image", "save_detections_figure", "main"]


def _width_and_classes(state_dict: dict[str, Tensor], path: str | Path) -> tuple[float, int]:
    """(width_mult, num_classes) of an SSD300 state dict, from its L2Norm and first conf head."""
    from ssd_tutorial.default_boxes import SSD300_VOC, boxes_per_cell

    try:
        l2norm = state_dict["l2norm.weight"]  # [512 * width]: conv4_3's channels, the finest count to divide
        conf_head = state_dict["conf_heads.0.weight"]  # [boxes_per_cell * C, in, 3, 3]
    except KeyError as missing:
        raise ValueError(f"{path}: not an SSD300 state dict: no {missing} key") from None
    return l2norm.shape[0] / 512, conf_head.shape[0] // boxes_per_cell(SSD300_VOC)[0]


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str]]:
    """Load ``path`` (training checkpoint or plain state dict) -> (SSD300 in eval mode, class names).

    Class names exclude background: ``names[label - 1]`` names label ``label``.
    """
    from ssd_tutorial.checkpoint import load_checkpoint
    from ssd_tutorial.data import SHAPES_CLASSES, VOC_CLASSES
    from ssd_tutorial.model import SSD300

    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict (state dict or training checkpoint), got {type(state).__name__}")
    names: list[str] | None = None
    if "model" in state and isinstance(state["model"], dict):
        names = list(state.get("class_names", [])) or None
        state = state["model"]
    width, num_classes = _width_and_classes(state, path)
    if names is None:
        if num_classes == len(SHAPES_CLASSES) + 1:
            names = list(SHAPES_CLASSES)
        elif num_classes == len(VOC_CLASSES) + 1:
            names = list(VOC_CLASSES)
        else:
            names = [str(k) for k in range(1, num_classes)]
    elif len(names) != num_classes - 1:
        raise ValueError(f"{path}: {len(names)} class names for a model of {num_classes - 1} classes (+ background)")
    model = SSD300(num_classes=num_classes, backbone_weights=None, width_mult=width)
    model.load_state_dict(state)
    return model.to(device).eval(), names


def read_image_file(path: str | Path) -> Tensor:
    """An image file (JPEG/PNG/...) -> uint8 ``[3, H, W]`` RGB (grayscale is repeated, alpha dropped).

    The same decoder as the datasets (:func:`ssd_tutorial.data.read_image`).
    """
    return read_image(path)


def detect_image(
    model: nn.Module, image: Tensor, score_threshold: float = 0.4, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Detections of ``model`` on uint8 ``[3, H, W]`` ``image``, above ``score_threshold``.

    Returns ``{"boxes" [N, 4] xyxy pixels of the image, "scores" [N], "labels" [N] 1-based}``.
    """
    from ssd_tutorial.inference import Predictor

    out = Predictor(model, device=device, score_threshold=score_threshold)([image])[0]
    return {k: out[k].cpu() for k in ("boxes", "scores", "labels")}


def save_detections_figure(image: Tensor, detections: dict[str, Tensor], names: Sequence[str], output: str | Path) -> Path:
    """Draw ``detections`` (pixel xyxy) on ``image`` and save the figure to ``output`` (PNG, JPG, PDF)."""
    from matplotlib.figure import Figure

    from ssd_tutorial.viz import COLORS, draw_boxes, show_image

    h, w = image.shape[1:]
    # A bare Figure, not pyplot: no backend switch, so a notebook calling this keeps its plots.
    fig = Figure(figsize=(6, 6 * h / w))
    ax = fig.subplots()
    show_image(image, ax=ax)
    labels = detections["labels"].tolist()
    captions = [f"{names[l - 1]} {s:.2f}" for l, s in zip(labels, detections["scores"].tolist())]
    draw_boxes(ax, detections["boxes"], labels=captions, colors=[COLORS[(l - 1) % 10] for l in labels])
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_tutorial.detect", description=__doc__.splitlines()[0])
    parser.add_argument("image", help="a JPEG or PNG file")
    parser.add_argument("--checkpoint", required=True, help="last.pt of a run, or a plain SSD300 state dict")
    parser.add_argument("--output", default="detections.png", help="where to save the drawing")
    parser.add_argument("--score-threshold", type=float, default=0.4)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, names = model_from_checkpoint(args.checkpoint, device)
        image = read_image_file(args.image)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    detections = detect_image(model, image, args.score_threshold, device)
    save_detections_figure(image, detections, names, args.output)
    records: list[dict[str, Any]] = [
        {"label": names[l - 1], "score": round(s, 4), "box_xyxy_px": [round(v, 1) for v in b]}
        for b, s, l in zip(detections["boxes"].tolist(), detections["scores"].tolist(), detections["labels"].tolist())
    ]
    print(json.dumps({"image": str(args.image), "output": str(args.output), "detections": records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
