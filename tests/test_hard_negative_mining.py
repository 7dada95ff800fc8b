"""Hard negative mining: counts, exclusion of positives, hardness, ties, and a numpy
reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_tutorial.hard_negative_mining import (
    hard_negative_mask,
    negatives_per_image,
    random_negative_mask,
)


def numpy_hard_negatives(
    conf_loss: np.ndarray, positive: np.ndarray, ratio: float
) -> np.ndarray:
    """Independent reference: one image at a time, stable sort of the negatives by
    -loss."""
    keep = np.zeros_like(positive)
    for b in range(conf_loss.shape[0]):
        negatives = np.flatnonzero(~positive[b])
        count = min(int(np.floor(ratio * positive[b].sum())), negatives.size)
        order = np.argsort(-conf_loss[b, negatives], kind="stable")
        keep[b, negatives[order[:count]]] = True
    return keep


def test_hand_worked_case_with_ties() -> None:
    # Image 0: one positive (prior 1, whose huge loss must be ignored) -> keep 3
    # negatives.
    # Negative losses: 0.5, 0.1, 0.7, 0.9, 0.7, 0.2, 0.7 at priors 0, 2, 3, 4, 5, 6, 7.
    # Hardest is prior 4 (0.9); then three priors tie at 0.7 (3, 5, 7) for two places:
    # the lower indices 3 and 5 win.
    # Image 1: no positive -> no negative at all, although its losses are large.
    conf_loss = torch.tensor(
        [
            [0.5, 9.0, 0.1, 0.7, 0.9, 0.7, 0.2, 0.7],
            [5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 2.0, 3.0],
        ]
    )
    positive = torch.zeros(2, 8, dtype=torch.bool)
    positive[0, 1] = True
    mask = hard_negative_mask(conf_loss, positive, neg_pos_ratio=3)
    expected = torch.zeros(2, 8, dtype=torch.bool)
    expected[0, [3, 4, 5]] = True
    assert torch.equal(mask, expected)


def test_count_is_capped_by_available_negatives() -> None:
    # 3 positives out of 5 priors: 3 x 3 = 9 wanted, only 2 negatives exist -> both,
    # nothing else.
    positive = torch.tensor([[True, False, True, True, False]])
    conf_loss = torch.tensor([[1.0, 0.2, 3.0, 4.0, 0.1]])
    mask = hard_negative_mask(conf_loss, positive)
    assert mask.tolist() == [[False, True, False, False, True]]
    assert negatives_per_image(positive).tolist() == [[2]]


def test_fractional_ratio_rounds_down() -> None:
    positive = torch.tensor([[True, True, True] + [False] * 10])
    # 1.5 x 3 = 4.5 -> 4
    assert negatives_per_image(positive, neg_pos_ratio=1.5).tolist() == [[4]]
    assert negatives_per_image(positive, neg_pos_ratio=0).tolist() == [[0]]


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 4),
    priors=st.integers(1, 40),
    ratio=st.sampled_from([0, 1, 2.5, 3, 7]),
    seed=st.integers(0, 2**31 - 1),
    tie_levels=st.integers(1, 6),
)
def test_matches_numpy_reference_and_properties(
    batch, priors, ratio, seed, tie_levels
) -> None:
    rng = np.random.default_rng(seed)
    # Few distinct loss values -> many ties, so the tie rule is exercised too.
    conf_loss = rng.integers(0, tie_levels, size=(batch, priors)).astype(np.float32)
    positive = rng.random((batch, priors)) < rng.uniform(0, 0.5)
    mask = hard_negative_mask(
        torch.from_numpy(conf_loss), torch.from_numpy(positive), ratio
    ).numpy()

    np.testing.assert_array_equal(
        mask, numpy_hard_negatives(conf_loss, positive, ratio)
    )
    num_pos = positive.sum(1)
    expected_counts = np.minimum(
        np.floor(ratio * num_pos).astype(int), priors - num_pos
    )
    np.testing.assert_array_equal(mask.sum(1), expected_counts)
    assert not (mask & positive).any(), "a positive was selected as a negative"
    for b in range(batch):
        kept, left = conf_loss[b, mask[b]], conf_loss[b, ~mask[b] & ~positive[b]]
        if kept.size and left.size:
            assert kept.min() >= left.max(), "a harder negative was left out"


def test_random_mask_same_counts_reproducible_and_not_hardest() -> None:
    g = torch.Generator().manual_seed(0)
    positive = torch.rand(4, 500, generator=g) < 0.02
    positive[2] = False  # an image without positives
    # hardest = highest index
    conf_loss = torch.arange(500, dtype=torch.float32).expand(4, 500)

    mask_a = random_negative_mask(positive, 3, torch.Generator().manual_seed(1))
    mask_b = random_negative_mask(positive, 3, torch.Generator().manual_seed(1))
    mask_c = random_negative_mask(positive, 3, torch.Generator().manual_seed(2))
    hard = hard_negative_mask(conf_loss, positive, 3)

    assert torch.equal(mask_a, mask_b)
    assert not torch.equal(mask_a, mask_c)
    assert torch.equal(mask_a.sum(1), hard.sum(1))
    assert mask_a[2].sum() == 0
    assert not (mask_a & positive).any()
    assert not torch.equal(mask_a, hard)


def test_no_grad_through_mask_and_dtype() -> None:
    conf_loss = torch.rand(2, 10, requires_grad=True)
    positive = torch.zeros(2, 10, dtype=torch.bool)
    positive[:, 0] = True
    mask = hard_negative_mask(conf_loss, positive, 3)
    assert mask.dtype == torch.bool and not mask.requires_grad
    assert mask.sum().item() == 6


def test_compiles_without_graph_breaks() -> None:
    # fullgraph=True fails on any graph break, e.g. a .item() or a data-dependent shape.
    compiled = torch.compile(hard_negative_mask, fullgraph=True, backend="eager")
    conf_loss = torch.rand(3, 50)
    positive = torch.rand(3, 50) < 0.1
    assert torch.equal(
        compiled(conf_loss, positive, 3), hard_negative_mask(conf_loss, positive, 3)
    )


@pytest.mark.parametrize(
    "conf_loss, positive, ratio, message",
    [
        (torch.rand(2, 5), torch.zeros(2, 5), 3, "bool"),
        (torch.rand(2, 5), torch.zeros(5, dtype=torch.bool), 3, r"\[B, P\]"),
        (torch.rand(2, 4), torch.zeros(2, 5, dtype=torch.bool), 3, "same shape"),
        (torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.bool), -1, "neg_pos_ratio"),
        # inf * positives cast to long used to wrap to -2**63: silently no negative at
        # all
        (torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.bool), float("inf"), "finite"),
        (
            torch.rand(2, 5),
            torch.zeros(2, 5, dtype=torch.bool),
            float("nan"),
            "neg_pos_ratio",
        ),
    ],
)
def test_bad_input(conf_loss, positive, ratio, message) -> None:
    with pytest.raises(ValueError, match=message):
        hard_negative_mask(conf_loss, positive, ratio)
