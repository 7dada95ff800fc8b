"""Evaluate a checkpoint: ``python -m ssd_tutorial.evaluate``.

    python -m ssd_tutorial.evaluate --checkpoint book/results/shapes_tiny.pt --dataset shapes \\
        --output-dir runs/eval_shapes
    python -m ssd_tutorial.evaluate --checkpoint runs/ssd300/last.pt --dataset voc \\
        --root data/VOCdevkit/VOC2007 --split test --output-dir runs/eval_voc07

The checkpoint is a plain ``state_dict`` of ``model.SSD300`` or a training checkpoint (a dict with
a ``"model"`` key); it is read with ``weights_only=True``.  The model's width and number of classes
are read from the weights, so the tiny CPU preset and the full SSD300 both work.

Written to ``--output-dir``: ``evaluation.json`` (VOC AP50 11-point and all-point per class, COCO
AP@[.5:.95] / AP50 / AP75, counts and settings), ``pr_curves.png`` and ``per_class.txt``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssd_tutorial.evaluation import evaluate_coco, evaluate_voc, per_class_table, plot_pr_curves
from ssd_tutorial.inference import Predictor

__all__ = ["load_model", "collect_detections", "evaluate_checkpoint", "main"]


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """An ``SSD300`` in eval mode with the weights of ``checkpoint`` (width and classes read from it).

    :func:`ssd_tutorial.detect.model_from_checkpoint` without the class names.
    """
    from ssd_tutorial.detect import model_from_checkpoint

    return model_from_checkpoint(checkpoint, device)[0]


def collect_detections(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 16,
    max_images: int | None = None,
    device: torch.device | str | None = None,
    **detect_kwargs: Any,
) -> tuple[dict[str, dict[str, Tensor]], dict[str, dict[str, Tensor]]]:
    """Run ``model`` over ``dataset`` (items ``(uint8 [3, H, W], target)`` with pixel boxes).

    Returns ``(detections, ground_truths)`` keyed by ``image_id``, in the format of
    :func:`ssd_tutorial.evaluation.evaluate_voc` (xyxy pixels, 1-based labels).
    ``detect_kwargs`` go to :class:`ssd_tutorial.inference.Predictor` (``size``, thresholds).
    The model is left in the train/eval mode it came in.
    """
    was_training = model.training
    predictor = Predictor(model, device=device, batch_size=batch_size, **detect_kwargs)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    detections: dict[str, dict[str, Tensor]] = {}
    ground_truths: dict[str, dict[str, Tensor]] = {}
    for first in range(0, n, batch_size):
        items = [dataset[i] for i in range(first, min(n, first + batch_size))]
        for (_, target), det in zip(items, predictor([image for image, _ in items])):
            image_id = str(target["image_id"])
            detections[image_id] = {k: det[k].cpu() for k in ("boxes", "scores", "labels")}
            ground_truths[image_id] = {
                "boxes": target["boxes"],
                "labels": target["labels"],
                "difficult": target.get("difficult", torch.zeros(len(target["labels"]), dtype=torch.bool)),
            }
    model.train(was_training)
    return detections, ground_truths


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: Any,
    class_names: Sequence[str],
    output_dir: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    max_images: int | None = None,
    coco: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``dataset``; write JSON, PR plot and table to ``output_dir``."""
    from matplotlib.figure import Figure

    model = load_model(checkpoint, device)
    if model.num_classes != len(class_names) + 1:
        raise ValueError(
            f"{checkpoint} predicts {model.num_classes - 1} classes (+ background) but the dataset "
            f"has {len(class_names)}: {list(class_names)}"
        )
    start = time.perf_counter()
    with torch.inference_mode():
        detections, ground_truths = collect_detections(model, dataset, batch_size, max_images, device)
    seconds = time.perf_counter() - start
    voc07 = evaluate_voc(detections, ground_truths, class_names, 0.5, use_07_metric=True)
    voc12 = evaluate_voc(detections, ground_truths, class_names, 0.5, use_07_metric=False)
    summary: dict[str, Any] = {
        "checkpoint": Path(checkpoint).name,
        "images": len(ground_truths),
        "objects": int(sum(len(g["labels"]) for g in ground_truths.values())),
        "detections": int(sum(len(d["scores"]) for d in detections.values())),
        "inference_seconds": round(seconds, 2),
        "device": str(device),
        "voc_map50_11point": voc07["map"],
        "voc_map50_allpoint": voc12["map"],
        "ap50_11point": voc07["ap"],
        "ap50_allpoint": voc12["ap"],
        "missing_classes": voc07["missing_classes"],
    }
    if coco:
        summary["coco"] = evaluate_coco(detections, ground_truths, class_names)
    summary = _round(summary)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "per_class.txt").write_text(per_class_table(voc07) + "\n")
    fig = Figure(figsize=(6, 5))  # not pyplot: no backend switch for a notebook that calls this
    ax = plot_pr_curves(voc12, ax=fig.subplots())
    ax.set_title(f"PR curves, VOC AP50 (all-point mAP {voc12['map']:.3f})")
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=100)
    return summary


def _build_dataset(args: argparse.Namespace) -> tuple[Any, Sequence[str]]:
    from ssd_tutorial.data import SHAPES_CLASSES, VOC_CLASSES, ShapesDataset, VOCDataset

    if args.dataset == "shapes":
        return ShapesDataset(args.num_images, image_size=300, seed=args.seed), SHAPES_CLASSES
    if args.root is None:
        raise SystemExit("--dataset voc needs --root (a folder with JPEGImages/, Annotations/, ImageSets/Main/)")
    names = tuple(c.strip() for c in args.classes.split(",")) if args.classes else VOC_CLASSES
    return VOCDataset(args.root, split=args.split, class_names=names), names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate an SSD300 checkpoint (VOC AP50 and COCO AP).")
    parser.add_argument("--checkpoint", required=True, help="state dict or training checkpoint (.pt)")
    parser.add_argument("--dataset", choices=("shapes", "voc"), default="shapes")
    parser.add_argument("--root", help="VOC-layout folder (--dataset voc)")
    parser.add_argument("--split", default="test", help="ImageSets/Main/<split>.txt (--dataset voc)")
    parser.add_argument("--classes", help="comma-separated class names (--dataset voc; default: the 20 VOC classes)")
    parser.add_argument("--num-images", type=int, default=200, help="--dataset shapes: how many images")
    parser.add_argument("--seed", type=int, default=10_000, help="--dataset shapes: seed (10000 = held out)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-coco", action="store_true", help="skip the pycocotools AP@[.5:.95]")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    dataset, names = _build_dataset(args)
    summary = evaluate_checkpoint(
        args.checkpoint, dataset, names, args.output_dir, args.device, args.batch_size, args.max_images,
        coco=not args.no_coco,
    )
    print(json.dumps({k: v for k, v in summary.items() if not k.startswith("ap50")}, indent=2))
    print(f"wrote {Path(args.output_dir) / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
