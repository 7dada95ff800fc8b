"""Evaluate a checkpoint: ``python -m ssd_tutorial.evaluate``.

    python -m ssd_tutorial.evaluate --checkpoint book/results/shapes_tiny.pt \\
        --dataset shapes --output-dir runs/eval_shapes
    python -m ssd_tutorial.evaluate --checkpoint runs/ssd300/last.pt --dataset voc \\
        --root data/VOCdevkit/VOC2007 --split test --output-dir runs/eval_voc07

The checkpoint is a plain ``state_dict`` of ``model.SSD300`` or a training checkpoint (a
dict with a ``"model"`` key); it is read with ``weights_only=True``.  The model's width
and number of classes are read from the weights, so the tiny CPU preset and the full
SSD300 both work.  The class names are those a training checkpoint stores (``--classes``
must repeat them, in order); for a plain state dict, ``--classes`` (its count checked),
else VOC's or the shapes' by the number of outputs.

Written to ``--output-dir``: ``evaluation.json`` (VOC AP50 11-point and all-point per
class, COCO AP@[.5:.95] / AP50 / AP75, counts and settings), ``pr_curves.png`` and
``per_class.txt``.
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
from torch import nn

from ssd_tutorial.cli import add_debug_flag, int_at_least, run_main
from ssd_tutorial.data import SHAPES_CLASSES, VOC_CLASSES, ShapesDataset, VOCDataset
from ssd_tutorial.detector import load_detector, resolve_class_names, split_class_names
from ssd_tutorial.evaluation import per_class_table, plot_pr_curves
from ssd_tutorial.own_data import category_ids_of, class_names_of, open_data
from ssd_tutorial.validate import collect_detections, score_detections

__all__ = ["load_model", "collect_detections", "main"]


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model of ``checkpoint`` in eval mode
    (:func:`ssd_tutorial.detector.load_detector`)."""
    return load_detector(checkpoint, device).model


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


def _evaluate(
    model: nn.Module,
    checkpoint_name: str,
    dataset: Any,
    class_names: Sequence[str],
    output_dir: str | Path,
    device: torch.device | str,
    batch_size: int,
    max_images: int | None,
    coco: bool,
) -> dict[str, Any]:
    """Evaluate ``model`` (class names checked) on ``dataset``; write
    ``evaluation.json``, ``pr_curves.png`` and ``per_class.txt`` to ``output_dir``;
    return the summary."""
    from matplotlib.figure import Figure

    start = time.perf_counter()
    with torch.inference_mode():
        detections, ground_truths = collect_detections(
            model, dataset, batch_size, max_images, device
        )
    seconds = time.perf_counter() - start
    voc07 = score_detections(
        detections, ground_truths, class_names, use_07_metric=True, coco=coco
    )
    voc12 = score_detections(
        detections, ground_truths, class_names, use_07_metric=False
    )
    summary: dict[str, Any] = {
        "checkpoint": checkpoint_name,
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
        summary["coco"] = voc07.pop("coco")
    summary = _round(summary)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "per_class.txt").write_text(per_class_table(voc07) + "\n")
    # not pyplot: no backend switch for a notebook that calls this
    fig = Figure(figsize=(6, 5))
    ax = plot_pr_curves(voc12, ax=fig.subplots())
    ax.set_title(f"PR curves, VOC AP50 (all-point mAP {voc12['map']:.3f})")
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=100)
    return summary


def _class_names(
    args: argparse.Namespace, stored: list[str] | None, num_classes: int
) -> list[str]:
    """The names to evaluate with: the dataset's (shapes) or --classes, checked against
    the checkpoint's; without either, the checkpoint's stored names or the defaults by
    class count."""
    if args.dataset == "shapes":
        if args.classes:
            raise ValueError(
                "--classes is for --dataset voc (the shapes dataset has its own "
                "classes)"
            )
        given: Sequence[str] | None = SHAPES_CLASSES
    else:
        given = split_class_names(args.classes) if args.classes else None
        if (
            given is None
            and stored is None
            and num_classes - 1 not in (len(VOC_CLASSES), len(SHAPES_CLASSES))
        ):
            raise ValueError(
                f"{args.checkpoint} stores no class names and its {num_classes - 1} "
                "classes are neither VOC's nor the shapes': name them with --classes"
            )
    return resolve_class_names(given, stored, num_classes, args.checkpoint)


def _build_dataset(args: argparse.Namespace, names: Sequence[str]) -> Any:
    if args.dataset == "shapes":
        return ShapesDataset(args.num_images, image_size=300, seed=args.seed)
    if args.root is None:
        raise ValueError(
            "--dataset voc needs --root (a folder with JPEGImages/, Annotations/, "
            "ImageSets/Main/)"
        )
    return VOCDataset(args.root, split=args.split, class_names=names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Evaluate an SSD300 checkpoint (VOC AP50 and COCO AP)."
    )
    parser.add_argument(
        "--checkpoint", required=True, help="state dict or training checkpoint (.pt)"
    )
    parser.add_argument("--dataset", choices=("shapes", "voc"), default="shapes")
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="your own data instead of --dataset: a VOC-layout folder or a COCO-format "
        ".json "
        "(every image of it; classes and COCO category ids checked against the "
        "checkpoint's)",
    )
    parser.add_argument(
        "--images",
        default=None,
        help="--data x.json: the images folder (default: the JSON's)",
    )
    parser.add_argument("--root", help="VOC-layout folder (--dataset voc)")
    parser.add_argument(
        "--split", default="test", help="ImageSets/Main/<split>.txt (--dataset voc)"
    )
    parser.add_argument(
        "--classes",
        help="comma-separated class names (--dataset voc; default: the checkpoint's)",
    )
    parser.add_argument(
        "--num-images",
        type=int_at_least(1),
        default=200,
        help="--dataset shapes: how many images",
    )
    parser.add_argument(
        "--seed",
        type=int_at_least(0),
        default=10_000,
        help="--dataset shapes: seed (10000 = held out)",
    )
    parser.add_argument("--max-images", type=int_at_least(1), default=None)
    parser.add_argument("--batch-size", type=int_at_least(1), default=16)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--no-coco", action="store_true", help="skip the pycocotools AP@[.5:.95]"
    )
    parser.add_argument("--output-dir", required=True)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_main(lambda: _main(args), args.debug)


def _own_data(args: argparse.Namespace, stored: Any) -> tuple[Any, list[str]]:
    """--data: the dataset, read with the checkpoint's class names (in its order), and
    the names."""
    given = split_class_names(args.classes) if args.classes else stored.names
    names = (
        resolve_class_names(
            given, stored.names, stored.model.num_classes, args.checkpoint
        )
        if given
        else None
    )
    dataset = open_data(args.data, args.images, names)
    names = list(class_names_of(dataset))
    resolve_class_names(names, stored.names, stored.model.num_classes, args.checkpoint)
    ids = category_ids_of(dataset)
    if (
        stored.category_ids is not None
        and ids is not None
        and tuple(ids) != tuple(stored.category_ids)
    ):
        raise ValueError(
            f"{args.data}: category ids {list(ids)} for {names}, but {args.checkpoint} "
            f"was trained with {stored.category_ids}: the same names under other ids"
        )
    return dataset, names


def _main(args: argparse.Namespace) -> int:
    stored = load_detector(args.checkpoint, args.device)
    if args.data is not None:
        dataset, names = _own_data(args, stored)
    else:
        names = _class_names(args, stored.names, stored.model.num_classes)
        dataset = _build_dataset(args, names)
    summary = _evaluate(
        stored.model,
        Path(args.checkpoint).name,
        dataset,
        names,
        args.output_dir,
        args.device,
        args.batch_size,
        args.max_images,
        coco=not args.no_coco,
    )
    print(
        json.dumps(
            {k: v for k, v in summary.items() if not k.startswith("ap50")}, indent=2
        )
    )
    print(f"wrote {Path(args.output_dir) / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
