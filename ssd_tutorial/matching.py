"""Matching: which default box answers for which object, and what it must predict.

Three steps turn an image's objects into training targets for the 8732 default boxes:

1. ``match``  -- every object takes its best default box (forced, whatever the overlap), then every
   other default box takes the object it overlaps most if IoU >= threshold; the rest are
   background (label 0).
2. ``encode`` -- each matched box becomes four offsets relative to its default box, scaled by the
   variances (0.1, 0.2).  ``decode`` turns offsets back into boxes.
3. ``build_targets`` -- steps 1 and 2 for a whole batch at once, with no Python loop over objects
   or default boxes, so it runs on the GPU beside the model.

Tie rules (shared by ``match`` and ``build_targets``, which agree exactly):

* an object whose IoU with several default boxes is equally best takes the one with the lowest
  index (the first in ``default_boxes`` order);
* a default box that overlaps several objects equally takes the object with the lowest index;
* when several objects have the same best default box, the box goes to the object that overlaps
  it most (lowest index on an exact tie).  The other objects keep only their matches above the
  threshold -- they can end with none.  It needs two objects that nearly coincide, which is rare.
  (torchvision and ssd.pytorch let the object written last win, so their result depends on the
  order of the annotations; Caffe SSD matches greedily, best pair first, and gives the loser its
  next-best box.)
* an object that overlaps no default box at all (IoU 0 everywhere, e.g. zero area) forces nothing.

Boxes of objects are normalized ``xyxy``; default boxes (priors) are normalized ``cxcywh``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ssd_tutorial.boxes import box_iou, check_boxes, cxcywh_to_xyxy, xyxy_to_cxcywh

__all__ = ["VARIANCES", "match", "encode", "decode", "build_targets"]

# Caffe SSD: the released code divides the centre offsets by 0.1 and the log-size offsets by 0.2
# ("variances").  The paper's equation 2 has no such factors.
VARIANCES: tuple[float, float] = (0.1, 0.2)


def _check_variances(variances: Sequence[float]) -> tuple[float, float]:
    if len(variances) != 2 or not all(v > 0 for v in variances):
        raise ValueError(f"variances must be two positive numbers (centre, size), got {tuple(variances)}")
    return float(variances[0]), float(variances[1])


def _check_threshold(iou_threshold: float) -> None:
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")


def _check_objects(gt_xyxy: Tensor, gt_labels: Tensor, where: str = "") -> None:
    check_boxes(gt_xyxy, f"gt_xyxy{where}", require_ordered=True)
    if gt_xyxy.ndim != 2:
        raise ValueError(f"gt_xyxy{where} must have shape [G, 4], got {list(gt_xyxy.shape)}")
    if not isinstance(gt_labels, Tensor) or gt_labels.shape != gt_xyxy.shape[:1]:
        shape = list(gt_labels.shape) if isinstance(gt_labels, Tensor) else type(gt_labels).__name__
        raise ValueError(f"gt_labels{where} must be a tensor of shape [{gt_xyxy.shape[0]}], got {shape}")
    if gt_labels.is_floating_point() or gt_labels.dtype == torch.bool:
        raise TypeError(f"gt_labels{where} must be an integer tensor, got {gt_labels.dtype}")


def _check_priors(priors_cxcywh: Tensor) -> None:
    check_boxes(priors_cxcywh, "priors_cxcywh")
    if priors_cxcywh.ndim != 2 or priors_cxcywh.shape[0] == 0:
        raise ValueError(f"priors_cxcywh must have shape [P, 4] with P > 0, got {list(priors_cxcywh.shape)}")


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
        iou_threshold: a default box that is no object's best box is positive when its IoU with
            some object is at least this (paper p.5: "higher than a threshold (0.5)").

    Returns:
        ``matched_xyxy [P, 4]`` normalized xyxy: the object box of each positive default box; a
        background default box holds itself, so that its encoded offsets are 0, never inf.
        ``labels [P]`` long: the object's label, or 0 for background.

    See the module docstring for the tie rules.
    """
    _check_objects(gt_xyxy, gt_labels)
    _check_priors(priors_cxcywh)
    _check_threshold(iou_threshold)
    if gt_labels.numel() and int(gt_labels.min()) < 1:
        raise ValueError(
            f"gt_labels must be >= 1 (0 means background), got {sorted(set(gt_labels.tolist()))}"
        )
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)  # [P, 4]
    num_priors = priors_xyxy.shape[0]
    labels = torch.zeros(num_priors, dtype=torch.long, device=priors_xyxy.device)
    if gt_xyxy.shape[0] == 0:  # an image without objects: all background
        return priors_xyxy.clone(), labels
    gt_xyxy = gt_xyxy.to(priors_xyxy)

    iou = box_iou(gt_xyxy, priors_xyxy)  # [G, P]
    # torch.max along a dim returns the first of equal maxima (documented): lowest index wins.
    best_obj_iou, best_obj = iou.max(dim=0)  # [P]: each default box's best object
    best_prior_iou, best_prior = iou.max(dim=1)  # [G]: each object's best default box

    # Forced matches (paper p.5: "match each ground truth box to the default box with the best
    # jaccard overlap").  One object at a time, in index order; a later object takes a box
    # already forced only if it overlaps it strictly more.
    forced_obj = torch.full((num_priors,), -1, dtype=torch.long, device=iou.device)  # [P]
    forced_iou = torch.zeros(num_priors, dtype=iou.dtype, device=iou.device)  # [P]
    for g, p in enumerate(best_prior.tolist()):
        if iou[g, p] > forced_iou[p]:  # IoU 0 (the object overlaps nothing) forces nothing
            forced_obj[p] = g
            forced_iou[p] = iou[g, p]

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

    ``matched_xyxy [..., P, 4]`` normalized xyxy, ``priors_cxcywh [P, 4]`` -> ``[..., P, 4]``:

        t_cx = (g_cx - d_cx) / (v0 * d_w)     t_w = log(g_w / d_w) / v1
        t_cy = (g_cy - d_cy) / (v0 * d_h)     t_h = log(g_h / d_h) / v1

    (paper p.5, eq. 2, with the variances v = (0.1, 0.2) of the released code).  A zero-width
    matched box gives -inf; ``match`` never hands one to a positive box unless the object itself
    has zero width.
    """
    v_centre, v_size = _check_variances(variances)
    check_boxes(matched_xyxy, "matched_xyxy")
    _check_priors(priors_cxcywh)
    if matched_xyxy.shape[-2] != priors_cxcywh.shape[0]:
        raise ValueError(
            f"matched_xyxy has {matched_xyxy.shape[-2]} boxes but there are {priors_cxcywh.shape[0]} priors"
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

    ``offsets [..., P, 4]`` (e.g. the model's ``loc [B, P, 4]``), ``priors_cxcywh [P, 4]``
    -> ``[..., P, 4]`` normalized xyxy.
    """
    v_centre, v_size = _check_variances(variances)
    if not isinstance(offsets, Tensor) or offsets.ndim < 2 or offsets.shape[-1] != 4:
        shape = list(offsets.shape) if isinstance(offsets, Tensor) else type(offsets).__name__
        raise ValueError(f"offsets must have shape [..., P, 4], got {shape}")
    _check_priors(priors_cxcywh)
    if offsets.shape[-2] != priors_cxcywh.shape[0]:
        raise ValueError(f"offsets have {offsets.shape[-2]} boxes but there are {priors_cxcywh.shape[0]} priors")
    d = priors_cxcywh.to(offsets)  # [P, 4]
    centre = d[:, :2] + offsets[..., :2] * v_centre * d[:, 2:]  # [..., P, 2]
    size = d[:, 2:] * torch.exp(offsets[..., 2:] * v_size)  # [..., P, 2]
    return cxcywh_to_xyxy(torch.cat((centre, size), dim=-1))


def _flatten_objects(
    gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """All objects of the batch in one list, and where each goes in a ``[B, G_max]`` grid.

    Returns boxes ``[N, 4]``, labels ``[N]`` long, ``image [N]`` and ``slot [N]`` (the object's
    image and its index there), and G_max (at least 1, so the object axis is never empty).
    The counts come from the tensors' shapes: nothing waits for the device.
    """
    counts = [int(b.shape[0]) for b in gt_boxes]
    boxes = torch.cat([b.reshape(-1, 4) for b in gt_boxes]).to(device=device, dtype=dtype)  # [N, 4]
    labels = torch.cat([lab.reshape(-1) for lab in gt_labels]).to(device=device, dtype=torch.long)  # [N]
    # Built from the Python counts (known on the host) rather than with repeat_interleave on
    # tensors: that keeps the step free of data-dependent ops, so torch.compile sees one graph.
    image = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)], dtype=torch.long)  # [N]
    slot = torch.tensor([j for c in counts for j in range(c)], dtype=torch.long)  # [N]
    return boxes, labels, image.to(device), slot.to(device), max([1] + counts)


def _batched_iou(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """IoU of ``a [..., G, 4]`` with ``b [P, 4]`` (both xyxy) -> ``[..., G, P]``.

    Works coordinate by coordinate on ``[..., G, P]`` tensors, in place where it can (this is the
    costliest step of ``build_targets``).  The union is at least the area of the ``b`` box, so
    ``b`` boxes of positive area (default boxes) never divide by 0.
    """
    ax1, ay1, ax2, ay2 = (t[..., None] for t in a_xyxy.unbind(-1))  # [..., G, 1] each
    bx1, by1, bx2, by2 = b_xyxy.unbind(-1)  # [P] each
    width = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)  # [..., G, P]
    height = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0)  # [..., G, P]
    inter = width.mul_(height)  # [..., G, P]
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)  # [..., G, 1]
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)  # [P]
    union = (area_a + area_b).sub_(inter).clamp_(min=torch.finfo(inter.dtype).tiny)  # [..., G, P]
    return inter.div_(union)


def build_targets(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    priors_cxcywh: Tensor,
    iou_threshold: float = 0.5,
    variances: Sequence[float] = VARIANCES,
) -> tuple[Tensor, Tensor]:
    """Training targets for a batch: ``match`` + ``encode`` for every image at once.

    Args:
        gt_boxes: B tensors ``[G_i, 4]`` normalized xyxy (G_i may be 0).
        gt_labels: B integer tensors ``[G_i]`` with labels >= 1.
        priors_cxcywh: ``[P, 4]`` normalized cxcywh; the work runs on its device.

    Returns:
        ``loc_targets [B, P, 4]`` (offsets as :func:`encode`; 0 for background boxes) and
        ``labels [B, P]`` long (0 = background), equal to running :func:`match` and
        :func:`encode` image by image.

    No Python loop touches objects or default boxes: objects are padded to G_max with a validity
    mask, and the forced matches are written with ``scatter_reduce`` (max of IoU, then min of
    object index among the equals), which is deterministic on every device.  Label values are
    not checked here (that would wait for the GPU); ``match`` checks them.
    """
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"gt_boxes has {len(gt_boxes)} images but gt_labels has {len(gt_labels)}")
    if len(gt_boxes) == 0:
        raise ValueError("build_targets needs at least one image")
    _check_priors(priors_cxcywh)
    _check_threshold(iou_threshold)
    for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):
        check_boxes(b, f"gt_boxes[{i}]")
        if b.ndim != 2 or not isinstance(lab, Tensor) or lab.shape != b.shape[:1]:
            raise ValueError(
                f"image {i}: gt_boxes must be [G, 4] and gt_labels [G], got {list(b.shape)} and "
                f"{list(lab.shape) if isinstance(lab, Tensor) else type(lab).__name__}"
            )
        if lab.is_floating_point() or lab.dtype == torch.bool:  # a dtype check: no device sync
            raise TypeError(f"image {i}: gt_labels must be an integer tensor, got {lab.dtype}")
    device, dtype = priors_cxcywh.device, priors_cxcywh.dtype
    flat_boxes, flat_labels, image, slot, g_max = _flatten_objects(gt_boxes, gt_labels, device, dtype)
    batch, num_priors = len(gt_boxes), priors_cxcywh.shape[0]
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)  # [P, 4]

    # Pad to [B, G_max]: padding objects are zero boxes with IoU 0 with everything.  They sit after
    # the real objects, so they lose every tie (first maximum wins), never reach the threshold
    # (> 0) and claim nothing.  The IoU is computed for the real objects only, then spread out.
    boxes = torch.zeros(batch, g_max, 4, device=device, dtype=dtype)  # [B, G, 4]
    boxes[image, slot] = flat_boxes
    labels = torch.zeros(batch, g_max, dtype=torch.long, device=device)  # [B, G]
    labels[image, slot] = flat_labels
    valid = torch.zeros(batch, g_max, dtype=torch.bool, device=device)  # [B, G]
    valid[image, slot] = True
    flat_iou = _batched_iou(flat_boxes, priors_xyxy)  # [N, P]
    iou = torch.zeros(batch, g_max, num_priors, device=device, dtype=dtype)  # [B, G, P]
    iou[image, slot] = flat_iou

    # torch.max along a dim returns the first of equal maxima: lowest index wins, as in match.
    best_obj_iou, best_obj = iou.max(dim=1)  # [B, P]: each default box's best object
    flat_best_iou, flat_best_prior = flat_iou.max(dim=1)  # [N]: each object's best default box
    best_prior_iou = torch.zeros(batch, g_max, device=device, dtype=dtype)  # [B, G]
    best_prior_iou[image, slot] = flat_best_iou
    best_prior = torch.zeros(batch, g_max, dtype=torch.long, device=device)  # [B, G]
    best_prior[image, slot] = flat_best_prior

    # Forced matches.  Objects that claim nothing (padding, or IoU 0 everywhere) send their claim
    # to a dummy column P that is dropped afterwards.
    claims = valid & (best_prior_iou > 0)  # [B, G]
    target_col = torch.where(claims, best_prior, num_priors)  # [B, G]
    claim_iou = torch.where(claims, best_prior_iou, torch.zeros_like(best_prior_iou))  # [B, G]
    strongest = torch.zeros(batch, num_priors + 1, device=device, dtype=iou.dtype)  # [B, P+1]
    strongest = strongest.scatter_reduce(1, target_col, claim_iou, reduce="amax", include_self=True)
    # among the objects whose claim equals the strongest on their box, the lowest index wins
    is_winner = claims & (claim_iou == strongest.gather(1, target_col))  # [B, G]
    object_index = torch.arange(g_max, device=device).expand(batch, g_max)  # [B, G]
    candidate = torch.where(is_winner, object_index, g_max)  # [B, G]
    winner = torch.full((batch, num_priors + 1), g_max, dtype=torch.long, device=device)  # [B, P+1]
    winner = winner.scatter_reduce(1, target_col, candidate, reduce="amin", include_self=True)
    winner = winner[:, :num_priors]  # [B, P]; g_max where nothing was forced

    forced = winner < g_max  # [B, P]
    obj = torch.where(forced, winner, best_obj)  # [B, P]
    positive = forced | (best_obj_iou >= iou_threshold)  # [B, P]
    out_labels = labels.gather(1, obj).masked_fill_(~positive, 0)  # [B, P]
    row = obj + g_max * torch.arange(batch, device=device)[:, None]  # [B, P]: row in [B * G]
    matched = boxes.reshape(batch * g_max, 4)[row]  # [B, P, 4] xyxy
    # background rows (and the -inf that a zero-size padding box gives) become 0: the offsets of
    # a default box onto itself, which is what match + encode give them (up to float noise)
    loc_targets = encode(matched, priors_cxcywh, variances)  # [B, P, 4]
    return loc_targets.masked_fill_(~positive[..., None], 0.0), out_labels
