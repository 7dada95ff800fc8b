"""Validation during and after training: run a model over a dataset, score its
detections.

:func:`collect_detections` runs the model (through
:class:`ssd_tutorial.inference.Predictor`) and gathers detections and ground truth in
the format of :mod:`ssd_tutorial.evaluation`; :func:`score_detections` is the one place
they are scored (VOC AP50, optionally COCO AP), for the trainer's periodic evaluation
(:func:`evaluate_model`) and the evaluate CLI alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssd_tutorial.evaluation import evaluate_coco, evaluate_voc
from ssd_tutorial.inference import Predictor

__all__ = ["collect_detections", "evaluate_model", "score_detections"]


def collect_detections(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 16,
    max_images: int | None = None,
    device: torch.device | str | None = None,
    **detect_kwargs: Any,
) -> tuple[dict[str, dict[str, Tensor]], dict[str, dict[str, Tensor]]]:
    """Run ``model`` over ``dataset`` (items ``(uint8 [3, H, W], target)`` with pixel
    boxes).

    Returns ``(detections, ground_truths)`` keyed by ``image_id``, in the format of
    :func:`ssd_tutorial.evaluation.evaluate_voc` (xyxy pixels, 1-based labels).
    ``detect_kwargs`` go to :class:`ssd_tutorial.inference.Predictor` (``size``,
    thresholds).  The model is left in the train/eval mode it came in.  It runs in
    float32 and in its own memory format unless ``detect_kwargs`` say otherwise
    (``precision``, ``channels_last``): a score is the model's, the same on every
    machine, and a model in training is not converted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_images is not None and max_images < 1:
        raise ValueError(
            f"max_images must be >= 1 (or None: every image), got {max_images}"
        )
    was_training = model.training
    detect_kwargs = {"precision": "fp32", "channels_last": False, **detect_kwargs}
    predictor = Predictor(model, device=device, batch_size=batch_size, **detect_kwargs)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    detections: dict[str, dict[str, Tensor]] = {}
    ground_truths: dict[str, dict[str, Tensor]] = {}
    for first in range(0, n, batch_size):
        items = [dataset[i] for i in range(first, min(n, first + batch_size))]
        for (_, target), det in zip(items, predictor([image for image, _ in items])):
            image_id = str(target["image_id"])
            detections[image_id] = {
                k: det[k].cpu() for k in ("boxes", "scores", "labels")
            }
            ground_truths[image_id] = {
                "boxes": target["boxes"],
                "labels": target["labels"],
                "difficult": target.get(
                    "difficult", torch.zeros(len(target["labels"]), dtype=torch.bool)
                ),
            }
    model.train(was_training)
    return detections, ground_truths


def score_detections(
    detections: Mapping[str, Mapping[str, Tensor]],
    ground_truths: Mapping[str, Mapping[str, Tensor]],
    class_names: Sequence[str],
    use_07_metric: bool = True,
    coco: bool = False,
) -> dict[str, Any]:
    """VOC AP at IoU 0.5 of ``detections`` against ``ground_truths`` (both keyed by
    image id: ``boxes [N, 4]`` xyxy pixels, 1-based ``labels [N]``, ``scores [N]`` /
    ``difficult [N]``).

    Returns :func:`ssd_tutorial.evaluation.evaluate_voc`'s dict (``{"map": float, "ap":
    {class:
    float}, ...}``): 11-point interpolated AP (VOC2007 devkit) when ``use_07_metric``,
    else all-point (VOC2010+).  With ``coco`` also ``"coco": {"map": AP@[.5:.95],
    "map50", "map75"}`` from pycocotools on the same detections
    (:func:`ssd_tutorial.evaluation.evaluate_coco`).
    """
    names = list(class_names)
    result = evaluate_voc(
        detections, ground_truths, names, iou_threshold=0.5, use_07_metric=use_07_metric
    )
    if coco:
        result["coco"] = evaluate_coco(detections, ground_truths, names)
    return result


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    class_names: Sequence[str],
    device: torch.device | str,
    max_images: int | None = None,
    size: int | None = None,
    batch_size: int = 32,
    use_07_metric: bool = True,
    priors: Tensor | None = None,
    coco: bool = False,
) -> dict[str, Any]:
    """VOC mAP@0.5 of ``model`` on ``dataset``: ``{"map": float, "ap": {class:
    float}}``, and with ``coco`` also ``"coco": {"map": AP@[.5:.95], "map50",
    "map75"}`` (see :func:`score_detections`).

    ``dataset`` items: ``(uint8 [3, H, W], target)`` with pixel boxes; ``size``: the
    input side (None: the model's);
    ``priors``: ``[P, 4]`` cxcywh default boxes (None: the model's own).  11-point
    interpolated AP (VOC2007 devkit) when ``use_07_metric``, else all-point (VOC2010+).
    """
    detections, ground_truths = collect_detections(
        model, dataset, batch_size, max_images, device, size=size, priors=priors
    )
    return score_detections(
        detections, ground_truths, class_names, use_07_metric=use_07_metric, coco=coco
    )
