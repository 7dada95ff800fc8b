"""Matching: which default box answers for which object, and what it must predict.

Three steps turn an image's objects into training targets for the 8732 default boxes:

1. ``match``  -- every object takes a default box of its own (forced, whatever the
   overlap: its best, or its next best where another object overlaps that one more),
   then every other default box takes the object it overlaps most if IoU >= threshold;
   the rest are background (label 0).
2. ``encode`` -- each matched box becomes four offsets relative to its default box,
   scaled by the variances (0.1, 0.2).  ``decode`` turns offsets back into boxes.
3. ``build_targets`` -- steps 1 and 2 for a whole batch at once, with no Python loop
   over images or default boxes and no host synchronisation, so it runs on the GPU
   beside the model.

Forced matches follow the released Caffe SSD (``MatchBBox`` in bbox_util.cpp, bipartite
step): greedily, best pair first.  The (object, default box) pair of highest IoU is
matched, both leave the pool, and the next best pair among the rest is matched, until
every object has its default box.  So when two objects share a best default box, the one
overlapping it most keeps it and the other takes its next-best box: no object that
overlaps any default box ends without a positive. (torchvision and ssd.pytorch let the
object written last take a shared best box and leave the other with only its
above-threshold matches, so their result depends on the annotations' order.)

Tie rules (shared by ``match`` and ``build_targets``, which agree exactly):

* among pairs of equal IoU in the greedy step, the lowest default-box index wins, then
  the lowest object index (Caffe's loop order, with its strict ``>``);
* a default box that overlaps several objects equally takes the object with the lowest
  index;
* an object that overlaps no default box at all (IoU 0 everywhere, e.g. zero area)
  forces nothing.

Boxes of objects are normalized ``xyxy``; default boxes (priors) are normalized
``cxcywh``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ssd_tutorial.boxes import box_iou, check_boxes, cxcywh_to_xyxy, xyxy_to_cxcywh

__all__ = [
    "VARIANCES",
    "greedy_bipartite",
    "match",
    "encode",
    "decode",
    "build_targets",
]

# Caffe SSD: the released code divides the centre offsets by 0.1 and the log-size
# offsets by 0.2 ("variances").  The paper's equation 2 has no such factors.
VARIANCES: tuple[float, float] = (0.1, 0.2)


def _check_variances(variances: Sequence[float]) -> tuple[float, float]:
    if len(variances) != 2 or not all(v > 0 for v in variances):
        raise ValueError(
            "variances must be two positive numbers (centre, size), got "
            f"{tuple(variances)}"
        )
    return float(variances[0]), float(variances[1])


def _check_threshold(iou_threshold: float) -> None:
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")


def _check_objects(gt_xyxy: Tensor, gt_labels: Tensor, where: str = "") -> None:
    check_boxes(gt_xyxy, f"gt_xyxy{where}", require_ordered=True)
    if gt_xyxy.ndim != 2:
        raise ValueError(
            f"gt_xyxy{where} must have shape [G, 4], got {list(gt_xyxy.shape)}"
        )
    if not isinstance(gt_labels, Tensor) or gt_labels.shape != gt_xyxy.shape[:1]:
        shape = (
            list(gt_labels.shape)
            if isinstance(gt_labels, Tensor)
            else type(gt_labels).__name__
        )
        raise ValueError(
            f"gt_labels{where} must be a tensor of shape [{gt_xyxy.shape[0]}], got "
            f"{shape}"
        )
    if gt_labels.is_floating_point() or gt_labels.dtype == torch.bool:
        raise TypeError(
            f"gt_labels{where} must be an integer tensor, got {gt_labels.dtype}"
        )


def _check_priors(priors_cxcywh: Tensor) -> None:
    check_boxes(priors_cxcywh, "priors_cxcywh")
    if priors_cxcywh.ndim != 2 or priors_cxcywh.shape[0] == 0:
        raise ValueError(
            "priors_cxcywh must have shape [P, 4] with P > 0, got "
            f"{list(priors_cxcywh.shape)}"
        )


def greedy_bipartite(iou: Tensor) -> Tensor:
    """Caffe SSD's bipartite step: best (object, default box) pair first, each used
    once.

    ``iou [B, G, P]`` (>= 0; padding objects all 0) -> ``forced_obj [B, P]`` long: the
    object forced onto each default box, or -1.  Ties: the lowest default box, then
    the lowest object.  No host synchronisation.

    Before an object is matched, fewer than G of its default boxes can have been taken
    (one a pass), so its best remaining box is always among its K = min(G, P) best: the
    greedy passes run on those candidates, not on all P boxes.  Each pair is ranked by
    one exact int64 key: the IoU's float32 bits, then the default box (lower first),
    then the object (lower first).
    """
    batch, g_max, num_priors = iou.shape
    k = min(g_max, num_priors)
    prior_bits, obj_bits = (
        max(1, (num_priors - 1).bit_length()),
        max(1, (g_max - 1).bit_length()),
    )
    # Each object's K best boxes.  topk alone may cut a run of equal IoU anywhere, so
    # the boxes strictly above the K-th value are kept and the rest filled with the
    # lowest-index boxes equal to it: exactly the first K in (IoU desc, index asc)
    # order.
    values, indices = iou.topk(k, dim=2)  # [B, G, K]
    kth = values[..., -1:]  # [B, G, 1]
    above = values > kth  # [B, G, K]
    prior_index = torch.arange(num_priors, device=iou.device, dtype=iou.dtype)
    # [B, G, P]: lower index, higher
    at_kth = torch.where(iou == kth, -prior_index, float("-inf"))
    tie_score, tie_indices = at_kth.topk(k, dim=2)  # [B, G, K]
    rank = torch.arange(k, device=iou.device)
    # [B, G, K]
    tie_kept = (tie_score > float("-inf")) & (rank < k - above.sum(-1, keepdim=True))
    cand_prior = torch.cat((indices, tie_indices), dim=2)  # [B, G, 2K]
    cand_iou = torch.cat((values, kth.expand_as(values)), dim=2).float()  # [B, G, 2K]
    kept = torch.cat((above, tie_kept), dim=2) & (cand_iou > 0)  # IoU 0 is no pair
    cand_bits = cand_iou.view(
        torch.int32
    ).long()  # float32 bits: monotonic for IoU >= 0
    obj_index = torch.arange(g_max, device=iou.device)[None, :, None]  # [1, G, 1]
    key = (
        (cand_bits << (prior_bits + obj_bits))
        | ((num_priors - 1 - cand_prior) << obj_bits)
        | (g_max - 1 - obj_index)
    )
    key = key.masked_fill(~kept, -1)
    # column P: dump
    forced_obj = torch.full(
        (batch, num_priors + 1), -1, dtype=torch.long, device=iou.device
    )
    rows = torch.arange(batch, device=iou.device)
    for _ in range(g_max):
        best = key.reshape(batch, -1).max(dim=1).values  # [B]
        found = best >= 0  # [B]
        obj = g_max - 1 - (best & ((1 << obj_bits) - 1))  # [B]
        prior = num_priors - 1 - ((best >> obj_bits) & ((1 << prior_bits) - 1))  # [B]
        forced_obj[rows, torch.where(found, prior, num_priors)] = torch.where(
            found, obj, -1
        )
        # the pair's object and default box leave the pool (where a pair was found)
        # [B, G, K]
        taken = (obj_index == obj[:, None, None]) | (cand_prior == prior[:, None, None])
        key = key.masked_fill(taken & found[:, None, None], -1)
    return forced_obj[:, :num_priors]


def match(
    gt_xyxy: Tensor,
    gt_labels: Tensor,
    priors_cxcywh: Tensor,
    iou_threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Give every default box an object or background, for one image.

    Args:
        gt_xyxy: ``[G, 4]`` objects, normalized xyxy (G may be 0).
        gt_labels: ``[G]`` integer labels, 1..C-1 (0 is background and is refused).
        priors_cxcywh: ``[P, 4]`` default boxes, normalized cxcywh.
        iou_threshold: a default box not forced onto an object is positive when its IoU
        with
            some object is at least this (paper p.5: "higher than a threshold (0.5)").

    Returns:
        ``matched_xyxy [P, 4]`` normalized xyxy: the object box of each positive default
        box; a background default box holds itself, so that its encoded offsets are 0,
        never inf.  ``labels [P]`` long: the object's label, or 0 for background.

    See the module docstring for the tie rules.
    """
    _check_objects(gt_xyxy, gt_labels)
    _check_priors(priors_cxcywh)
    _check_threshold(iou_threshold)
    if gt_labels.numel() and int(gt_labels.min()) < 1:
        raise ValueError(
            "gt_labels must be >= 1 (0 means background), got "
            f"{sorted(set(gt_labels.tolist()))}"
        )
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)  # [P, 4]
    num_priors = priors_xyxy.shape[0]
    labels = torch.zeros(num_priors, dtype=torch.long, device=priors_xyxy.device)
    if gt_xyxy.shape[0] == 0:  # an image without objects: all background
        return priors_xyxy.clone(), labels
    gt_xyxy = gt_xyxy.to(priors_xyxy)

    iou = box_iou(gt_xyxy, priors_xyxy)  # [G, P]
    # torch.max along a dim returns the first of equal maxima (documented): lowest index
    # wins.
    best_obj_iou, best_obj = iou.max(dim=0)  # [P]: each default box's best object

    # Forced matches (paper p.5: "match each ground truth box to the default box with
    # the best jaccard overlap"), made greedily as Caffe does so that objects sharing a
    # best box all get one.
    forced_obj = greedy_bipartite(iou[None])[0]  # [P], -1 where nothing was forced
    forced = forced_obj >= 0  # [P]
    obj = torch.where(forced, forced_obj, best_obj)  # [P]
    positive = forced | (best_obj_iou >= iou_threshold)  # [P]
    labels = torch.where(positive, gt_labels.to(labels.device)[obj].long(), labels)
    matched_xyxy = torch.where(positive[:, None], gt_xyxy[obj], priors_xyxy)  # [P, 4]
    return matched_xyxy, labels


def encode(
    matched_xyxy: Tensor,
    priors_cxcywh: Tensor,
    variances: Sequence[float] = VARIANCES,
) -> Tensor:
    """Offsets that move each default box onto its matched box.

    ``matched_xyxy [..., P, 4]`` normalized xyxy, ``priors_cxcywh [P, 4]`` -> ``[..., P,
    4]``:

        t_cx = (g_cx - d_cx) / (v0 * d_w)     t_w = log(g_w / d_w) / v1
        t_cy = (g_cy - d_cy) / (v0 * d_h)     t_h = log(g_h / d_h) / v1

    (paper p.5, eq. 2, with the variances v = (0.1, 0.2) of the released code).  A
    zero-width matched box gives -inf; ``match`` never hands one to a positive box
    unless the object itself has zero width.
    """
    v_centre, v_size = _check_variances(variances)
    check_boxes(matched_xyxy, "matched_xyxy")
    _check_priors(priors_cxcywh)
    if matched_xyxy.shape[-2] != priors_cxcywh.shape[0]:
        raise ValueError(
            f"matched_xyxy has {matched_xyxy.shape[-2]} boxes but there are "
            f"{priors_cxcywh.shape[0]} priors"
        )
    g = xyxy_to_cxcywh(matched_xyxy)  # [..., P, 4] cxcywh
    d = priors_cxcywh.to(g)  # [P, 4], broadcasts over the leading dims
    centre = (g[..., :2] - d[:, :2]) / (v_centre * d[:, 2:])  # [..., P, 2]
    size = torch.log(g[..., 2:] / d[:, 2:]) / v_size  # [..., P, 2]
    return torch.cat((centre, size), dim=-1)


def decode(
    offsets: Tensor,
    priors_cxcywh: Tensor,
    variances: Sequence[float] = VARIANCES,
) -> Tensor:
    """Boxes from offsets: the inverse of :func:`encode`.

    ``offsets [..., P, 4]`` (e.g. the model's ``loc [B, P, 4]``), ``priors_cxcywh [P,
    4]`` -> ``[..., P, 4]`` normalized xyxy.
    """
    v_centre, v_size = _check_variances(variances)
    if not isinstance(offsets, Tensor) or offsets.ndim < 2 or offsets.shape[-1] != 4:
        shape = (
            list(offsets.shape)
            if isinstance(offsets, Tensor)
            else type(offsets).__name__
        )
        raise ValueError(f"offsets must have shape [..., P, 4], got {shape}")
    _check_priors(priors_cxcywh)
    if offsets.shape[-2] != priors_cxcywh.shape[0]:
        raise ValueError(
            f"offsets have {offsets.shape[-2]} boxes but there are "
            f"{priors_cxcywh.shape[0]} priors"
        )
    d = priors_cxcywh.to(offsets)  # [P, 4]
    centre = d[:, :2] + offsets[..., :2] * v_centre * d[:, 2:]  # [..., P, 2]
    size = d[:, 2:] * torch.exp(offsets[..., 2:] * v_size)  # [..., P, 2]
    return cxcywh_to_xyxy(torch.cat((centre, size), dim=-1))


def _flatten_objects(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """All objects of the batch in one list, and where each goes in a ``[B, G_max]``
    grid.

    Returns boxes ``[N, 4]``, labels ``[N]`` long, ``image [N]`` and ``slot [N]`` (the
    object's image and its index there), and G_max (at least 1, so the object axis is
    never empty).  The counts come from the tensors' shapes: nothing waits for the
    device.
    """
    counts = [int(b.shape[0]) for b in gt_boxes]
    # [N, 4]
    boxes = torch.cat([b.reshape(-1, 4) for b in gt_boxes]).to(
        device=device, dtype=dtype
    )
    # [N]
    labels = torch.cat([lab.reshape(-1) for lab in gt_labels]).to(
        device=device, dtype=torch.long
    )
    # Built from the Python counts (known on the host) rather than with
    # repeat_interleave on tensors: that keeps the step free of data-dependent ops, so
    # torch.compile sees one graph.
    # [N]
    image = torch.tensor(
        [i for i, c in enumerate(counts) for _ in range(c)], dtype=torch.long
    )
    slot = torch.tensor([j for c in counts for j in range(c)], dtype=torch.long)  # [N]
    return boxes, labels, image.to(device), slot.to(device), max([1] + counts)


def _batched_iou(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """IoU of ``a [..., G, 4]`` with ``b [P, 4]`` (both xyxy) -> ``[..., G, P]``.

    Works coordinate by coordinate on ``[..., G, P]`` tensors, in place where it can
    (this is the costliest step of ``build_targets``).  The union is at least the area
    of the ``b`` box, so ``b`` boxes of positive area (default boxes) never divide by 0.
    """
    ax1, ay1, ax2, ay2 = (t[..., None] for t in a_xyxy.unbind(-1))  # [..., G, 1] each
    bx1, by1, bx2, by2 = b_xyxy.unbind(-1)  # [P] each
    # [..., G, P]
    width = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)
    # [..., G, P]
    height = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0)
    inter = width.mul_(height)  # [..., G, P]
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)  # [..., G, 1]
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)  # [P]
    # [..., G, P]
    union = (area_a + area_b).sub_(inter).clamp_(min=torch.finfo(inter.dtype).tiny)
    return inter.div_(union)


def _greedy_one_image(iou: Tensor) -> Tensor:
    """:func:`greedy_bipartite` for one image, on the host: ``iou [G, P]`` ->
    ``forced_obj [P]``.

    As in :func:`greedy_bipartite`, an object is matched among its K = min(G, P) best
    default boxes, so only those pairs (all pairs at least as good as its K-th best,
    ties included, and of IoU > 0) are listed, sorted by (IoU desc, default box, object)
    and walked once in Python: a pair is taken when both its default box and its object
    are still free.  A few dozen pairs instead of G x P: on a CPU that is cheaper than G
    batched passes.
    """
    count, num_priors = iou.shape
    # [G, 1]: each object's K-th best IoU
    kth = iou.topk(min(count, num_priors), dim=1).values[:, -1:]
    # [E] candidate pairs
    obj, prior = ((iou >= kth) & (iou > 0)).nonzero(as_tuple=True)
    # best first
    pairs = sorted(zip((-iou[obj, prior]).tolist(), prior.tolist(), obj.tolist()))
    chosen: dict[int, int] = {}  # default box -> object
    for _, p, o in pairs:
        if p not in chosen and o not in chosen.values():
            chosen[p] = o
            if len(chosen) == count:
                break
    # [P]
    forced_obj = torch.full((num_priors,), -1, dtype=torch.long, device=iou.device)
    forced_obj[list(chosen)] = torch.tensor(
        list(chosen.values()), dtype=torch.long, device=iou.device
    )
    return forced_obj


def _assign_objects(
    iou: Tensor, forced_obj: Tensor, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """Each default box's object, as :func:`match` decides it: ``iou [..., G, P]``,
    ``forced_obj [..., P]`` (-1 where nothing was forced) -> ``obj [..., P]`` long and
    ``positive [..., P]`` bool.  A forced match wins; otherwise the best object,
    positive when its IoU reaches ``iou_threshold``.  torch.max returns the first of
    equal maxima: the lowest object index wins ties, as in :func:`match`."""
    best_obj_iou, best_obj = iou.max(dim=-2)  # [..., P]: each default box's best object
    forced = forced_obj >= 0  # [..., P]
    obj = torch.where(forced, forced_obj, best_obj)  # [..., P]
    positive = forced | (best_obj_iou >= iou_threshold)  # [..., P]
    return obj, positive


def _match_image_by_image(
    flat_boxes: Tensor, counts: Sequence[int], priors_xyxy: Tensor, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """``build_targets``' matching on a CPU, one image at a time, as :func:`match` does
    it.

    ``flat_boxes [N, 4]``: the objects of all images, image by image (``counts[i]`` of
    image i).  Returns ``obj [B, P]`` long (the row in N of each default box's object; 0
    where it has none) and ``positive [B, P]`` bool.  Each image's tensors are
    ``[G_i, P]``: small enough that torch runs them on one thread, which keeps a CPU
    shared with other work from stalling them.
    """
    num_priors, device = priors_xyxy.shape[0], priors_xyxy.device
    # [B, P]
    obj = torch.zeros(len(counts), num_priors, dtype=torch.long, device=device)
    # [B, P]
    positive = torch.zeros(len(counts), num_priors, dtype=torch.bool, device=device)
    start = 0
    for i, count in enumerate(counts):
        if count:
            # [G_i, P]
            iou = _batched_iou(flat_boxes[start : start + count], priors_xyxy)
            # [P]
            obj_i, positive[i] = _assign_objects(
                iou, _greedy_one_image(iou), iou_threshold
            )
            obj[i] = obj_i + start
        start += count
    return obj, positive


def _targets_image_by_image(
    flat_boxes: Tensor,
    flat_labels: Tensor,
    counts: Sequence[int],
    priors_cxcywh: Tensor,
    priors_xyxy: Tensor,
    iou_threshold: float,
    variances: Sequence[float],
) -> tuple[Tensor, Tensor]:
    """:func:`build_targets` without padding (its CPU form): ``(loc_targets [B, P, 4],
    labels [B, P])`` from the objects of all images, image by image (``counts[i]`` of
    image i in ``flat_boxes [N, 4]`` xyxy and ``flat_labels [N]``).  Only the positives
    are encoded."""
    batch, num_priors = len(counts), priors_cxcywh.shape[0]
    device = priors_cxcywh.device
    # [B, P, 4]; background: 0
    loc_targets = priors_cxcywh.new_zeros(batch, num_priors, 4)
    # [B, P]
    out_labels = torch.zeros(batch, num_priors, dtype=torch.long, device=device)
    if flat_boxes.shape[0] == 0:  # no objects anywhere: all background
        return loc_targets, out_labels
    obj, positive = _match_image_by_image(
        flat_boxes, counts, priors_xyxy, iou_threshold
    )
    # [F] each: the positives only
    image_idx, prior_idx = positive.nonzero(as_tuple=True)
    owner = obj[image_idx, prior_idx]  # [F]: row in N of each positive's object
    out_labels[image_idx, prior_idx] = flat_labels[owner]
    if owner.numel():
        # [F, 4]
        loc_targets[image_idx, prior_idx] = encode(
            flat_boxes[owner], priors_cxcywh[prior_idx], variances
        )
    return loc_targets, out_labels


def build_targets(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    priors_cxcywh: Tensor,
    iou_threshold: float = 0.5,
    variances: Sequence[float] = VARIANCES,
    *,
    padded: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Training targets for a batch: ``match`` + ``encode`` for every image at once.

    Args:
        gt_boxes: B tensors ``[G_i, 4]`` normalized xyxy (G_i may be 0).
        gt_labels: B integer tensors ``[G_i]`` with labels >= 1.
        priors_cxcywh: ``[P, 4]`` normalized cxcywh; the work runs on its device.

    Returns:
        ``loc_targets [B, P, 4]`` (offsets as :func:`encode`; 0 for background boxes)
        and ``labels [B, P]`` long (0 = background), equal to running :func:`match` and
        :func:`encode` image by image.

    On a GPU no Python loop touches images or default boxes: objects are padded to G_max
    with zero boxes (IoU 0 with everything), and the forced matches take G_max batched
    passes of :func:`greedy_bipartite`, deterministic on every device and with no host
    synchronisation.  On a CPU, where that padding costs more than the launches it
    saves, the same steps run image by image on each image's own objects
    (:func:`_match_image_by_image`); the targets are the same (``padded=True``/``False``
    picks a form; None: by device).  Label values are not checked here (that would wait
    for the GPU); ``match`` checks them.
    """
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(
            f"gt_boxes has {len(gt_boxes)} images but gt_labels has {len(gt_labels)}"
        )
    if len(gt_boxes) == 0:
        raise ValueError("build_targets needs at least one image")
    _check_priors(priors_cxcywh)
    _check_threshold(iou_threshold)
    for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):
        check_boxes(b, f"gt_boxes[{i}]")
        if b.ndim != 2 or not isinstance(lab, Tensor) or lab.shape != b.shape[:1]:
            raise ValueError(
                f"image {i}: gt_boxes must be [G, 4] and gt_labels [G], got "
                f"{list(b.shape)} and "
                f"{list(lab.shape) if isinstance(lab, Tensor) else type(lab).__name__}"
            )
        # a dtype check: no device sync
        if lab.is_floating_point() or lab.dtype == torch.bool:
            raise TypeError(
                f"image {i}: gt_labels must be an integer tensor, got {lab.dtype}"
            )
    device, dtype = priors_cxcywh.device, priors_cxcywh.dtype
    flat_boxes, flat_labels, image, slot, g_max = _flatten_objects(
        gt_boxes, gt_labels, device, dtype
    )
    batch, num_priors = len(gt_boxes), priors_cxcywh.shape[0]
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)  # [P, 4]
    if not (device.type != "cpu" if padded is None else padded):
        # On a CPU, padding every image to G_max objects costs more than it saves (no
        # kernel launches to save, ~3x the IoU entries on VOC-like batches): a loop over
        # the images runs the same steps on each image's own objects.  The same targets,
        # to the bit.
        counts = [int(b.shape[0]) for b in gt_boxes]
        return _targets_image_by_image(
            flat_boxes,
            flat_labels,
            counts,
            priors_cxcywh,
            priors_xyxy,
            iou_threshold,
            variances,
        )

    # Pad to [B, G_max]: padding objects are zero boxes with IoU 0 with everything.
    # They sit after the real objects, so they lose every tie (first maximum wins),
    # never reach the threshold (> 0) and claim nothing.  The IoU of the real objects is
    # spread out.
    boxes = torch.zeros(batch, g_max, 4, device=device, dtype=dtype)  # [B, G, 4]
    boxes[image, slot] = flat_boxes
    labels = torch.zeros(batch, g_max, dtype=torch.long, device=device)  # [B, G]
    labels[image, slot] = flat_labels
    iou = torch.zeros(batch, g_max, num_priors, device=device, dtype=dtype)  # [B, G, P]
    # [N, P]: the real objects only
    iou[image, slot] = _batched_iou(flat_boxes, priors_xyxy)

    # Forced matches, greedily as in match (padding objects, IoU 0 everywhere, never
    # take part), then each default box's object.
    # [B, P] each
    obj, positive = _assign_objects(iou, greedy_bipartite(iou), iou_threshold)
    out_labels = labels.gather(1, obj).masked_fill_(~positive, 0)  # [B, P]
    # [B, P]: row in [B * G]
    row = obj + g_max * torch.arange(batch, device=device)[:, None]
    matched = boxes.reshape(batch * g_max, 4)[row]  # [B, P, 4] xyxy
    # background rows (and the -inf that a zero-size padding box gives) become 0: the
    # offsets of a default box onto itself, which is what match + encode give them (up
    # to float noise)
    loc_targets = encode(matched, priors_cxcywh, variances)  # [B, P, 4]
    return loc_targets.masked_fill_(~positive[..., None], 0.0), out_labels
