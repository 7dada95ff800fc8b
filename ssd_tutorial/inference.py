"""Inference: from 8732 x C scores to a few detections.

The model answers every default box at once: ``loc [B, 8732, 4]`` offsets and
``conf_logits [B, 8732, C]`` class scores (class 0 is background).  :func:`detect` turns that into
a short list of boxes per image in four steps, for the whole batch at once:

1. **decode** the offsets against the default boxes (``matching.decode``) -> normalized xyxy;
2. **softmax** over the C classes, and drop the background column;
3. **score threshold**: keep each (box, class) pair whose probability is above ``score_threshold``
   -- one box may stay as a candidate for several classes;
4. **class-aware non-maximum suppression**: among the (at most 400, as in Caffe SSD) best
   candidates of one class in one image, a box that overlaps a higher-scoring one by
   IoU > ``iou_threshold`` is dropped; then each image keeps its ``top_k`` best detections over
   all classes.  Three implementations give the same detections (``detect(..., nms=...)``): a
   ``torchvision.ops.nms`` call per (image, class) on the candidates that can still make the
   top ``top_k`` (``"per_class"``, the CPU default), one ``torchvision.ops.batched_nms`` call
   (``"batched"``), or an exact greedy NMS run for all (image, class) groups at once on padded
   overlap matrices (``"padded"``, the GPU default).

Paper p.6 (testing): "we use a confidence threshold of 0.01 ... then apply nms with jaccard
overlap of 0.45 per class and keep the top 200 detections per image".

:class:`Predictor` wraps a model for raw images of any size and returns boxes in their pixels.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms as nms_kernel

from ssd_tutorial.augmentation import InputTransform
from ssd_tutorial.boxes import check_boxes
from ssd_tutorial.default_boxes import default_boxes
from ssd_tutorial.matching import VARIANCES, decode

__all__ = ["detect", "Predictor", "predict", "preprocess", "cpu_has_native_bf16", "pick_precision"]

Detection = dict[str, Tensor]


def _rank_within_group(group: Tensor) -> Tensor:
    """Position of each element among the elements of its group, in the current order.

    ``group [K]`` long (elements already sorted by descending score) -> ``[K]`` long, 0 for the
    best element of each group, 1 for the second, ...  No Python loop.
    """
    order = torch.sort(group, stable=True).indices  # [K] groups together, score order kept inside
    sorted_group = group[order]  # [K]
    counts = torch.bincount(sorted_group)  # [max group + 1]
    starts = torch.cumsum(counts, 0) - counts  # [max group + 1] first position of each group
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - starts[sorted_group]
    return rank


def _empty_detections(batch: int, device: torch.device, dtype: torch.dtype) -> list[Detection]:
    return [
        {
            "boxes": torch.zeros(0, 4, device=device, dtype=dtype),
            "scores": torch.zeros(0, device=device, dtype=dtype),
            "labels": torch.zeros(0, device=device, dtype=torch.long),
        }
        for _ in range(batch)
    ]


NMS_CHOICES = ("auto", "per_class", "batched", "padded")
# float64 temporaries of the padded NMS (3 live [b, C-1, K, K] tensors) are built this many bytes
# at a time at most: the batch is cut into chunks beyond it
_PADDED_NMS_TEMP_BYTES = 2 * 1024**3


def detect(
    loc: Tensor,
    conf_logits: Tensor,
    priors: Tensor,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    top_k: int = 200,
    candidates_per_class: int | None = 400,
    variances: Sequence[float] = VARIANCES,
    clip: bool = True,
    *,
    nms: str = "auto",
) -> list[Detection]:
    """Detections for a whole batch: decode, softmax, score threshold, class-aware NMS, top-k.

    * ``loc [B, P, 4]`` -- predicted offsets (``P = 8732`` for SSD300);
    * ``conf_logits [B, P, C]`` -- class logits, class 0 = background;
    * ``priors [P, 4]`` -- default boxes, normalized cxcywh.

    Returns one dict per image: ``"boxes" [N, 4]`` normalized xyxy, ``"scores" [N]``,
    ``"labels" [N]`` long in ``1..C-1``, sorted by descending score, ``N <= top_k``.

    ``candidates_per_class``: only the best this many candidates of each class and image go to
    NMS (``None``: all); not in the paper -- Caffe SSD's ``nms_param.top_k`` = 400, as
    torchvision's ``topk_candidates``.  ``clip``: clip decoded boxes to the image (Caffe SSD
    does not, torchvision does).  ``nms`` picks how the class-aware NMS is computed, all with
    the same detections and the same tie order (within a class by box index; across classes by
    class, then box): ``"per_class"`` (a ``torchvision.ops.nms`` call per image and class, on
    the candidates that can still reach ``top_k``), ``"batched"`` (one ``batched_nms`` call),
    ``"padded"`` (all groups' greedy passes side by side, K steps whatever B and C); ``"auto"``
    takes ``"per_class"`` on a CPU and ``"padded"`` on CUDA (``"batched"`` without a cap).
    Chapter 08 teaches the rule; the appendix explains the three forms and their speed.
    """
    if loc.ndim != 3 or loc.shape[-1] != 4:
        raise ValueError(f"loc must have shape [B, P, 4], got {list(loc.shape)}")
    if conf_logits.ndim != 3 or conf_logits.shape[:2] != loc.shape[:2]:
        raise ValueError(
            f"conf_logits must have shape [B, P, C] with B, P as loc {list(loc.shape[:2])}, "
            f"got {list(conf_logits.shape)}"
        )
    if conf_logits.shape[-1] < 2:
        raise ValueError(f"conf_logits need at least 2 classes (background + 1), got {conf_logits.shape[-1]}")
    check_boxes(priors, "priors")
    if priors.ndim != 2 or priors.shape[0] != loc.shape[1]:
        raise ValueError(f"priors must have shape [P, 4] with P = {loc.shape[1]}, got {list(priors.shape)}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if candidates_per_class is not None and candidates_per_class < 1:
        raise ValueError(f"candidates_per_class must be >= 1 or None, got {candidates_per_class}")
    if nms not in NMS_CHOICES:
        raise ValueError(f"nms must be one of {NMS_CHOICES}, got {nms!r}")
    if nms == "auto":
        if loc.device.type != "cuda":
            nms = "per_class"
        else:
            nms = "padded" if candidates_per_class is not None else "batched"

    boxes = decode(loc, priors.to(loc), variances)  # [B, P, 4] normalized xyxy
    if clip:
        boxes = boxes.clamp(0.0, 1.0)
    probs = conf_logits.softmax(dim=-1)  # [B, P, C]
    if nms == "per_class":
        return _per_class_nms_detect(boxes, probs, score_threshold, iou_threshold, top_k, candidates_per_class)
    scores = probs[..., 1:]  # [B, P, C - 1]; background column dropped
    if nms == "padded":
        return _padded_greedy_nms(boxes, scores, score_threshold, iou_threshold, top_k, candidates_per_class)
    return _batched_nms_detect(boxes, scores, score_threshold, iou_threshold, top_k, candidates_per_class)


def _batched_nms_detect(
    boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float, top_k: int,
    candidates_per_class: int | None,
) -> list[Detection]:
    """``detect(nms="batched")``: ``boxes [B, P, 4]`` xyxy, ``scores [B, P, C-1]`` -> detections."""
    batch, _, num_fg = scores.shape
    # every (image, class, box) above the threshold is a candidate, listed image by image, then
    # class by class, then box by box: this order breaks ties between equal scores everywhere
    above = (scores > score_threshold).transpose(1, 2)  # [B, C - 1, P]
    image_idx, class_idx, box_idx = above.nonzero(as_tuple=True)  # [K] each
    if image_idx.numel() == 0:
        return _empty_detections(batch, boxes.device, boxes.dtype)
    cand_scores = scores[image_idx, box_idx, class_idx]  # [K]
    cand_boxes = boxes[image_idx, box_idx]  # [K, 4]
    # one group per (image, class): one batched_nms call serves the whole batch
    group = image_idx * num_fg + class_idx  # [K]

    if candidates_per_class is not None:
        order = torch.sort(cand_scores, descending=True, stable=True).indices  # [K]
        keep = order[_rank_within_group(group[order]) < candidates_per_class]
        cand_scores, cand_boxes, group = cand_scores[keep], cand_boxes[keep], group[keep]
        image_idx, class_idx = image_idx[keep], class_idx[keep]

    # batched_nms keeps groups apart by shifting each group's boxes far away from the others
    # (offset = group * (max coordinate + 1)).  In float32 an offset of ~1000 costs ~1e-4 of
    # precision on boxes ~0.1 wide, which can flip an IoU near the threshold; float64 avoids it.
    kept = batched_nms(cand_boxes.double(), cand_scores.double(), group, iou_threshold)  # [N]
    # best first; equal scores in candidate order (the kernels' own tie order varies by device)
    kept = kept.sort().values
    kept = kept[torch.sort(cand_scores[kept], descending=True, stable=True).indices]
    kept = kept[_rank_within_group(image_idx[kept]) < top_k]  # top_k per image, over all classes
    # image by image, best first: a stable sort by image keeps the score order inside each image
    kept = kept[torch.sort(image_idx[kept], stable=True).indices]
    counts = torch.bincount(image_idx[kept], minlength=batch).tolist()  # [B]
    out_boxes = cand_boxes[kept].split(counts)
    out_scores = cand_scores[kept].split(counts)
    out_labels = (class_idx[kept] + 1).split(counts)  # back to 1-based labels
    return [
        {"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(out_boxes, out_scores, out_labels)
    ]


def _sort_entries(keys: Sequence[tuple[Tensor, bool]]) -> Tensor:
    """The order that sorts entries by several keys, the first key most significant: ``keys`` is a
    list of ``(values [E], descending)``; stable sorts from the last key to the first."""
    order = torch.arange(keys[0][0].numel(), device=keys[0][0].device)  # [E]
    for values, descending in reversed(keys):
        order = order[torch.sort(values[order], descending=descending, stable=True).indices]
    return order


def _best_entries(flat: Tensor, m: int, score_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Of each row of ``flat [b, N]``, the ``m`` best entries above ``score_threshold``, together
    with every entry equal to the ``m``-th (so that the set does not depend on how ties are cut).

    Returns ``(row [E], index [E], score [E])`` in no particular order.  ``topk`` of ``m + 1``
    finds them; a row where the ``m``-th and ``m + 1``-th are equal (rare) is taken with a compare.
    """
    m = min(m, flat.shape[1])
    values, index = flat.topk(min(m + 1, flat.shape[1]), dim=1)  # [b, m (+1)], best first
    if bool(values[:, 0].isnan().any()):  # topk puts NaN first; a NaN score is no candidate
        flat = flat.nan_to_num(nan=float("-inf"))
        values, index = flat.topk(min(m + 1, flat.shape[1]), dim=1)
    taken = values[:, :m] > score_threshold  # [b, m]
    row, col = taken.nonzero(as_tuple=True)  # [E]
    row, index, score = row, index[row, col], values[row, col]
    if values.shape[1] > m:
        tied = (values[:, m] == values[:, m - 1]) & (values[:, m] > score_threshold)  # [b]
        if bool(tied.any()):  # those rows again: every entry at least the m-th value
            again = tied.nonzero()[:, 0]  # [t]
            extra_row, extra_index = ((flat[again] >= values[again, m - 1 : m]) & (flat[again] > score_threshold)).nonzero(as_tuple=True)
            extra_row = again[extra_row]
            mine = ~tied[row]
            row = torch.cat((row[mine], extra_row))
            index = torch.cat((index[mine], extra_index))
            score = torch.cat((score[mine], flat[extra_row, extra_index]))
    return row, index, score


def _per_class_nms_detect(
    boxes: Tensor, probs: Tensor, score_threshold: float, iou_threshold: float, top_k: int,
    candidates_per_class: int | None,
) -> list[Detection]:
    """``detect(nms="per_class")``: ``boxes [B, P, 4]`` xyxy, ``probs [B, P, C]`` (softmax, background
    column included) -> detections.  A ``torchvision.ops.nms`` call (float64) per (image, class)
    group, on the candidates that can still make the image's ``top_k``:

    Greedy NMS decides a candidate's fate from the better candidates of its class only.  So NMS on
    each class's candidates scoring at least ``s`` keeps exactly what NMS on all of them keeps
    above ``s``, and once an image has ``top_k`` kept above ``s``, nothing below ``s`` can enter
    its list.  ``s`` starts at the image's ``2 * top_k``-th best (box, class) score, over all
    classes, and is lowered (4 times as many entries) only for images where fewer than ``top_k``
    survive, until every candidate has been through.  An untrained model puts ~8000 candidates
    (400 in each of 20 classes) above 0.01, and ~210 of them decide its 200 detections: NMS sees
    ~400 boxes, not 8000.  ``candidates_per_class`` is applied to what is taken: within a class
    the best ``K``.  Ties: within a class by box index; across classes by class.
    """
    batch, num_priors, num_classes = probs.shape
    cap = num_priors if candidates_per_class is None else candidates_per_class
    probs[..., 0] = float("-inf")  # in place (detect's own softmax): background is never a candidate
    flat = probs.reshape(batch, num_priors * num_classes)  # [B, P*C]: entry = box * C + class
    done: list[tuple[Tensor, ...]] = []  # per finished image: (image, score, class, box index, box)
    pending, m = list(range(batch)), 2 * top_k
    while pending:
        rows = torch.tensor(pending, device=probs.device)
        row, index, score = _best_entries(flat[rows], m, score_threshold)  # [E] each
        prior, label = torch.div(index, num_classes, rounding_mode="floor"), index % num_classes  # [E]
        image = rows[row]  # [E]
        group = image * num_classes + label  # [E]: one NMS group per (image, class)
        order = _sort_entries([(group, False), (score, True), (prior, False)])  # class by class, best first
        group, score, prior, image, label = group[order], score[order], prior[order], image[order], label[order]
        # an image is done when it keeps top_k, or nothing above the threshold was left out, or
        # every class gave its `cap` best (what a class has beyond them never counts)
        taken_per_image = torch.bincount(image, minlength=batch).tolist()  # [B]
        full_classes = [0] * batch
        if cap < num_priors:  # each class's best `cap` candidates only
            rank = _rank_within_group(group)  # [E]
            full_classes = torch.bincount(image[rank == cap - 1], minlength=batch).tolist()  # [B]
            capped = rank < cap
            group, score, prior, image, label = group[capped], score[capped], prior[capped], image[capped], label[capped]
        cand = boxes[image, prior]  # [E, 4]
        sizes = torch.unique_consecutive(group, return_counts=True)[1].tolist()  # entries of each group
        cand64, score64 = cand.double().split(sizes), score.double().split(sizes)
        kept, start = [], 0
        for b64, s64, n in zip(cand64, score64, sizes):
            kept.append(nms_kernel(b64, s64, iou_threshold) + start)
            start += n
        keep = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=probs.device)  # [N]
        kept_per_image = torch.bincount(image[keep], minlength=batch).tolist()  # [B]
        still = [
            b for b in pending
            if kept_per_image[b] < top_k and taken_per_image[b] >= m and full_classes[b] < num_classes - 1
        ]
        if still:  # too few kept and candidates left: lower those images' cut
            ok = torch.ones(batch, dtype=torch.bool, device=probs.device)
            ok[still] = False
            keep = keep[ok[image[keep]]]
        done.append((image[keep], score[keep], label[keep], prior[keep], cand[keep]))
        pending, m = still, 4 * m

    image, score, label, prior, cand = (torch.cat(parts) for parts in zip(*done))
    # image by image, best first; equal scores by class, then box index
    order = _sort_entries([(image, False), (score, True), (label, False), (prior, False)])
    order = order[_rank_within_group(image[order]) < top_k]  # top_k per image
    counts = torch.bincount(image[order], minlength=batch).tolist()  # [B]
    return [
        {"boxes": b, "scores": s, "labels": lab}
        for b, s, lab in zip(cand[order].split(counts), score[order].split(counts), label[order].split(counts))
    ]


def _padded_overlaps(cand: Tensor, iou_threshold: float) -> Tensor:
    """``cand [B, G, K, 4]`` xyxy boxes, each group's in rank order -> ``[B, G, K, K]`` bool,
    ``[..., i, j]`` True where box ``i`` may NOT suppress box ``j``: ``j`` is not after ``i``, or
    their IoU is not above ``iou_threshold``.

    The IoU is computed as ``torchvision.ops.nms`` does, in float64: ``w = max(0, min(x2) -
    max(x1))``, same for ``h``, ``inter = w * h``, ``iou = inter / (area_i + area_j - inter)``,
    suppress if ``iou > iou_threshold`` (a 0 / 0 NaN from empty boxes never suppresses).  The
    float64 temporaries are built a chunk of images at a time, under ``_PADDED_NMS_TEMP_BYTES``.
    """
    batch, groups, k, _ = cand.shape
    allowed = torch.empty(batch, groups, k, k, dtype=torch.bool, device=cand.device)  # [B, G, K, K]
    not_later = torch.ones(k, k, dtype=torch.bool, device=cand.device).tril()  # [K, K]: j <= i
    per_image = 3 * groups * k * k * 8  # bytes: three live float64 [G, K, K] tensors
    step = max(1, _PADDED_NMS_TEMP_BYTES // per_image)
    for start in range(0, batch, step):
        x1, y1, x2, y2 = cand[start : start + step].double().unbind(-1)  # [b, G, K] each
        area = (x2 - x1) * (y2 - y1)  # [b, G, K]
        w = torch.minimum(x2[..., :, None], x2[..., None, :])  # [b, G, K, K]: row i, column j
        w.sub_(torch.maximum(x1[..., :, None], x1[..., None, :])).clamp_(min=0)
        h = torch.minimum(y2[..., :, None], y2[..., None, :])  # [b, G, K, K]
        h.sub_(torch.maximum(y1[..., :, None], y1[..., None, :])).clamp_(min=0)
        inter = w.mul_(h)  # [b, G, K, K]
        del h
        union = area[..., :, None] + area[..., None, :]  # [b, G, K, K]: area_i + area_j
        iou = inter.div_(union.sub_(inter))  # [b, G, K, K]
        del union
        # NaN > t is False: computed as "not (iou > t)", never "iou <= t"
        torch.logical_or(~(iou > iou_threshold), not_later, out=allowed[start : start + step])
    return allowed


def _padded_greedy_nms(
    boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float, top_k: int,
    candidates_per_class: int | None,
) -> list[Detection]:
    """``detect(nms="padded")``: ``boxes [B, P, 4]`` xyxy, ``scores [B, P, C-1]`` -> detections.

    Exact greedy NMS for all B x (C-1) (image, class) groups at once:

    1. each group's scores sorted (descending, stable: equal scores by box index); its best
       ``K`` candidates (``K`` = the most candidates above ``score_threshold`` in any group,
       capped at ``candidates_per_class``) padded side by side: ``[B, C-1, K]``;
    2. the ``[B, C-1, K, K]`` overlap matrices (:func:`_padded_overlaps`);
    3. the greedy pass: for rank ``i = 0 .. K-2``, if candidate ``i`` is still kept, it removes
       the later candidates it overlaps -- one batched update over all groups per rank;
    4. per image, the kept candidates of all classes sorted by score (stable: ties by class, then
       box index, as ``"batched"``), the first ``top_k``.

    Two host syncs: the value of ``K``, and the number of detections per image.
    """
    batch, _, num_fg = scores.shape
    by_class = scores.transpose(1, 2)  # [B, C-1, P]
    above = by_class > score_threshold  # [B, C-1, P]
    k = int(above.sum(dim=-1).amax())  # host sync 1: the most candidates of any group
    if candidates_per_class is not None:
        k = min(k, candidates_per_class)
    if k == 0:
        return _empty_detections(batch, boxes.device, boxes.dtype)
    # a full stable sort, not topk: equal scores must come in box order, as in "batched"
    sorted_scores, sorted_idx = torch.sort(by_class, dim=-1, descending=True, stable=True)  # [B, C-1, P]
    top_scores = sorted_scores[..., :k].contiguous()  # [B, C-1, K] best first
    top_idx = sorted_idx[..., :k]  # [B, C-1, K] box index of each candidate
    cand = boxes.gather(1, top_idx.reshape(batch, num_fg * k, 1).expand(-1, -1, 4))  # [B, (C-1)*K, 4]
    cand = cand.reshape(batch, num_fg, k, 4)  # [B, C-1, K, 4]
    allowed = _padded_overlaps(cand, iou_threshold)  # [B, C-1, K, K]

    keep = top_scores > score_threshold  # [B, C-1, K]; padding (below the threshold) is never kept
    # views made once (they see keep's in-place updates): two kernel launches per rank, no slicing
    rows = allowed.unbind(-2)  # K x [B, C-1, K]: row i = whom candidate i may not suppress
    kept_i = keep.unsqueeze(-1).unbind(-2)  # K x [B, C-1, 1]: is candidate i still kept
    for i in range(k - 1):
        # keep[j] &= (i may not suppress j) or (i was suppressed); on bools "a >= b" is "a or not b"
        keep &= rows[i] >= kept_i[i]  # [B, C-1, K]

    flat = torch.where(keep, top_scores, float("-inf")).reshape(batch, num_fg * k)  # [B, (C-1)*K]: class, rank
    n = min(top_k, num_fg * k)
    # stable: equal scores by class, then rank (= box index among equal scores), as in "batched"
    best, where = torch.sort(flat, dim=1, descending=True, stable=True)  # [B, (C-1)*K]
    best, where = best[:, :n], where[:, :n]  # [B, n]
    labels = torch.div(where, k, rounding_mode="floor") + 1  # [B, n] 1-based
    out_boxes = cand.reshape(batch, num_fg * k, 4).gather(1, where[..., None].expand(-1, -1, 4))  # [B, n, 4]
    counts = keep.sum(dim=(1, 2)).clamp(max=n).tolist()  # [B]; host sync 2
    return [
        {"boxes": out_boxes[b, :c], "scores": best[b, :c], "labels": labels[b, :c]} for b, c in enumerate(counts)
    ]


def preprocess(image: Tensor, size: int = 300, resize: str = "uint8") -> Tensor:
    """One raw image -> the model's input: uint8 ``[3, H, W]`` (or ``[1, H, W]`` grey) -> float
    ``[3, size, size]``, resized bilinearly and normalized with the ImageNet mean and std.

    The same steps as ``augmentation.SSDAugmentation(train=False)``; ``resize`` as in
    :class:`~ssd_tutorial.augmentation.InputTransform`, which does the work.
    """
    return InputTransform(size, resize)(image)


PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16), as torch's
    CPU feature probe reports it; False where it cannot tell (another architecture, another torch)."""
    try:
        features = torch._C._cpu._get_cpu_capability()  # {"avx512_bf16": True, ...}
    except (AttributeError, RuntimeError):
        return False
    return bool(features.get("avx512_bf16") or features.get("amx_bf16"))


def pick_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16"`` on a CPU with native bfloat16 (:func:`cpu_has_native_bf16`), else
    ``"fp32"`` (other CPUs, where bf16 is emulated and slower, and CUDA); ``"bf16"``/``"fp32"`` as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "fp32"


class Predictor:
    """A trained model made easy to call: raw uint8 images of any size in, boxes in their pixels out.

    ``Predictor(model)(images)`` with ``images`` a list of uint8 ``[3, H, W]`` tensors returns one
    dict per image, ``"boxes" [N, 4]`` xyxy **pixels of that image**, ``"scores" [N]``,
    ``"labels" [N]`` (1-based).  ``priors`` default to the model's own (``model.default_boxes()``),
    the input transform (resize and normalization) to ``model.input_transform``; ``size`` (the
    square input side) replaces the transform's;
    ``device`` defaults to the model's.  The thresholds are passed on to :func:`detect`.

    Speed (what it picks is in ``self.precision`` and ``self.channels_last``):

    * ``precision="auto"`` (default): the network runs under bfloat16 autocast on a CPU that has
      native bf16 (AVX512-BF16 / AMX, :func:`cpu_has_native_bf16`), in float32 everywhere else
      (CUDA included); ``benchmarks/results/`` holds what it saves on the machines measured.  bf16 moves the logits by ~1e-2, so low scores and
      near-ties can change: detections above score 0.3 stay within 0.05 in score and IoU 0.9 in
      box of float32's (``tests/test_inference.py`` on the book's model).  ``"fp32"`` forces
      float32 (exact, the same on every machine: evaluation uses it); ``"bf16"`` forces bf16.
      The boxes and scores that :func:`detect` sees are float32 either way.
    * ``channels_last`` (default: on a CPU): the model's weights and the input batch in NHWC
      memory order, which the CPU convolutions run faster in.  The model is converted in place
      (as it is moved to ``device`` and put in eval mode); its values do not change.
    """

    def __init__(
        self,
        model: nn.Module,
        priors: Tensor | None = None,
        size: int | None = None,
        device: torch.device | str | None = None,
        *,
        score_threshold: float = 0.01,
        iou_threshold: float = 0.45,
        top_k: int = 200,
        batch_size: int = 16,
        precision: str = "auto",
        channels_last: bool | None = None,
    ) -> None:
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.precision = pick_precision(precision, self.device)
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if priors is None:  # the model's own layout (SSD300's, SSD512's or a custom one)
            priors = model.default_boxes() if hasattr(model, "default_boxes") else default_boxes()
        self.priors = priors.to(self.device)  # [P, 4] cxcywh
        transform = getattr(model, "input_transform", None) or InputTransform(300)
        if size is not None:
            transform = InputTransform(size, transform.resize)
        self.transform = transform  # uint8 [3, H, W] -> float [3, S, S]
        self.size = transform.size
        self.detect_kwargs: dict[str, Any] = dict(
            score_threshold=score_threshold, iou_threshold=iou_threshold, top_k=top_k
        )
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: Sequence[Tensor]) -> list[Detection]:
        if isinstance(images, Tensor) and images.ndim == 3:
            raise TypeError("Predictor takes a list of images; wrap a single image as [image]")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        results: list[Detection] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            x = torch.stack([self.transform(im) for im in chunk]).to(self.device)  # [b, 3, S, S]
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                loc, conf_logits = self.model(x)  # [b, P, 4], [b, P, C]
            loc, conf_logits = loc.float(), conf_logits.float()  # bf16 -> float32 before softmax and NMS
            for image, det in zip(chunk, detect(loc, conf_logits, self.priors, **self.detect_kwargs)):
                height, width = image.shape[-2:]
                scale = torch.tensor([width, height, width, height], dtype=det["boxes"].dtype, device=self.device)
                results.append({**det, "boxes": det["boxes"] * scale})  # normalized -> pixels
        return results


def predict(model: nn.Module, images: Sequence[Tensor], **kwargs: Any) -> list[Detection]:
    """``Predictor(model, **kwargs)(images)``: detections in each image's pixels."""
    return Predictor(model, **kwargs)(images)
