"""Run a trained SSD on images and draw what it finds.

    python -m ssd_tutorial.detect photo.jpg --checkpoint runs/shapes_gpu/last.pt \\
        --output out.png
    python -m ssd_tutorial.detect shapes.png --checkpoint book/results/shapes_tiny.pt \\
        --output out.png
    python -m ssd_tutorial.detect photos/ more.jpg --weights torchvision-coco \\
        --output detections/

One image and an ``--output`` file name: the drawing goes there and the detections are
printed as JSON.  Video files (``clip.mp4``; see :mod:`ssd_tutorial.video`):
``--output`` is a folder that gets ``<stem>.json`` (detections per frame) and
``<stem>_detections.mp4`` (annotated; or ``--annotate frames``: PNGs); ``--every N``
takes every Nth frame, ``--max-frames`` stops early.  Several images or a folder:
``--output`` is a folder that gets one ``<name>.png`` per image and ``detections.json``
(all images, boxes in each image's pixels, xyxy).  ``--weights`` takes the published
weights of :mod:`ssd_tutorial.pretrained` (downloaded once) or a file.

The checkpoint is either a training checkpoint (``last.pt``: a dict with ``"model"`` and
``"config"``) or a plain ``state_dict`` of :class:`ssd_tutorial.model.SSD300` (such as
``book/results/shapes_tiny.pt``); both are read with ``weights_only=True``.  For a plain
state dict, the width and the number of classes are read from the weights' shapes, and
class names are those of ShapesDataset (6 outputs) or VOC (21 outputs), else numbers;
``--classes`` may rename them (same count).  A training checkpoint stores its class
names, and ``--classes`` must repeat them, in the same order.

On a CPU the network runs in channels_last and, where the CPU has native bf16
(AVX512-BF16 or AMX), under bf16 autocast; ``--precision fp32`` forces float32 (see
``inference.Predictor``).

Images over ``--max-pixels`` (default 50 megapixels) are refused before they are decoded
(their size is read from the file's header): a 20000 x 20000 PNG of 1 MB decodes to 1.2
GB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms.v2.functional import resize

from ssd_tutorial.cli import add_debug_flag, int_at_least, run_main
from ssd_tutorial.data import image_header_size, read_image
from ssd_tutorial.detector import (
    Detector,
    default_class_names,
    detection_records,
    load_detector,
    resolve_class_names,
    split_class_names,
)
from ssd_tutorial.inference import Predictor
from ssd_tutorial.video import detect_video, is_video, open_video
from ssd_tutorial.viz import COLORS, draw_boxes, to_hwc

__all__ = [
    "IMAGE_SUFFIXES",
    "DEFAULT_MAX_PIXELS",
    "collect_images",
    "load_stored_detector",
    "model_from_checkpoint",
    "default_class_names",
    "resolve_class_names",
    "detection_records",
    "read_image_file",
    "detect_image",
    "save_detections_figure",
    "main",
]


def load_stored_detector(
    path: str | Path, device: str | torch.device = "cpu"
) -> Detector:
    """:func:`ssd_tutorial.detector.load_detector` (kept under this name for older
    callers)."""
    return load_detector(path, device)


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, list[str]]:
    """``(model in eval mode, class names)`` of a checkpoint: :func:`load_detector`'s,
    as a pair."""
    detector = load_detector(path, device)
    return detector.model, list(detector.class_names)


# 150 MB decoded; far above any photo SSD300 sees (it shrinks it to 300 x 300)
DEFAULT_MAX_PIXELS = 50_000_000


def read_image_file(
    path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Tensor:
    """An image file (JPEG/PNG/...) -> uint8 ``[3, H, W]`` RGB (grayscale is repeated,
    alpha dropped).

    The same decoder as the datasets (:func:`ssd_tutorial.data.read_image`).  An image
    of more than ``max_pixels`` pixels (None: no limit) raises ValueError naming the
    file -- before it is decoded when its header says its size, as it does for the
    formats PIL reads.
    """
    if max_pixels is not None:
        size = image_header_size(path)
        if size is not None:
            _check_pixels(path, size[0], size[1], max_pixels)
    image = read_image(path)
    if max_pixels is not None:
        _check_pixels(path, image.shape[2], image.shape[1], max_pixels)
    return image


def _check_pixels(path: str | Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ValueError(
            f"{path}: {width} x {height} = {width * height / 1e6:.1f} megapixels "
            f"({3 * width * height / 1e6:.0f} MB decoded), over the limit of "
            f"{max_pixels / 1e6:g} megapixels: raise it with --max-pixels (now "
            f"{max_pixels})"
        )


def detect_image(
    model: nn.Module,
    image: Tensor,
    score_threshold: float = 0.4,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Detections of ``model`` on uint8 ``[3, H, W]`` ``image``, above
    ``score_threshold``.

    Returns ``{"boxes" [N, 4] xyxy pixels of the image, "scores" [N], "labels" [N]
    1-based}``.
    """
    out = Predictor(model, device=device, score_threshold=score_threshold)([image])[0]
    return {k: out[k].cpu() for k in ("boxes", "scores", "labels")}


def save_detections_figure(
    image: Tensor,
    detections: dict[str, Tensor],
    names: Sequence[str],
    output: str | Path,
) -> Path:
    """Draw ``detections`` (pixel xyxy) on ``image`` and save the figure to ``output``
    (PNG, JPG, PDF).

    Any image that was read can be drawn: the figure is 6 inches wide and 1 to 24 inches
    high (a very thin image is stretched to fit, boxes with it), and an image far larger
    than the drawing is shrunk for display first (boxes stay in the image's pixels).
    """
    from matplotlib.figure import Figure  # matplotlib only when a figure is drawn

    h, w = image.shape[1:]
    natural = 6.0 * h / w  # inches high at 6 inches wide
    # matplotlib needs a pixel; a thin strip must not be metres high
    fig_h = min(max(natural, 1.0), 24.0)
    # A bare Figure, not pyplot: no backend switch, so a notebook calling this keeps its
    # plots.
    fig = Figure(figsize=(6.0, fig_h))
    ax = fig.subplots()
    # twice the drawing's pixels (dpi 100)
    shown = _shrink(image, max_side=int(2 * 100 * max(6.0, fig_h)))
    # extent: the image spans pixel edges 0..w and 0..h, the coordinates the boxes are
    # in.
    ax.imshow(
        to_hwc(shown),
        extent=(0, w, h, 0),
        aspect="equal" if fig_h == natural else "auto",
    )
    ax.set_axis_off()
    labels = detections["labels"].tolist()
    captions = [
        f"{names[l - 1]} {s:.2f}" for l, s in zip(labels, detections["scores"].tolist())
    ]
    draw_boxes(
        ax,
        detections["boxes"],
        labels=captions,
        colors=[COLORS[(l - 1) % 10] for l in labels],
    )
    # not tight_layout: it gives up on extreme shapes
    fig.subplots_adjust(0.01, 0.01, 0.99, 0.99)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    return output


def _shrink(image: Tensor, max_side: int) -> Tensor:
    """uint8 ``[3, H, W]`` with its longer side at most ``max_side`` (antialiased), else
    unchanged."""
    h, w = image.shape[1:]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    return resize(
        image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True
    )


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named on the command line: files as given, folders by their image
    files (suffixes :data:`IMAGE_SUFFIXES`, any case, sorted by name, not recursive).

    A missing path raises FileNotFoundError naming it; an empty folder raises
    ValueError.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise ValueError(
                    f"{path}: a folder without image files "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def _output_names(files: Sequence[Path]) -> list[str]:
    """One drawing name per input, ``<stem>.png``; repeated stems (same name in two
    folders, or photo.jpg beside photo.png) get ``-2``, ``-3``, ... so that no drawing
    overwrites another."""
    seen: dict[str, int] = {}
    names = []
    for path in files:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        names.append(f"{path.stem}.png" if count == 1 else f"{path.stem}-{count}.png")
    return names


def detector_from_args(args: argparse.Namespace, device: str) -> Detector:
    """The detector of ``--checkpoint`` or ``--weights``, its names checked against
    ``--classes`` (the same names in the same order when the weights store them, else
    the same count; see :func:`resolve_class_names`).  Published weights' names (a
    dataset's list) may be renamed."""
    detector = load_detector(
        args.checkpoint if args.checkpoint is not None else args.weights, device
    )
    if args.classes is None:
        return detector
    names = resolve_class_names(
        split_class_names(args.classes),
        detector.names,
        detector.model.num_classes,
        detector.source,
    )
    return dataclasses.replace(detector, class_names=tuple(names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_tutorial.detect", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_FOLDER",
        help="image files and/or folders of images; or video files (.mp4, .mov, .avi, "
        ".mkv, ...)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        help="last.pt of a run, or a plain SSD300 state dict of this package",
    )
    source.add_argument(
        "--weights",
        help="published weights: torchvision-coco, ssd-pytorch-voc, or a file path",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="one image: the drawing's file (default detections.png; a name without an "
        "image suffix is a "
        "folder); several images or a folder: a folder (default detections/) for one "
        "<name>.png per "
        "image and detections.json",
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names, checked against the model's",
    )
    parser.add_argument("--score-threshold", type=float, default=0.4)
    parser.add_argument(
        "--batch-size", type=int_at_least(1), default=8, help="images per forward pass"
    )
    parser.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images of more pixels than this (default {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable images (listed) instead of stopping",
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda if available)"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto (default): bf16 autocast on a CPU with native bf16, else float32; "
        "fp32 forces float32 (see inference.Predictor)",
    )
    parser.add_argument(
        "--every",
        type=int_at_least(1),
        default=1,
        help="videos: process every Nth frame",
    )
    parser.add_argument(
        "--max-frames",
        type=int_at_least(1),
        default=None,
        help="videos: at most this many frames",
    )
    parser.add_argument(
        "--annotate",
        choices=("video", "frames", "none"),
        default="video",
        help="videos: an annotated .mp4 (default), one PNG per frame, or only the JSON",
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_main(lambda: _main(args), args.debug)


def _main(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    videos = [item for item in args.inputs if is_video(item)]
    if videos and len(videos) != len(args.inputs):
        raise ValueError(
            "give videos and images in separate runs (videos: "
            + ", ".join(videos)
            + ")"
        )
    files = [] if videos else collect_images(args.inputs)
    detector = detector_from_args(args, device)
    names, weights_source, category_ids = (
        list(detector.class_names),
        detector.source,
        detector.category_ids,
    )
    predictor = detector.predictor(
        device=device,
        score_threshold=args.score_threshold,
        batch_size=args.batch_size,
        precision=args.precision,
    )
    if videos:
        return _detect_videos(
            args, videos, predictor, names, weights_source, category_ids
        )
    images, bad = _read_all_images(files, args.max_pixels)
    if bad and not _report_unreadable(bad, len(files), bool(images), args.skip_bad):
        return 2
    output, to_file, drawings = _plan_outputs(args, [p for p, _ in images])
    results = _detect_and_draw(
        images, drawings, predictor, names, category_ids, args.batch_size
    )
    if to_file:
        print(json.dumps(results[0]))
        return 0
    _write_report(output, results, bad, args, names, weights_source)
    return 0


def _read_all_images(
    files: Sequence[Path], max_pixels: int
) -> tuple[list[tuple[Path, Tensor]], list[str]]:
    """Read every image before any is processed -> ``((path, uint8 [3, H, W]) per
    readable file, one message per unreadable one)``.

    Reading all first means every bad file is reported at once, and a run that stops
    leaves no half-written output behind.
    """
    images: list[tuple[Path, Tensor]] = []
    bad: list[str] = []
    for path in files:
        try:
            images.append((path, read_image_file(path, max_pixels)))
        except (ValueError, RuntimeError, OSError) as error:
            bad.append(str(error) if str(path) in str(error) else f"{path}: {error}")
    return images, bad


def _report_unreadable(
    bad: list[str], n_files: int, any_readable: bool, skip_bad: bool
) -> bool:
    """List the unreadable images on stderr; return whether the run goes on (only with
    ``--skip-bad`` and at least one readable image)."""
    print("error: unreadable images:\n  " + "\n  ".join(bad), file=sys.stderr)
    if not skip_bad or not any_readable:
        return False
    print(
        f"--skip-bad: going on without {len(bad)} of {n_files} images",
        file=sys.stderr,
    )
    return True


def _plan_outputs(
    args: argparse.Namespace, paths: list[Path]
) -> tuple[Path, bool, list[Path]]:
    """Where the drawings go -> ``(output, to_file, one drawing path per image)``.

    One image given as a file, with an ``--output`` of an image (or PDF/SVG) suffix:
    ``to_file``, the drawing is ``output`` itself.  Otherwise ``output`` is a folder
    (default ``detections``) with one ``<name>.png`` per image.
    """
    single = (
        len(args.inputs) == 1 and len(paths) == 1 and not Path(args.inputs[0]).is_dir()
    )
    output = Path(
        args.output
        if args.output is not None
        else ("detections.png" if single else "detections")
    )
    to_file = single and output.suffix.lower() in IMAGE_SUFFIXES + (".pdf", ".svg")
    drawings = [output] if to_file else [output / name for name in _output_names(paths)]
    return output, to_file, drawings


def _detect_and_draw(
    images: list[tuple[Path, Tensor]],
    drawings: list[Path],
    predictor: Any,
    names: list[str],
    category_ids: list[int] | None,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Run ``predictor`` on ``images`` ``batch_size`` at a time, save each drawing, and
    return one record per image (its file, drawing, size and detections, boxes xyxy in
    its pixels)."""
    results = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        for (path, image), det, drawing in zip(
            chunk, predictor([im for _, im in chunk]), drawings[start:]
        ):
            det = {k: det[k].cpu() for k in ("boxes", "scores", "labels")}
            save_detections_figure(image, det, names, drawing)
            results.append(
                {
                    "image": str(path),
                    "output": str(drawing),
                    "width": int(image.shape[2]),
                    "height": int(image.shape[1]),
                    "detections": detection_records(det, names, category_ids),
                }
            )
    return results


def _write_report(
    output: Path,
    results: list[dict[str, Any]],
    bad: list[str],
    args: argparse.Namespace,
    names: list[str],
    weights_source: str,
) -> None:
    """Write ``output / detections.json`` (the run's settings, the skipped files and
    ``results``) and print one line per image."""
    report = {
        "weights": weights_source,
        "classes": names,
        "score_threshold": args.score_threshold,
        "skipped": bad,
        "images": results,
    }
    (output / "detections.json").write_text(json.dumps(report, indent=1) + "\n")
    for r in results:
        print(f"{r['image']}: {len(r['detections'])} detections -> {r['output']}")
    print(f"wrote {output / 'detections.json'}")


def _detect_videos(
    args: argparse.Namespace,
    videos: list[str],
    predictor: Any,
    names: list[str],
    weights_source: str,
    category_ids: list[int] | None,
) -> int:
    """The video branch of the command line: every video's JSON (and annotated copy) in
    ``--output``."""
    for video in videos:  # a missing or unreadable video is reported before any work
        # TorchCodec without FFmpeg: ExternalError, its message says what to install
        open_video(video)
    output = Path(args.output if args.output is not None else "detections")
    for video in videos:
        report = detect_video(
            video,
            predictor,
            names,
            output,
            every=args.every,
            max_frames=args.max_frames,
            annotate=args.annotate,
            records=lambda d, n: detection_records(d, n, category_ids),
            header={
                "weights": weights_source,
                "classes": names,
                "score_threshold": args.score_threshold,
            },
        )
        found = sum(len(f["detections"]) for f in report["frames"])
        print(
            f"{video}: {len(report['frames'])} frames, {found} detections -> "
            f"{output / (Path(video).stem + '.json')}"
            + (f", {report['annotated']}" if report["annotated"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
