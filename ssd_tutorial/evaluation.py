"""Evaluation: what mAP measures, exactly.

Two scores, both computed per class and then averaged over classes:

* **VOC AP50** (:func:`evaluate_voc`), written here because chapter 9 teaches it.  It
  follows the PASCAL VOC devkit as ported in py-faster-rcnn's ``voc_eval.py``:

  - boxes are in pixels with *inclusive* corners, so a box's width is ``x2 - x1 + 1``
    and areas and intersections carry the ``+1``;
  - a detection is a true positive when its best-overlapping ground truth box of the
    same class has IoU **strictly above** the threshold and has not been claimed by a
    higher-scoring detection; the best box is chosen among *all* boxes of that class in
    the image, claimed or not, so a duplicate is a false positive even if some other box
    is free;
  - detections whose best box is marked ``difficult`` count neither as true nor as false
    positives, and difficult boxes are not counted in the recall denominator;
  - detections are taken greedily in order of descending score, over all images
    together;
  - AP is the 11-point interpolated average (VOC2007, ``use_07_metric=True``) or the
    area under the interpolated precision envelope (VOC2010+, ``use_07_metric=False``).

* **COCO AP@[.5:.95]** (:func:`evaluate_coco`), delegated to pycocotools: the book
  explains it but does not re-implement it.

Input format (both functions)::

    detections    = {image_id: {"boxes": [N, 4] xyxy px, "scores": [N],
                                "labels": [N] 1-based}}
    ground_truths = {image_id: {"boxes": [G, 4] xyxy px, "labels": [G] 1-based,
                                "difficult": [G] bool (optional)}}

Label ``k`` (1-based) is ``class_names[k - 1]``; label 0 (background) never appears
here.  Tensors, numpy arrays and nested lists are all accepted.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "voc_ap",
    "voc_iou",
    "evaluate_voc",
    "evaluate_coco",
    "per_class_table",
    "plot_pr_curves",
]


def _to_numpy(x: Any, dtype: Any, name: str) -> np.ndarray:
    """Tensor / array / list -> numpy array of ``dtype`` (no copy when already
    right)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} could not be read as an array of {np.dtype(dtype)}: {err}"
        ) from err


def voc_ap(recall: Any, precision: Any, use_07_metric: bool = True) -> float:
    """Average precision from a precision/recall curve, as the VOC devkit computes it.

    ``recall`` and ``precision`` are ``[N]`` arrays, one point per detection in order of
    descending score (recall non-decreasing).

    * ``use_07_metric=True`` (VOC2007): the mean over the 11 recall levels t = 0, 0.1,
      ..., 1 of the best precision reached at any recall >= t (0 if recall never reaches
      t).
    * ``use_07_metric=False`` (VOC2010 and later): make precision monotone (each point
      takes the best precision at any higher recall), then sum the area of the
      rectangles under it at every recall where recall changes.
    """
    rec = _to_numpy(recall, np.float64, "recall").reshape(-1)
    prec = _to_numpy(precision, np.float64, "precision").reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(
            f"recall and precision must have the same length, got {rec.size} and "
            f"{prec.size}"
        )
    if use_07_metric:
        ap = 0.0
        # The devkit's thresholds, float rounding included (0.30000000000000004 ...): a
        # recall of exactly 0.3 does *not* reach the fourth level.  Kept so that results
        # match to 1e-6.
        for t in np.arange(0.0, 1.1, 0.1):
            reached = rec >= t
            ap += (float(prec[reached].max()) if reached.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))  # [N + 2]
    mpre = np.concatenate(([0.0], prec, [0.0]))  # [N + 2]
    # the envelope: precision at recall r is the best precision at any recall >= r
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.nonzero(mrec[1:] != mrec[:-1])[0]  # indices where recall steps up
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def voc_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of paired pixel boxes with the devkit's inclusive ``+1``
    convention.

    ``a``, ``b``: ``[..., 4]`` xyxy pixels (same shape) -> ``[...]``.  A box from x1 = 1
    to
    x2 = 10 covers 10 pixels, not 9.
    """
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1.0
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1.0
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = (a[..., 2] - a[..., 0] + 1.0) * (a[..., 3] - a[..., 1] + 1.0)
    area_b = (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)
    return inter / (area_a + area_b - inter)


def _flatten(
    entries: Mapping[Any, Mapping[str, Any]],
    image_index: Mapping[Any, int],
    num_classes: int,
    kind: str,
) -> dict[str, np.ndarray]:
    """Concatenate per-image dicts into flat arrays with an image index column.

    Returns ``boxes [N,4] float64``, ``labels [N] int64`` (1-based), ``image [N] int64``
    and ``scores [N]`` (detections) or ``difficult [N] bool`` (ground truth).
    """
    boxes, labels, image, extra = [], [], [], []
    for image_id, entry in entries.items():
        if image_id not in image_index:
            raise ValueError(
                f"detections name image id {image_id!r}, which has no ground truth "
                "entry; every evaluated image needs one (an empty one if it has no "
                "objects)"
            )
        if "boxes" not in entry or "labels" not in entry:
            raise ValueError(
                f"{kind} for image {image_id!r} need 'boxes' and 'labels', got "
                f"{sorted(entry)}"
            )
        b = _to_numpy(
            entry["boxes"], np.float64, f"{kind}[{image_id!r}]['boxes']"
        ).reshape(-1, 4)
        lab = _to_numpy(
            entry["labels"], np.int64, f"{kind}[{image_id!r}]['labels']"
        ).reshape(-1)
        if lab.size != b.shape[0]:
            raise ValueError(
                f"{kind} for image {image_id!r}: {b.shape[0]} boxes but {lab.size} "
                "labels"
            )
        if lab.size and (lab.min() < 1 or lab.max() > num_classes):
            raise ValueError(
                f"{kind} for image {image_id!r} have label "
                f"{int(lab.min() if lab.min() < 1 else lab.max())}; labels must be "
                f"1-based, in 1..{num_classes} (label k is class_names[k - 1])"
            )
        if kind == "detections":
            if "scores" not in entry:
                raise ValueError(f"detections for image {image_id!r} need 'scores'")
            e = _to_numpy(
                entry["scores"], np.float64, f"detections[{image_id!r}]['scores']"
            ).reshape(-1)
        else:
            e = (
                _to_numpy(
                    entry["difficult"],
                    bool,
                    f"ground_truths[{image_id!r}]['difficult']",
                ).reshape(-1)
                if "difficult" in entry
                else np.zeros(lab.size, dtype=bool)
            )
        if e.size != lab.size:
            raise ValueError(
                f"{kind} for image {image_id!r}: {lab.size} labels but {e.size} "
                "scores/difficult flags"
            )
        boxes.append(b)
        labels.append(lab)
        image.append(np.full(lab.size, image_index[image_id], dtype=np.int64))
        extra.append(e)
    cat = lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dtype=dt)
    out = {
        "boxes": cat(boxes, (0, 4), np.float64),
        "labels": cat(labels, (0,), np.int64),
        "image": cat(image, (0,), np.int64),
    }
    out["scores" if kind == "detections" else "difficult"] = cat(
        extra, (0,), np.float64 if kind == "detections" else bool
    )
    return out


def _match_detections(
    det: dict[str, np.ndarray],
    gt: dict[str, np.ndarray],
    num_classes: int,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decide every detection at once: returns ``order``, ``tp``, ``fp`` (``[N]`` each).

    ``order`` sorts the detections by class, then by descending score (stable: ties keep
    their input order).  ``tp[i]`` / ``fp[i]`` are 0/1 flags for the detection
    ``order[i]``; a detection on a difficult box has both 0.

    No loop over detections: the devkit's greedy rule only needs, for each detection,
    the *best* ground truth box of its class in its image (claimed or not), and then "is
    it the first detection, in score order, to reach that box above the threshold?".
    """
    n_images = int(max(det["image"].max(initial=-1), gt["image"].max(initial=-1))) + 1
    # group = (image, class): detections only meet ground truth of the same group
    det_group = det["image"] * (num_classes + 1) + det["labels"]  # [N]
    gt_group = gt["image"] * (num_classes + 1) + gt["labels"]  # [G]
    gt_order = np.argsort(gt_group, kind="stable")  # ground truth sorted by group
    n_groups = n_images * (num_classes + 1)
    gt_count = np.bincount(gt_group, minlength=n_groups)  # [n_groups]
    gt_start = np.concatenate(([0], np.cumsum(gt_count)[:-1]))  # [n_groups]

    # every (detection, ground truth of its group) pair, flat
    per_det = gt_count[det_group]  # [N] how many candidate boxes each detection has
    pair_det = np.repeat(np.arange(det_group.size), per_det)  # [M]
    first_pair = np.concatenate(([0], np.cumsum(per_det)[:-1]))  # [N]
    within = np.arange(pair_det.size) - first_pair[pair_det]  # [M] 0..per_det-1
    # [M] index into gt arrays
    pair_gt = gt_order[gt_start[det_group][pair_det] + within]
    iou = voc_iou(det["boxes"][pair_det], gt["boxes"][pair_gt])  # [M]
    # a NaN overlap (NaN box) is never above the threshold in the devkit: make it lose
    # every max
    iou[np.isnan(iou)] = -np.inf

    # best box per detection (the first one on ties, like np.argmax in the devkit); each
    # detection's pairs are contiguous, so a segmented max / min does it
    has_gt = per_det > 0
    best_iou = np.full(det_group.size, -np.inf)
    best_gt = np.full(det_group.size, -1, dtype=np.int64)
    if has_gt.any():
        # [N'] first pair of each detection that has candidates
        starts = first_pair[has_gt]
        best_iou[has_gt] = np.maximum.reduceat(iou, starts)
        # [M]
        position = np.where(iou == best_iou[pair_det], np.arange(iou.size), iou.size)
        best_gt[has_gt] = pair_gt[np.minimum.reduceat(position, starts)]

    above = has_gt & (best_iou > iou_threshold)  # devkit: ovmax > ovthresh, strictly
    difficult = np.zeros(det_group.size, dtype=bool)
    difficult[above] = gt["difficult"][best_gt[above]]

    # greedy by score, per class, all images together
    # class, then score descending; stable
    order = np.lexsort((-det["scores"], det["labels"]))
    claims = (above & ~difficult)[order]  # [N] in sorted order
    claimed_gt = best_gt[order][claims]
    # the first claim on each box wins; later ones are duplicates (false positives)
    _, first = np.unique(claimed_gt, return_index=True)
    tp = np.zeros(order.size, dtype=np.float64)
    tp[np.nonzero(claims)[0][first]] = 1.0
    fp = np.where(difficult[order], 0.0, 1.0 - tp)
    return order, tp, fp


def evaluate_voc(
    detections: Mapping[Any, Mapping[str, Any]],
    ground_truths: Mapping[Any, Mapping[str, Any]],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict[str, Any]:
    """PASCAL VOC mean average precision, with the devkit's conventions (see the module
    docstring).

    ``detections`` / ``ground_truths``: ``{image_id: {...}}`` with boxes ``[N, 4]`` xyxy
    in pixels and 1-based labels.  An image with ground truth but no entry in
    ``detections`` simply has no detections; a detection for an image with no
    ground-truth entry is an error.

    Returns ``{"map", "ap": {class: AP}, "recall": {class: [N]}, "precision": {class:
    [N]},
    "num_gt": {class: int}, "num_detections": {class: int}, "missing_classes": [...]}``.
    Classes with no non-difficult ground truth have no defined AP: they are left out of
    ``ap`` and of the mean and listed in ``missing_classes``.  A class with ground truth
    but no detection has AP 0.
    """
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    class_names = list(class_names)
    num_classes = len(class_names)
    image_index = {image_id: i for i, image_id in enumerate(ground_truths)}
    gt = _flatten(ground_truths, image_index, num_classes, "ground_truths")
    det = _flatten(detections, image_index, num_classes, "detections")
    order, tp, fp = _match_detections(det, gt, num_classes, iou_threshold)

    sorted_labels = det["labels"][order]
    keep = (tp + fp) > 0  # detections on difficult boxes add no point to the curve
    # [C + 1]
    num_gt = np.bincount(gt["labels"][~gt["difficult"]], minlength=num_classes + 1)
    result: dict[str, Any] = {
        "ap": {},
        "recall": {},
        "precision": {},
        "num_gt": {},
        "num_detections": {},
        "missing_classes": [],
    }
    # a loop over classes (20), not detections
    for k, name in enumerate(class_names, start=1):
        mine = keep & (sorted_labels == k)
        result["num_gt"][name] = int(num_gt[k])
        result["num_detections"][name] = int((sorted_labels == k).sum())
        if num_gt[k] == 0:
            result["missing_classes"].append(name)
            continue
        tp_cum = np.cumsum(tp[mine])  # [N_k]
        fp_cum = np.cumsum(fp[mine])  # [N_k]
        recall = tp_cum / float(num_gt[k])
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        result["recall"][name] = recall
        result["precision"][name] = precision
        result["ap"][name] = (
            voc_ap(recall, precision, use_07_metric) if recall.size else 0.0
        )
    aps = list(result["ap"].values())
    result["map"] = float(np.mean(aps)) if aps else float("nan")
    return result


def evaluate_coco(
    detections: Mapping[Any, Mapping[str, Any]],
    ground_truths: Mapping[Any, Mapping[str, Any]],
    class_names: Sequence[str],
) -> dict[str, float]:
    """COCO-style AP through pycocotools: ``{"map": AP@[.5:.95], "map50": AP@.5,
    "map75": AP@.75}``.

    Same input format as :func:`evaluate_voc` (xyxy pixels, 1-based labels).  COCO's
    conventions, not the devkit's: continuous coordinates (no ``+1``), IoU >= threshold,
    101-point interpolated precision, at most 100 detections per image.  COCO has no
    "difficult" flag; difficult boxes are passed as ``iscrowd``, COCO's own "ignore"
    region, so that detections on them count neither way. pycocotools' printing is
    captured and dropped.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    class_names = list(class_names)
    num_classes = len(class_names)
    image_index = {image_id: i for i, image_id in enumerate(ground_truths)}
    gt = _flatten(ground_truths, image_index, num_classes, "ground_truths")
    det = _flatten(detections, image_index, num_classes, "detections")
    empty = {"map": 0.0, "map50": 0.0, "map75": 0.0}
    if gt["labels"].size == 0 or det["labels"].size == 0:
        return empty

    def xywh(b: np.ndarray) -> np.ndarray:
        # [N, 4]
        return np.stack(
            (b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), axis=1
        )

    gt_xywh = xywh(gt["boxes"])
    dataset = {
        # COCO ids are 1-based ints
        "images": [{"id": i + 1} for i in range(len(image_index))],
        "categories": [
            {"id": k, "name": name} for k, name in enumerate(class_names, start=1)
        ],
        "annotations": [
            {
                "id": j + 1,
                "image_id": int(gt["image"][j]) + 1,
                "category_id": int(gt["labels"][j]),
                "bbox": gt_xywh[j].tolist(),
                "area": float(gt_xywh[j, 2] * gt_xywh[j, 3]),
                "iscrowd": int(gt["difficult"][j]),
            }
            for j in range(gt["labels"].size)
        ],
    }
    det_xywh = xywh(det["boxes"])
    results = [
        {
            "image_id": int(det["image"][i]) + 1,
            "category_id": int(det["labels"][i]),
            "bbox": det_xywh[i].tolist(),
            "score": float(det["scores"][i]),
        }
        for i in range(det["labels"].size)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats  # [12]; -1 where undefined
    return {
        key: max(float(stats[i]), 0.0)
        for key, i in (("map", 0), ("map50", 1), ("map75", 2))
    }


def per_class_table(result: Mapping[str, Any], digits: int = 4) -> str:
    """A plain-text table of an :func:`evaluate_voc` result: class, #gt, #detections,
    AP.

    Classes with no ground truth are shown with ``-`` for AP; the last line is the mean.
    """
    names = list(result["num_gt"])
    width = max([len(n) for n in names] + [5])
    lines = [f"{'class':<{width}}  {'gt':>5}  {'dets':>6}  {'AP':>{digits + 2}}"]
    for name in names:
        ap = result["ap"].get(name)
        ap_text = "-" if ap is None else f"{ap:.{digits}f}"
        lines.append(
            f"{name:<{width}}  {result['num_gt'][name]:>5}  "
            f"{result['num_detections'][name]:>6}  {ap_text:>{digits + 2}}"
        )
    lines.append(
        f"{'mAP':<{width}}  {'':>5}  {'':>6}  {result['map']:>{digits + 2}.{digits}f}"
    )
    return "\n".join(lines)


def plot_pr_curves(
    result: Mapping[str, Any], ax: Any = None, classes: Sequence[str] | None = None
) -> Any:
    """Draw the precision/recall curve of each class of an :func:`evaluate_voc` result.

    Dots: one (recall, precision) point per counted detection, in score order.  Line:
    the
    interpolated precision (the best precision at any higher recall), whose area is the
    all-point AP.  The legend gives each class's AP.  Returns the matplotlib ``Axes``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    for i, name in enumerate(classes if classes is not None else list(result["ap"])):
        color = plt.get_cmap("tab10")(i % 10)
        recall = np.asarray(result["recall"][name], dtype=np.float64)
        precision = np.asarray(result["precision"][name], dtype=np.float64)
        label = f"{name} (AP {result['ap'][name]:.2f})"
        if recall.size == 0:
            ax.plot([], [], color=color, label=f"{label}, no detections")
            continue
        # [N] best precision at recall >= r
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        # steps-pre: between recall r_(i-1) and r_i the curve has the value at r_i
        ax.plot(
            np.concatenate(([0.0], recall)),
            np.concatenate(([envelope[0]], envelope)),
            drawstyle="steps-pre",
            color=color,
            label=label,
        )
        ax.plot(recall, precision, ".", color=color, markersize=4, alpha=0.6)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return ax
