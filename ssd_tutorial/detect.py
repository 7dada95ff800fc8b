"""Run a trained SSD on images and draw what it finds.

    python -m ssd_tutorial.detect photo.jpg --checkpoint runs/shapes_gpu/last.pt --output out.png
    python -m ssd_tutorial.detect shapes.png --checkpoint book/results/shapes_tiny.pt --output out.png
    python -m ssd_tutorial.detect photos/ more.jpg --weights torchvision-coco --output detections/

One image and an ``--output`` file name: the drawing goes there and the detections are printed
as JSON.  Video files (``clip.mp4``; see :mod:`ssd_tutorial.video`): ``--output`` is a folder
that gets ``<stem>.json`` (detections per frame) and ``<stem>_detections.mp4`` (annotated; or
``--annotate frames``: PNGs); ``--every N`` takes every Nth frame, ``--max-frames`` stops early.
Several images or a folder: ``--output`` is a folder that gets one ``<name>.png`` per
image and ``detections.json`` (all images, boxes in each image's pixels, xyxy).  ``--weights``
takes the published weights of :mod:`ssd_tutorial.pretrained` (downloaded once) or a file.

The checkpoint is either a training checkpoint (``last.pt``: a dict with ``"model"`` and
``"config"``) or a plain ``state_dict`` of :class:`ssd_tutorial.model.SSD300` (such as
``book/results/shapes_tiny.pt``); both are read with ``weights_only=True``.  For a plain
state dict, the width and the number of classes are read from the weights' shapes, and class
names are those of ShapesDataset (6 outputs) or VOC (21 outputs), else numbers; ``--classes``
may rename them (same count).  A training checkpoint stores its class names, and ``--classes``
must repeat them, in the same order.

On a CPU the network runs in channels_last and, where the CPU has native bf16 (AVX512-BF16 or
AMX), under bf16 autocast; ``--precision fp32`` forces float32 (see ``inference.Predictor``).

Images over ``--max-pixels`` (default 50 megapixels) are refused before they are decoded
(their size is read from the file's header): a 20000 x 20000 PNG of 1 MB decodes to 1.2 GB.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssd_tutorial.cli import add_debug_flag, int_at_least, run_main
from ssd_tutorial.data import image_header_size, read_image

__all__ = [
    "IMAGE_SUFFIXES",
    "DEFAULT_MAX_PIXELS",
    "collect_images",
    "model_from_checkpoint",
    "model_and_stored_names",
    "StoredDetector",
    "load_stored_detector",
    "default_class_names",
    "resolve_class_names",
    "read_image_file",
    "detect_image",
    "save_detections_figure",
    "main",
]


def _width_and_classes(state_dict: dict[str, Tensor], path: str | Path) -> tuple[float, int]:
    """(width_mult, num_classes) of an SSD300 state dict, from its L2Norm and first conf head."""
    from ssd_tutorial.default_boxes import SSD300_VOC, boxes_per_cell

    try:
        l2norm = state_dict["l2norm.weight"]  # [512 * width]: conv4_3's channels, the finest count to divide
        conf_head = state_dict["conf_heads.0.weight"]  # [boxes_per_cell * C, in, 3, 3]
    except KeyError as missing:
        raise ValueError(f"{path}: not an SSD300 state dict: no {missing} key") from None
    return l2norm.shape[0] / 512, conf_head.shape[0] // boxes_per_cell(SSD300_VOC)[0]


@dataclass(frozen=True, eq=False)
class StoredDetector:
    """What a checkpoint of this package holds, loaded (see :func:`load_stored_detector`).

    ``names`` exclude background (``names[label - 1]`` names label ``label``; None: a plain state
    dict stores none); ``priors`` ``[P, 4]`` cxcywh normalized, or None for SSD300's own layout;
    ``category_ids`` the COCO ids of labels 1..C when it was trained on a COCO JSON, else None.
    """

    model: nn.Module
    names: list[str] | None
    priors: Tensor | None
    category_ids: list[int] | None


def load_stored_detector(path: str | Path, device: str | torch.device = "cpu") -> StoredDetector:
    """Load ``path`` (training checkpoint or plain state dict): the model in eval mode on ``device``,
    with what the checkpoint says of its classes and default boxes."""
    from ssd_tutorial.checkpoint import load_checkpoint
    from ssd_tutorial.default_boxes import SSD300_VOC, SSD512_VOC, default_boxes
    from ssd_tutorial.model import build_ssd
    from ssd_tutorial.train import stored_prior_config

    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict (state dict or training checkpoint), got {type(state).__name__}")
    names: list[str] | None = None
    category_ids = None
    if "model" in state and isinstance(state["model"], dict):
        names = list(state.get("class_names", [])) or None
        category_ids = [int(c) for c in state["category_ids"]] if state.get("category_ids") else None
        prior_config = stored_prior_config(state)
        state = state["model"]
    else:  # a plain state dict: SSD512 has a seventh head (conv12_2)
        prior_config = SSD512_VOC if "conf_heads.6.weight" in state else SSD300_VOC
    priors = None if prior_config == SSD300_VOC else default_boxes(prior_config)
    width, num_classes = _width_and_classes(state, path)
    if names is not None and len(names) != num_classes - 1:
        raise ValueError(f"{path}: {len(names)} class names for a model of {num_classes - 1} classes (+ background)")
    if category_ids is not None and len(category_ids) != len(names or []):
        raise ValueError(f"{path}: {len(category_ids)} category ids for {len(names or [])} class names")
    model = build_ssd(num_classes, prior_config, None, width)  # SSD300, or SSD512 for 7 maps
    model.load_state_dict(state)
    return StoredDetector(model.to(device).eval(), names, priors, category_ids)


def model_and_stored_names(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str] | None]:
    """Load ``path`` (training checkpoint or plain state dict) -> (SSD300 in eval mode, class names
    stored in it, or None for a plain state dict, which stores none).

    Class names exclude background: ``names[label - 1]`` names label ``label``.
    """
    stored = load_stored_detector(path, device)
    return stored.model, stored.names


def default_class_names(num_classes: int) -> list[str]:
    """Names for a model without stored ones: ShapesDataset's (6 outputs), VOC's (21), else numbers."""
    from ssd_tutorial.data import SHAPES_CLASSES, VOC_CLASSES

    for names in (SHAPES_CLASSES, VOC_CLASSES):
        if num_classes == len(names) + 1:
            return list(names)
    return [str(k) for k in range(1, num_classes)]


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str]]:
    """Load ``path`` (training checkpoint or plain state dict) -> (SSD300 in eval mode, class names).

    The names stored in a training checkpoint, else :func:`default_class_names`.  They exclude
    background: ``names[label - 1]`` names label ``label``.
    """
    model, names = model_and_stored_names(path, device)
    return model, names if names is not None else default_class_names(model.num_classes)


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:25]) + (" ..." if len(names) > 25 else "")


def split_class_names(text: str) -> list[str]:
    """``--classes "a, b,c"`` -> ``["a", "b", "c"]`` (blank entries dropped)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def resolve_class_names(
    given: Sequence[str] | None, stored: Sequence[str] | None, num_classes: int, source: str | Path
) -> list[str]:
    """The class names to use for a model with ``num_classes`` outputs (background included).

    Names the weights store (``stored``) are the truth: ``given`` names (``--classes``) must be
    the same, in the same order -- a model's label k means one class, and another order would
    silently score or label every detection as another class.  Without stored names, ``given``
    names just need the model's count; without either, :func:`default_class_names`.
    """
    if stored is not None:
        if given is not None and list(given) != list(stored):
            raise ValueError(
                f"the class names given ({len(given)}: {_listed(given)}) differ from those stored in {source} "
                f"({len(stored)}: {_listed(stored)}); the names and their order must be the same"
            )
        return list(stored)
    if given is None:
        return default_class_names(num_classes)
    if len(given) != num_classes - 1:
        raise ValueError(
            f"{len(given)} classes given ({_listed(given)}), but the weights from {source} have "
            f"{num_classes - 1} (+ background) and store no names"
        )
    return list(given)


DEFAULT_MAX_PIXELS = 50_000_000  # 150 MB decoded; far above any photo SSD300 sees (it shrinks it to 300 x 300)


def read_image_file(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Tensor:
    """An image file (JPEG/PNG/...) -> uint8 ``[3, H, W]`` RGB (grayscale is repeated, alpha dropped).

    The same decoder as the datasets (:func:`ssd_tutorial.data.read_image`).  An image of more
    than ``max_pixels`` pixels (None: no limit) raises ValueError naming the file -- before it
    is decoded when its header says its size, as it does for the formats PIL reads.
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
            f"{path}: {width} x {height} = {width * height / 1e6:.1f} megapixels ({3 * width * height / 1e6:.0f} MB "
            f"decoded), over the limit of {max_pixels / 1e6:g} megapixels: raise it with --max-pixels "
            f"(now {max_pixels})"
        )


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
    """Draw ``detections`` (pixel xyxy) on ``image`` and save the figure to ``output`` (PNG, JPG, PDF).

    Any image that was read can be drawn: the figure is 6 inches wide and 1 to 24 inches high
    (a very thin image is stretched to fit, boxes with it), and an image far larger than the
    drawing is shrunk for display first (boxes stay in the image's pixels).
    """
    from matplotlib.figure import Figure

    from ssd_tutorial.viz import COLORS, draw_boxes, to_hwc

    h, w = image.shape[1:]
    natural = 6.0 * h / w  # inches high at 6 inches wide
    fig_h = min(max(natural, 1.0), 24.0)  # matplotlib needs a pixel; a thin strip must not be metres high
    # A bare Figure, not pyplot: no backend switch, so a notebook calling this keeps its plots.
    fig = Figure(figsize=(6.0, fig_h))
    ax = fig.subplots()
    shown = _shrink(image, max_side=int(2 * 100 * max(6.0, fig_h)))  # twice the drawing's pixels (dpi 100)
    # extent: the image spans pixel edges 0..w and 0..h, the coordinates the boxes are in.
    ax.imshow(to_hwc(shown), extent=(0, w, h, 0), aspect="equal" if fig_h == natural else "auto")
    ax.set_axis_off()
    labels = detections["labels"].tolist()
    captions = [f"{names[l - 1]} {s:.2f}" for l, s in zip(labels, detections["scores"].tolist())]
    draw_boxes(ax, detections["boxes"], labels=captions, colors=[COLORS[(l - 1) % 10] for l in labels])
    fig.subplots_adjust(0.01, 0.01, 0.99, 0.99)  # not tight_layout: it gives up on extreme shapes
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    return output


def _shrink(image: Tensor, max_side: int) -> Tensor:
    """uint8 ``[3, H, W]`` with its longer side at most ``max_side`` (antialiased), else unchanged."""
    h, w = image.shape[1:]
    if max(h, w) <= max_side:
        return image
    from torchvision.transforms.v2.functional import resize

    scale = max_side / max(h, w)
    return resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named on the command line: files as given, folders by their image files
    (suffixes :data:`IMAGE_SUFFIXES`, any case, sorted by name, not recursive).

    A missing path raises FileNotFoundError naming it; an empty folder raises ValueError.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: a folder without image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def _output_names(files: Sequence[Path]) -> list[str]:
    """One drawing name per input, ``<stem>.png``; repeated stems (same name in two folders, or
    photo.jpg beside photo.png) get ``-2``, ``-3``, ... so that no drawing overwrites another."""
    seen: dict[str, int] = {}
    names = []
    for path in files:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        names.append(f"{path.stem}.png" if count == 1 else f"{path.stem}-{count}.png")
    return names


def detector_from_args(
    args: argparse.Namespace, device: str
) -> tuple[nn.Module, list[str], bool, Tensor | None, str, list[int] | None]:
    """(model, class names, whether the weights store those names, priors or None for SSD300's,
    description, COCO category ids or None) from --checkpoint or --weights."""
    if args.checkpoint is not None:
        stored = load_stored_detector(args.checkpoint, device)
        names = stored.names if stored.names is not None else default_class_names(stored.model.num_classes)
        return stored.model, names, stored.names is not None, stored.priors, str(args.checkpoint), stored.category_ids
    from ssd_tutorial.pretrained import load_pretrained

    loaded = load_pretrained(args.weights, device=device)
    # Published weights' names are a dataset's list (COCO's, VOC's), which --classes may rename.
    return loaded.model, list(loaded.class_names), False, loaded.priors, loaded.source, None


def _check_classes(given: str | None, names: list[str], stored: bool, source: str) -> list[str]:
    """``--classes a,b,c`` against the model's ``names``: the same names in the same order when the
    weights store them, else the same count (see :func:`resolve_class_names`)."""
    if given is None:
        return names
    return resolve_class_names(split_class_names(given), names if stored else None, len(names) + 1, source)


def detection_records(
    detections: dict[str, Tensor], names: Sequence[str], category_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """One dict per detection; with ``category_ids`` (a model trained on a COCO JSON) also the
    ``category_id`` of that file, which is not the label when the file's ids have gaps."""
    return [
        {"label": names[l - 1], "label_id": l,
         **({"category_id": category_ids[l - 1]} if category_ids is not None else {}),
         "score": round(s, 4), "box_xyxy_px": [round(v, 1) for v in b]}
        for b, s, l in zip(detections["boxes"].tolist(), detections["scores"].tolist(), detections["labels"].tolist())
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_tutorial.detect", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files and/or folders of images; or video files (.mp4, .mov, .avi, .mkv, ...)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="last.pt of a run, or a plain SSD300 state dict of this package")
    source.add_argument("--weights", help="published weights: torchvision-coco, ssd-pytorch-voc, or a file path")
    parser.add_argument(
        "--output", default=None,
        help="one image: the drawing's file (default detections.png; a name without an image suffix is a "
             "folder); several images or a folder: a folder (default detections/) for one <name>.png per "
             "image and detections.json",
    )  # fmt: skip
    parser.add_argument("--classes", default=None, help="comma-separated class names, checked against the model's")
    parser.add_argument("--score-threshold", type=float, default=0.4)
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="images per forward pass")
    parser.add_argument("--max-pixels", type=int_at_least(1), default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images of more pixels than this (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (listed) instead of stopping")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto (default): bf16 autocast on a CPU with native bf16, else float32; "
                             "fp32 forces float32 (see inference.Predictor)")
    parser.add_argument("--every", type=int_at_least(1), default=1, help="videos: process every Nth frame")
    parser.add_argument("--max-frames", type=int_at_least(1), default=None, help="videos: at most this many frames")
    parser.add_argument("--annotate", choices=("video", "frames", "none"), default="video",
                        help="videos: an annotated .mp4 (default), one PNG per frame, or only the JSON")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_main(lambda: _main(args), args.debug)


def _main(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from ssd_tutorial.video import is_video

    videos = [item for item in args.inputs if is_video(item)]
    if videos and len(videos) != len(args.inputs):
        raise ValueError("give videos and images in separate runs (videos: " + ", ".join(videos) + ")")
    try:
        files = [] if videos else collect_images(args.inputs)
        model, names, stored, priors, weights_source, category_ids = detector_from_args(args, device)
        names = _check_classes(args.classes, names, stored, weights_source)
    except RuntimeError as error:  # published weights that cannot be fetched or verified: their message says why
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    from ssd_tutorial.inference import Predictor

    predictor = Predictor(model, priors=priors, device=device, score_threshold=args.score_threshold,
                          batch_size=args.batch_size, precision=args.precision)  # fmt: skip
    if videos:
        return _detect_videos(args, videos, predictor, names, weights_source, category_ids)
    # Every image is read before any is processed: every bad file is reported at once, and a
    # run that stops leaves no half-written output behind.
    images: list[tuple[Path, Tensor]] = []
    bad: list[str] = []
    for path in files:
        try:
            images.append((path, read_image_file(path, args.max_pixels)))
        except (ValueError, RuntimeError, OSError) as error:
            bad.append(str(error) if str(path) in str(error) else f"{path}: {error}")
    if bad:
        print("error: unreadable images:\n  " + "\n  ".join(bad), file=sys.stderr)
        if not args.skip_bad or not images:
            return 2
        print(f"--skip-bad: going on without {len(bad)} of {len(files)} images", file=sys.stderr)

    single = len(args.inputs) == 1 and len(images) == 1 and not Path(args.inputs[0]).is_dir()
    output = Path(args.output if args.output is not None else ("detections.png" if single else "detections"))
    to_file = single and output.suffix.lower() in IMAGE_SUFFIXES + (".pdf", ".svg")
    drawings = [output] if to_file else [output / name for name in _output_names([p for p, _ in images])]
    results = []
    for start in range(0, len(images), args.batch_size):
        chunk = images[start : start + args.batch_size]
        for (path, image), det, drawing in zip(chunk, predictor([im for _, im in chunk]), drawings[start:]):
            det = {k: det[k].cpu() for k in ("boxes", "scores", "labels")}
            save_detections_figure(image, det, names, drawing)
            results.append({"image": str(path), "output": str(drawing), "width": int(image.shape[2]),
                            "height": int(image.shape[1]), "detections": detection_records(det, names, category_ids)})  # fmt: skip
    if to_file:
        print(json.dumps(results[0]))
        return 0
    report = {"weights": weights_source, "classes": names, "score_threshold": args.score_threshold,
              "skipped": bad, "images": results}  # fmt: skip
    (output / "detections.json").write_text(json.dumps(report, indent=1) + "\n")
    for r in results:
        print(f"{r['image']}: {len(r['detections'])} detections -> {r['output']}")
    print(f"wrote {output / 'detections.json'}")
    return 0


def _detect_videos(
    args: argparse.Namespace, videos: list[str], predictor: Any, names: list[str], weights_source: str,
    category_ids: list[int] | None,
) -> int:
    """The video branch of the command line: every video's JSON (and annotated copy) in ``--output``."""
    from ssd_tutorial.video import detect_video, open_video

    try:
        for video in videos:  # a missing or unreadable video is reported before any work
            open_video(video)
    except RuntimeError as error:  # TorchCodec without FFmpeg: the message says what to install
        print(f"error: {error}", file=sys.stderr)
        return 2
    output = Path(args.output if args.output is not None else "detections")
    for video in videos:
        report = detect_video(video, predictor, names, output, every=args.every, max_frames=args.max_frames,
                              annotate=args.annotate, records=lambda d, n: detection_records(d, n, category_ids),
                              header={"weights": weights_source, "classes": names,
                                      "score_threshold": args.score_threshold})  # fmt: skip
        found = sum(len(f["detections"]) for f in report["frames"])
        print(f"{video}: {len(report['frames'])} frames, {found} detections -> {output / (Path(video).stem + '.json')}"
              + (f", {report['annotated']}" if report["annotated"] else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
