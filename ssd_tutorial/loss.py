"""The multibox loss: how SSD scores its 8732 guesses against the matched targets.

paper p.5, eq. 1-3:

    L(x, c, l, g) = 1/N (L_conf(x, c) + alpha L_loc(x, l, g))

    L_loc  = sum over positives i, m in {cx, cy, w, h} of smooth_L1(l_i^m - g_hat_j^m)
    L_conf = - sum over positives log softmax(c_i)[p]
             - sum over negatives log softmax(c_i)[0]

where N is the number of matched (positive) default boxes, g_hat are the encoded offsets
of the matched ground truth (``matching.encode``) and, from p.6, the negatives are only
those kept by hard negative mining.  "If N = 0, we set the loss to 0" (p.5): with no
positive there is no loc term and, with the per-image 3:1 rule, no negative either, so
the sum is 0 and dividing by max(N, 1) gives exactly that.

Everything is batched tensor code with no host synchronisation (no ``.item()``, no
boolean indexing with data-dependent shapes, no loop over images): the training loop can
compile it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssd_tutorial.hard_negative_mining import hard_negative_mask, random_negative_mask
from ssd_tutorial.matching import VARIANCES, build_targets

__all__ = ["LossOutput", "NEGATIVE_MODES", "multibox_loss", "MultiboxLoss"]

NEGATIVE_MODES = ("hard", "all", "random")


class LossOutput(NamedTuple):
    """The loss and its two terms, each a 0-dim tensor already divided by N."""

    total: Tensor
    loc: Tensor
    conf: Tensor


def _check_shapes(
    loc: Tensor, conf_logits: Tensor, loc_targets: Tensor, labels: Tensor
) -> None:
    if loc.ndim != 3 or loc.shape[-1] != 4:
        raise ValueError(f"loc must have shape [B, P, 4], got {list(loc.shape)}")
    if loc_targets.shape != loc.shape:
        raise ValueError(
            f"loc_targets {list(loc_targets.shape)} must match loc {list(loc.shape)}"
        )
    if conf_logits.ndim != 3 or conf_logits.shape[:2] != loc.shape[:2]:
        raise ValueError(
            f"conf_logits must have shape [B, P, C] = {list(loc.shape[:2])} + [C], got "
            f"{list(conf_logits.shape)}"
        )
    if conf_logits.shape[-1] < 2:
        raise ValueError(
            "conf_logits needs at least 2 classes (background + 1), got "
            f"C={conf_logits.shape[-1]}"
        )
    if labels.shape != loc.shape[:2]:
        raise ValueError(
            f"labels must have shape [B, P] = {list(loc.shape[:2])}, got "
            f"{list(labels.shape)}"
        )
    if labels.dtype != torch.long:
        raise TypeError(
            f"labels must be torch.long (0 = background), got {labels.dtype}"
        )


def multibox_loss(
    loc: Tensor,
    conf_logits: Tensor,
    loc_targets: Tensor,
    labels: Tensor,
    neg_pos_ratio: float = 3,
    alpha: float = 1.0,
    negatives: Literal["hard", "all", "random"] = "hard",
    generator: torch.Generator | None = None,
) -> LossOutput:
    """SSD's loss on already matched targets (paper p.5, eq. 1-3; mining p.6).

    Args:
        loc: [B, P, 4] predicted offsets (encoded cx, cy, w, h relative to the priors).
        conf_logits: [B, P, C] class scores before softmax; class 0 is background.
        loc_targets: [B, P, 4] encoded offsets of the matched ground truth
            (``matching.encode``); only read at positives.
        labels: [B, P] long, matched class per default box, 0 = background; values must
        be < C.
        neg_pos_ratio: negatives kept per positive, per image (paper: 3).
        alpha: weight of the localization term (paper p.5: "set to 1 by cross
        validation").
        negatives: which negatives enter L_conf: ``"hard"`` (the paper's mining,
        default),
            ``"all"`` (every negative; no mining) or ``"random"`` (same counts as
            "hard", chosen at random with ``generator``) -- the last two exist for
            chapter 06's experiment.
        generator: random source for ``negatives="random"``.

    Returns:
        ``LossOutput(total, loc, conf)``: loc = sum of smooth-L1 (beta 1) over positives
        / N,
        conf = sum of cross-entropy over positives and kept negatives / N,
        total = conf + alpha * loc, N = positives in the whole batch, at least 1.
        Computed in float32 (float64 if the inputs are float64), even under autocast.
    """
    _check_shapes(loc, conf_logits, loc_targets, labels)
    if negatives not in NEGATIVE_MODES:
        raise ValueError(
            f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}"
        )
    # Losses are sums over thousands of boxes: do them in at least float32 whatever
    # autocast says.
    dtype = torch.promote_types(
        torch.promote_types(loc.dtype, conf_logits.dtype), torch.float32
    )
    with torch.autocast(device_type=loc.device.type, enabled=False):
        loc, loc_targets, conf_logits = (
            loc.to(dtype),
            loc_targets.to(dtype),
            conf_logits.to(dtype),
        )
        batch, num_priors, num_classes = conf_logits.shape
        positive = labels > 0  # [B, P]

        # L_loc (eq. 2): smooth L1 with beta = 1 on the 4 encoded offsets, positives
        # only.
        loc_per_prior = F.smooth_l1_loss(
            loc, loc_targets, reduction="none", beta=1.0
        ).sum(dim=-1)  # [B, P]
        loc_sum = torch.where(
            positive, loc_per_prior, torch.zeros_like(loc_per_prior)
        ).sum()

        # L_conf (eq. 3): softmax cross-entropy per default box.
        ce = F.cross_entropy(
            conf_logits.reshape(batch * num_priors, num_classes),  # [B*P, C]
            labels.reshape(batch * num_priors),  # [B*P]
            reduction="none",
        ).reshape(batch, num_priors)  # [B, P]
        if negatives == "hard":
            # [B, P]
            kept_negative = hard_negative_mask(ce.detach(), positive, neg_pos_ratio)
        elif negatives == "random":
            # [B, P]
            kept_negative = random_negative_mask(positive, neg_pos_ratio, generator)
        else:
            kept_negative = ~positive  # [B, P]
        in_conf = positive | kept_negative  # [B, P]
        conf_sum = torch.where(in_conf, ce, torch.zeros_like(ce)).sum()

        # paper p.5: divide by N, the number of matched default boxes (in the whole
        # batch, as the Caffe code's "VALID" normalization does); N = 0 gives a 0 loss
        # since both sums are 0.
        num_pos = positive.sum().clamp(min=1).to(dtype)
        loc_loss = loc_sum / num_pos
        conf_loss = conf_sum / num_pos
        return LossOutput(
            total=conf_loss + alpha * loc_loss, loc=loc_loss, conf=conf_loss
        )


class MultiboxLoss(nn.Module):
    """Matching + multibox loss in one module: what the training loop calls every step.

    ``forward(loc [B, P, 4], conf_logits [B, P, C], gt_boxes, gt_labels) -> LossOutput``
    where ``gt_boxes`` is a list of B tensors [G_i, 4] in normalized xyxy and
    ``gt_labels`` a list of B long tensors [G_i] (1-based classes).  Targets come from
    ``matching.build_targets`` with the priors held here (a non-persistent buffer: it
    follows ``.to(device)`` but is not saved in the state dict, since
    ``default_boxes()`` recreates it).
    """

    priors: Tensor

    def __init__(
        self,
        priors_cxcywh: Tensor,
        neg_pos_ratio: float = 3,
        alpha: float = 1.0,
        iou_threshold: float = 0.5,
        variances: tuple[float, float] = VARIANCES,
    ) -> None:
        super().__init__()
        if priors_cxcywh.ndim != 2 or priors_cxcywh.shape[-1] != 4:
            raise ValueError(
                f"priors_cxcywh must have shape [P, 4], got {list(priors_cxcywh.shape)}"
            )
        self.register_buffer(
            "priors", priors_cxcywh.detach().clone().float(), persistent=False
        )
        self.neg_pos_ratio = neg_pos_ratio
        self.alpha = alpha
        self.iou_threshold = iou_threshold
        self.variances = tuple(variances)

    def targets(
        self, gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Training targets for a batch with this loss's priors, threshold and
        variances: ``(loc_targets [B, P, 4] encoded, labels [B, P] long)``; no gradient
        flows through them."""
        with torch.no_grad():
            return build_targets(
                gt_boxes,
                gt_labels,
                self.priors,
                iou_threshold=self.iou_threshold,
                variances=self.variances,
            )

    def forward(
        self,
        loc: Tensor,
        conf_logits: Tensor,
        gt_boxes: list[Tensor],
        gt_labels: list[Tensor],
    ) -> LossOutput:
        if loc.shape[1] != self.priors.shape[0]:
            raise ValueError(
                f"loc has {loc.shape[1]} boxes per image but there are "
                f"{self.priors.shape[0]} priors"
            )
        if len(gt_boxes) != loc.shape[0] or len(gt_labels) != loc.shape[0]:
            raise ValueError(
                f"batch of {loc.shape[0]} predictions but {len(gt_boxes)} gt_boxes / "
                f"{len(gt_labels)} gt_labels"
            )
        loc_targets, labels = self.targets(gt_boxes, gt_labels)  # [B, P, 4], [B, P]
        return multibox_loss(
            loc, conf_logits, loc_targets, labels, self.neg_pos_ratio, self.alpha
        )

    def extra_repr(self) -> str:
        return (
            f"priors={self.priors.shape[0]}, neg_pos_ratio={self.neg_pos_ratio}, "
            f"alpha={self.alpha}, iou_threshold={self.iou_threshold}"
        )
