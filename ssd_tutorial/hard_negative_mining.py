"""Hard negative mining: which background boxes the classification loss is allowed to
see.

After matching, almost every one of the 8732 default boxes is background (label 0).
Training the classifier on all of them would drown the few positives in easy
"background" answers.  The paper keeps, per image, only the negatives the model
currently gets most wrong:

    paper p.6: "we sort them using the highest confidence loss for each default box and
    pick the top ones so that the ratio between the negatives and positives is at most
    3:1."

Rules implemented here (all vectorized over the batch, no Python loop over images, no
host synchronisation, so the functions can be captured by ``torch.compile`` / CUDA
graphs):

* per image, keep ``min(neg_pos_ratio * positives, negatives)`` negatives;
* positives are never selected;
* an image with no positive keeps no negative (3 x 0 = 0): the paper states the ratio
  per image, and the released Caffe code (``MineHardExamples``) applies it the same way;
* ties in the loss are broken by prior index: among equal losses the lower index is kept
  first (a stable sort), so the mask is deterministic on CPU and GPU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["negatives_per_image", "hard_negative_mask", "random_negative_mask"]


def _check_inputs(
    positive: Tensor, neg_pos_ratio: float, scores: Tensor | None = None
) -> None:
    if (
        not isinstance(positive, Tensor)
        or positive.dtype != torch.bool
        or positive.ndim != 2
    ):
        got = (
            f"{positive.dtype} {list(positive.shape)}"
            if isinstance(positive, Tensor)
            else type(positive).__name__
        )
        raise ValueError(f"positive must be a bool tensor [B, P], got {got}")
    if scores is not None and scores.shape != positive.shape:
        raise ValueError(
            f"conf_loss {list(scores.shape)} and positive {list(positive.shape)} must "
            "have the same shape [B, P]"
        )
    # math.isfinite also refuses inf, whose product with the count would not fit a long
    if not (math.isfinite(neg_pos_ratio) and neg_pos_ratio >= 0):
        raise ValueError(
            f"neg_pos_ratio must be a finite number >= 0, got {neg_pos_ratio}"
        )


def negatives_per_image(positive: Tensor, neg_pos_ratio: float = 3) -> Tensor:
    """How many negatives each image keeps: ``min(ratio x positives, negatives)``.

    ``positive`` [B, P] bool -> [B, 1] long.
    """
    _check_inputs(positive, neg_pos_ratio)
    num_pos = positive.sum(dim=1, keepdim=True)  # [B, 1]
    num_neg_available = positive.shape[1] - num_pos  # [B, 1]
    wanted = torch.floor(num_pos * float(neg_pos_ratio)).long()  # [B, 1]
    return torch.minimum(wanted, num_neg_available)


def _top_negatives(scores: Tensor, positive: Tensor, neg_pos_ratio: float) -> Tensor:
    """Keep, per image, the ``negatives_per_image`` negatives with the highest
    ``scores`` [B, P]."""
    num_keep = negatives_per_image(positive, neg_pos_ratio)  # [B, 1]
    # Positives go to the end of the ranking.  A stable descending sort ranks equal
    # scores by prior index (lower index first): deterministic ties.
    ranked = scores.detach().masked_fill(positive, float("-inf"))  # [B, P]
    order = ranked.sort(
        dim=1, descending=True, stable=True
    ).indices  # [B, P] prior index at each rank
    # [B, P]
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    # [B, P] rank of each prior
    rank = torch.empty_like(order).scatter_(1, order, positions)
    # num_keep <= negatives, so the kept ranks never reach a positive; "& ~positive"
    # only guards against a negative whose score is -inf tying with the positives.
    return (rank < num_keep) & ~positive


def hard_negative_mask(
    conf_loss: Tensor, positive: Tensor, neg_pos_ratio: float = 3
) -> Tensor:
    """The negatives the classification loss keeps: the hardest ones, at most ratio x
    positives per image.

    Args:
        conf_loss: [B, P] float, per-default-box confidence loss (cross-entropy against
        the
            matched label); only its order matters.  It is not differentiated through.
        positive: [B, P] bool, True where the default box was matched to an object.
        neg_pos_ratio: negatives kept per positive (paper p.6: 3).

    Returns:
        [B, P] bool, True for the kept negatives.  Per image exactly
        ``min(neg_pos_ratio * positives, negatives)`` are True, never a positive; ties
        in ``conf_loss`` keep the lower prior index.
    """
    _check_inputs(positive, neg_pos_ratio, conf_loss)
    return _top_negatives(conf_loss, positive, neg_pos_ratio)


def random_negative_mask(
    positive: Tensor, neg_pos_ratio: float = 3, generator: torch.Generator | None = None
) -> Tensor:
    """Same counts as :func:`hard_negative_mask`, but the negatives are chosen uniformly
    at random.

    Used by chapter 06's experiment as the control for mining.  ``positive`` [B, P] bool
    -> [B, P] bool.  Pass a ``torch.Generator`` for a reproducible choice; the random
    numbers are drawn on the generator's device and moved to ``positive``'s device.
    """
    _check_inputs(positive, neg_pos_ratio)
    gen_device = generator.device if generator is not None else positive.device
    # [B, P]
    scores = torch.rand(positive.shape, generator=generator, device=gen_device).to(
        positive.device
    )
    return _top_negatives(scores, positive, neg_pos_ratio)
