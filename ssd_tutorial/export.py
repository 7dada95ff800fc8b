"""Export a trained SSD to ONNX, optionally with its NMS, and check it with onnxruntime.

    python -m ssd_tutorial.export --checkpoint runs/voc0712/last.pt --out ssd300.onnx
    python -m ssd_tutorial.export --checkpoint runs/voc0712/last.pt \\
        --out ssd300_nms.onnx --with-postprocess
    python -m ssd_tutorial.export --weights torchvision-coco --out tv_coco.onnx \\
        --with-postprocess

What the file holds (inputs, outputs, metadata) is in :mod:`ssd_tutorial.onnx_export`.
"""

from __future__ import annotations

import argparse
import json
import sys

from ssd_tutorial.cli import USER_ERRORS, add_debug_flag, int_at_least, run_main
from ssd_tutorial.detector import load_detector

# re-exported: the package's ONNX names, as before
from ssd_tutorial.onnx_export import (
    DEFAULT_OPSET,
    ExportableSSD,
    check_onnx,
    export_onnx,
    group_nms,
    run_onnx,
)

__all__ = [
    "group_nms",
    "ExportableSSD",
    "export_onnx",
    "run_onnx",
    "check_onnx",
    "main",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_tutorial.export", description=__doc__.splitlines()[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        help="last.pt of a run, or a plain SSD300/SSD512 state dict of this package",
    )
    source.add_argument(
        "--weights",
        help="published weights: torchvision-coco, ssd-pytorch-voc, or a file path",
    )
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--with-postprocess",
        action="store_true",
        help="also decode + NMS in the graph: boxes, scores, labels, num_detections "
        "outputs",
    )
    parser.add_argument("--score-threshold", type=float, default=0.01)
    parser.add_argument("--iou-threshold", type=float, default=0.45)
    parser.add_argument("--top-k", type=int_at_least(1), default=200)
    parser.add_argument("--candidates-per-class", type=int_at_least(1), default=400)
    parser.add_argument("--opset", type=int_at_least(18), default=DEFAULT_OPSET)
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip the onnxruntime vs PyTorch comparison",
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_main(lambda: _main(args), args.debug, USER_ERRORS + (ImportError,))


def _main(args: argparse.Namespace) -> int:
    detector = load_detector(
        args.checkpoint if args.checkpoint is not None else args.weights, "cpu"
    )
    model, priors = detector.model, detector.priors
    names = list(detector.class_names)
    postprocess = dict(
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
        top_k=args.top_k,
        candidates_per_class=args.candidates_per_class,
    )
    path = export_onnx(
        model,
        args.out,
        priors,
        with_postprocess=args.with_postprocess,
        class_names=names,
        opset=args.opset,
        **postprocess,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if not args.no_check:
        report = check_onnx(path, model, priors, **postprocess)
        print("onnxruntime vs PyTorch: " + json.dumps(report))
        if report.get("detections_identical") is False:
            print(
                "error: the exported post-processing gives other detections than "
                "PyTorch's (if the model is untrained, equal scores may be the cause: "
                "onnxruntime's NonMaxSuppression may take them in another order)",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
