"""Tests for ssd_tutorial.matching: hand-worked cases, tie rules, torchvision parity,
batching."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder, SSDMatcher
from torchvision.ops import box_iou as tv_box_iou

from ssd_tutorial.boxes import cxcywh_to_xyxy
from ssd_tutorial.default_boxes import default_boxes
from ssd_tutorial.matching import build_targets, decode, encode, greedy_bipartite, match

PRIORS = default_boxes()  # [8732, 4] cxcywh

# Five default boxes (cxcywh) and two objects (xyxy), worked by hand in
# test_hand_worked_match.
HAND_PRIORS = torch.tensor(
    [
        [0.25, 0.25, 0.5, 0.5],  # p0: xyxy (0, 0, .5, .5)
        [0.75, 0.75, 0.5, 0.5],  # p1: (.5, .5, 1, 1)
        [0.30, 0.25, 0.5, 0.5],  # p2: (.05, 0, .55, .5)
        [0.50, 0.50, 0.2, 0.2],  # p3: (.4, .4, .6, .6)
        [0.75, 0.25, 0.5, 0.5],  # p4: (.5, 0, 1, .5)
    ]
)
# A (label 3), B (label 7)
HAND_GT = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.45, 0.45, 0.55, 0.55]])
HAND_LABELS = torch.tensor([3, 7])


def random_scene(
    gen: torch.Generator, num_objects: int, grid: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_objects`` boxes inside the unit square (xyxy) with labels 1..20.

    With ``grid`` the corners snap to multiples of 1/grid, which makes exact IoU ties
    (shared best boxes, identical objects) common.
    """
    corners = torch.rand(num_objects, 2, 2, generator=gen)  # [G, 2 points, (x, y)]
    if grid:
        corners = (corners * grid).round() / grid
    low = corners.min(dim=1).values  # [G, 2]
    high = corners.max(dim=1).values  # [G, 2]
    high = torch.maximum(high, low + 0.02)  # at least a sliver of area
    boxes = torch.cat((low, high.clamp(max=1.0)), dim=1)  # [G, 4]
    boxes[:, :2] = torch.minimum(boxes[:, :2], boxes[:, 2:] - 0.02)
    labels = torch.randint(1, 21, (num_objects,), generator=gen)
    return boxes, labels


# -----------------------------------------------------------------------------
# hand-worked
def test_hand_worked_match():
    # IoU by hand: A is p0 exactly (1.0); A with p2: overlap 0.45 x 0.5 = 0.225 over
    # 0.25 + 0.25 - 0.225 = 0.275 -> 0.818 >= 0.5; A with p3: 0.01 / 0.28 = 0.036.
    # B (0.1 x 0.1) lies inside p3 (0.2 x 0.2): IoU 0.01 / 0.04 = 0.25 < 0.5, but p3 is
    # B's best box (its IoU with p0, p1, p4 is 0.0025 / 0.2575 = 0.0097, with p2 0.005 /
    # 0.255 = 0.0196), so p3 is forced to B.  p1 and p4 overlap nothing enough:
    # background.
    matched, labels = match(HAND_GT, HAND_LABELS, HAND_PRIORS)
    assert labels.tolist() == [3, 0, 3, 7, 0]
    assert torch.equal(matched[0], HAND_GT[0])
    assert torch.equal(matched[2], HAND_GT[0])
    assert torch.equal(matched[3], HAND_GT[1])
    # background boxes hold themselves, so their offsets are 0
    assert torch.allclose(matched[[1, 4]], cxcywh_to_xyxy(HAND_PRIORS[[1, 4]]))

    offsets = encode(matched, HAND_PRIORS)
    # p2 -> A: centres 0.25 vs 0.30, width 0.5: (0.25 - 0.30) / (0.1 * 0.5) = -1; same
    # size -> 0
    assert torch.allclose(offsets[2], torch.tensor([-1.0, 0.0, 0.0, 0.0]), atol=1e-6)
    # p3 -> B: same centre; size 0.1 vs 0.2: log(0.5) / 0.2 = -3.4657
    assert torch.allclose(
        offsets[3], torch.tensor([0.0, 0.0, -3.4657359, -3.4657359]), atol=1e-5
    )
    assert torch.allclose(offsets[[0, 1, 4]], torch.zeros(3, 4), atol=1e-6)


def test_threshold_is_inclusive_and_adjustable():
    # A with p2 has IoU 0.2250 / 0.2750 = 9/11 = 0.8182: positive at 0.8182, not at 0.82
    _, labels = match(HAND_GT, HAND_LABELS, HAND_PRIORS, iou_threshold=9 / 11 - 1e-6)
    assert labels[2] == 3
    _, labels = match(HAND_GT, HAND_LABELS, HAND_PRIORS, iou_threshold=0.82)
    # the forced matches stay whatever the threshold
    assert labels.tolist() == [
        3,
        0,
        0,
        7,
        0,
    ]


def test_image_without_objects_is_all_background():
    matched, labels = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), PRIORS)
    assert (
        labels.shape == (8732,)
        and labels.dtype == torch.long
        and int(labels.sum()) == 0
    )
    assert torch.allclose(encode(matched, PRIORS), torch.zeros(8732, 4), atol=1e-5)
    loc, lab = build_targets(
        [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], PRIORS
    )
    assert loc.shape == (1, 8732, 4) and int(lab.abs().sum()) == 0
    assert torch.allclose(loc, torch.zeros(1, 8732, 4), atol=1e-5)


@pytest.mark.parametrize("size_px", [1.0, 2.0, 5.0])
def test_object_smaller_than_every_box_still_gets_one(size_px: float):
    # the smallest default box is 30 px (21 px for its 2:1 form); a 1..5 px object is
    # below the 0.5 threshold with every box, so only the forced match can give it a
    # positive
    side = size_px / 300
    gt = torch.tensor([[0.40, 0.52, 0.40 + side, 0.52 + side]])
    iou = tv_box_iou(gt, cxcywh_to_xyxy(PRIORS))[0]
    assert float(iou.max()) < 0.5
    _, labels = match(gt, torch.tensor([5]), PRIORS)
    assert int((labels == 5).sum()) == 1
    assert int(labels.nonzero()[0, 0]) == int(iou.argmax())


def test_number_of_positives_grows_with_object_size():
    counts = []
    for side in (0.05, 0.2, 0.6):
        gt = torch.tensor(
            [[0.5 - side / 2, 0.5 - side / 2, 0.5 + side / 2, 0.5 + side / 2]]
        )
        counts.append(int((match(gt, torch.tensor([1]), PRIORS)[1] > 0).sum()))
    assert counts[0] < counts[1] < counts[2], counts


# ---------------------------------------------------------------------------- tie rules
def test_shared_best_box_goes_to_the_object_overlapping_it_most():
    # Both objects' best box is p3 (0.4..0.6): B covers 0.01 of it (IoU 0.25), C covers
    # 0.4..0.58 x 0.4..0.58 = 0.0324 (IoU 0.81).  C wins p3 whatever the order; B, as in
    # Caffe, takes its next-best box, p1 (0.5..1: overlap 0.05 x 0.05, IoU 0.0025 /
    # 0.2575 = 0.0097).
    b = torch.tensor([0.45, 0.45, 0.55, 0.55])
    c = torch.tensor([0.40, 0.40, 0.58, 0.58])
    priors = HAND_PRIORS[[3, 1]]  # only p3 and a far-away box
    for gt, labels in (
        (torch.stack((b, c)), torch.tensor([7, 9])),
        (torch.stack((c, b)), torch.tensor([9, 7])),
    ):
        _, out = match(gt, labels, priors)
        assert out.tolist() == [9, 7]
        _, batched = build_targets([gt], [labels], priors)
        assert batched[0].tolist() == [9, 7]


def test_exact_tie_goes_to_the_lower_index():
    # the same box twice
    gt = torch.tensor([[0.45, 0.45, 0.55, 0.55], [0.45, 0.45, 0.55, 0.55]])
    labels = torch.tensor([4, 6])
    # both want p3 (IoU 0.25): object 0 takes it; object 1 its next best, p2 (IoU
    # 0.0196)
    _, out = match(gt, labels, HAND_PRIORS)
    assert out.tolist() == [0, 0, 6, 4, 0]
    _, batched = build_targets([gt], [labels], HAND_PRIORS)
    assert batched[0].tolist() == [0, 0, 6, 4, 0]


def caffe_bipartite(iou: list[list[float]]) -> dict[int, int]:
    """Caffe SSD's bipartite matching (bbox_util.cpp, MatchBBox), re-written from its
    loop: while objects are left, scan default boxes i, then objects j, keep the first
    strictly larger overlap (only overlaps > 1e-6 are stored), match that pair, drop
    both.  -> {prior: object}."""
    num_objects, num_priors = len(iou), len(iou[0])
    objects_left, matched = list(range(num_objects)), {}
    while objects_left:
        best, best_i, best_j = -1.0, -1, -1
        for i in range(num_priors):
            if i in matched:
                continue
            for j in objects_left:
                if iou[j][i] > 1e-6 and iou[j][i] > best:
                    best, best_i, best_j = iou[j][i], i, j
        if best_i < 0:
            break
        matched[best_i] = best_j
        objects_left.remove(best_j)
    return matched


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_objects=st.integers(1, 7),
    grid=st.sampled_from([None, 4, 8]),
)
def test_forced_matches_are_caffes_bipartite_matching(
    seed: int, num_objects: int, grid
):
    """On crowded scenes with shared best boxes and exact ties, the forced matches are
    the pairs of Caffe's loop, and every object that overlaps some default box has a
    positive."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, PRIORS.shape[0], (60,), generator=gen)
    priors = PRIORS[idx.unique()]  # few default boxes: objects must compete for them
    gt, labels = random_scene(gen, num_objects, grid)
    iou = tv_box_iou(gt, cxcywh_to_xyxy(priors))  # [G, P]
    expected = caffe_bipartite(iou.tolist())
    forced = greedy_bipartite(iou[None])[0]
    assert {p: g for p, g in enumerate(forced.tolist()) if g >= 0} == expected
    # the threshold adds ~nothing
    matched, out = match(gt, labels, priors, iou_threshold=0.99)
    for p, g in expected.items():
        assert out[p] == labels[g] and torch.equal(matched[p], gt[g])
    # an object left out is one whose every overlapping default box went to another
    # object
    for g in set(range(num_objects)) - set(expected.values()):
        assert set((iou[g] > 1e-6).nonzero().flatten().tolist()) <= set(expected)


def test_no_object_of_a_crowded_batch_is_left_without_a_positive():
    """Small objects that nearly coincide (a flock, a crowd) share best default boxes;
    each must still end with a positive of its own, in match and in build_targets."""
    gen = torch.Generator().manual_seed(7)
    scenes = []
    for _ in range(4):
        centre = 0.2 + 0.6 * torch.rand(2, generator=gen)
        # 8 objects about 4 px apart
        centres = centre + 0.004 * torch.randn(8, 2, generator=gen)
        # 12-15 px objects on a 300 px image
        half = 0.02 + 0.005 * torch.rand(8, 2, generator=gen)
        # label = object
        scenes.append(
            (torch.cat((centres - half, centres + half), 1), torch.arange(1, 9))
        )
    _, batched = build_targets([s[0] for s in scenes], [s[1] for s in scenes], PRIORS)
    priors_xyxy = cxcywh_to_xyxy(PRIORS)
    for (gt, labels), row in zip(scenes, batched):
        # shared best boxes
        assert tv_box_iou(gt, priors_xyxy).argmax(dim=1).unique().numel() < len(gt)
        _, out = match(gt, labels, PRIORS)
        assert torch.equal(out, row)
        # every object is somewhere
        assert sorted(out[out > 0].unique().tolist()) == labels.tolist()


def test_object_overlapping_nothing_forces_nothing():
    gt = torch.tensor([[0.3, 0.3, 0.3, 0.3]])  # zero area: IoU 0 with every box
    _, labels = match(gt, torch.tensor([2]), HAND_PRIORS)
    assert int(labels.abs().sum()) == 0
    _, batched = build_targets([gt], [torch.tensor([2])], HAND_PRIORS)
    assert int(batched.abs().sum()) == 0


# -------------------------------------------------------------- parity with torchvision
def torchvision_targets(
    gt: torch.Tensor, labels: torch.Tensor, priors_cxcywh: torch.Tensor
):
    """What torchvision's SSD.compute_loss builds for one image (SSDMatcher +
    BoxCoder(10, 10, 5, 5))."""
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)
    matcher = SSDMatcher(0.5)
    # 1 / variances (0.1, 0.1, 0.2, 0.2)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    matches = matcher(tv_box_iou(gt, priors_xyxy))  # [P], -1 = background
    foreground = matches >= 0
    out_labels = torch.zeros(priors_xyxy.shape[0], dtype=torch.long)
    out_labels[foreground] = labels[matches[foreground]]
    offsets = coder.encode_single(gt[matches.clamp(min=0)], priors_xyxy)  # [P, 4]
    return offsets, out_labels, foreground


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_objects=st.integers(1, 8))
def test_match_and_encode_agree_with_torchvision(seed: int, num_objects: int):
    gen = torch.Generator().manual_seed(seed)
    gt, labels = random_scene(gen, num_objects)
    # torchvision lets the last object win a shared best box, we let the one overlapping
    # it most:
    # compare only scenes where every object has its own best box (random real-valued
    # boxes almost never tie exactly otherwise).
    best = tv_box_iou(gt, cxcywh_to_xyxy(PRIORS)).argmax(dim=1)
    if best.unique().numel() < num_objects:
        return
    tv_offsets, tv_labels, foreground = torchvision_targets(gt, labels, PRIORS)
    matched, ours = match(gt, labels, PRIORS)
    assert torch.equal(ours, tv_labels)
    offsets = encode(matched, PRIORS)
    assert torch.allclose(
        offsets[foreground], tv_offsets[foreground], atol=1e-4, rtol=1e-4
    )


def test_torchvision_differs_only_by_its_tie_rule():
    # The same scene as test_shared_best_box_...: torchvision gives p3 to the object
    # listed last and leaves the other without a positive; we give it its next-best box,
    # as Caffe does.
    gt = torch.tensor([[0.40, 0.40, 0.58, 0.58], [0.45, 0.45, 0.55, 0.55]])
    labels = torch.tensor([9, 7])
    _, tv_labels, _ = torchvision_targets(gt, labels, HAND_PRIORS[[3, 1]])
    _, ours = match(gt, labels, HAND_PRIORS[[3, 1]])
    assert tv_labels.tolist() == [7, 0] and ours.tolist() == [9, 7]


# ---------------------------------------------------------------------- encode / decode
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3))
def test_decode_inverts_encode(seed: int, batch: int):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, PRIORS.shape[0], (64,), generator=gen)
    priors = PRIORS[idx]  # [64, 4]
    # [batch, 64, 4]
    boxes = torch.stack([random_scene(gen, 64)[0] for _ in range(batch)])
    round_trip = decode(encode(boxes, priors), priors)
    assert round_trip.shape == boxes.shape
    assert torch.allclose(round_trip, boxes, atol=1e-5)
    offsets = torch.randn(batch, 64, 4, generator=gen)
    assert torch.allclose(encode(decode(offsets, priors), priors), offsets, atol=1e-3)


def test_decode_of_zero_offsets_is_the_default_box():
    assert torch.allclose(
        decode(torch.zeros(2, 8732, 4), PRIORS),
        cxcywh_to_xyxy(PRIORS).expand(2, -1, -1),
    )


def test_variances_scale_the_offsets():
    matched, _ = match(HAND_GT, HAND_LABELS, HAND_PRIORS)
    plain = encode(matched, HAND_PRIORS, variances=(1.0, 1.0))  # the paper's equation 2
    scaled = encode(matched, HAND_PRIORS)
    assert torch.allclose(scaled, plain / torch.tensor([0.1, 0.1, 0.2, 0.2]))
    assert math.isclose(float(plain[3, 2]), math.log(0.5), rel_tol=1e-5)


# -----------------------------------------------------------------------------
# build_targets
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    grid=st.sampled_from([None, 5, 10]),
)
def test_build_targets_equals_match_and_encode_per_image(seed, counts, grid):
    gen = torch.Generator().manual_seed(seed)
    scenes = [random_scene(gen, n, grid) for n in counts]
    # force an exact duplicate object: the tie rule must agree too
    if grid and counts[0] >= 2:
        boxes, labels = scenes[0]
        boxes[1] = boxes[0]
    loc, labels = build_targets([s[0] for s in scenes], [s[1] for s in scenes], PRIORS)
    assert loc.shape == (len(counts), 8732, 4) and labels.shape == (len(counts), 8732)
    for i, (gt, gt_labels) in enumerate(scenes):
        matched, expected = match(gt, gt_labels, PRIORS)
        assert torch.equal(labels[i], expected)
        positive = expected > 0
        offsets = encode(matched, PRIORS)
        assert torch.allclose(loc[i][positive], offsets[positive], atol=1e-6)
        # background: exactly 0 here; match + encode round-trip the default box through
        # xyxy, which leaves float noise (tiny boxes divide it by 0.1 * width)
        assert bool((loc[i][~positive] == 0).all())
        assert torch.allclose(
            offsets[~positive], torch.zeros_like(offsets[~positive]), atol=1e-4
        )


@pytest.mark.parametrize("seed", [0, 1])
def test_build_targets_padded_and_image_by_image_agree(seed):
    """The padded form (the GPU's) and the per-image loop (the CPU's default) give the
    same targets, bit for bit, with duplicate objects, images without objects and
    crowded images."""
    gen = torch.Generator().manual_seed(seed)
    counts = [0, 3, 9, 1, 0, 5]
    scenes = [random_scene(gen, n, 5 if i % 2 else None) for i, n in enumerate(counts)]
    scenes[2][0][4] = scenes[2][0][1]  # an exact duplicate: the tie rule must agree too
    boxes, labels = [s[0] for s in scenes], [s[1] for s in scenes]
    loop_loc, loop_labels = build_targets(boxes, labels, PRIORS)  # the CPU default
    padded_loc, padded_labels = build_targets(boxes, labels, PRIORS, padded=True)
    assert torch.equal(loop_labels, padded_labels) and torch.equal(loop_loc, padded_loc)
    assert torch.equal(build_targets(boxes, labels, PRIORS, padded=False)[0], loop_loc)
    assert (
        int((loop_labels[[0, 4]] > 0).sum()) == 0
        and int((loop_labels[2] > 0).sum()) >= 9
    )
    nothing = build_targets(
        [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2, PRIORS
    )
    assert (
        nothing[0].shape == (2, 8732, 4)
        and not nothing[0].any()
        and not nothing[1].any()
    )


def test_build_targets_runs_in_the_priors_dtype_and_device():
    loc, labels = build_targets([HAND_GT], [HAND_LABELS], HAND_PRIORS.double())
    assert loc.dtype == torch.float64 and labels.dtype == torch.long
    assert loc.device == HAND_PRIORS.device
    assert labels[0].tolist() == [3, 0, 3, 7, 0]


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="0 means background"):
        match(HAND_GT, torch.tensor([0, 1]), HAND_PRIORS)
    with pytest.raises(ValueError, match="row 1"):
        match(
            torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.5, 0.7]]),
            HAND_LABELS,
            HAND_PRIORS,
        )
    with pytest.raises(ValueError, match="gt_labels"):
        match(HAND_GT, torch.tensor([1, 2, 3]), HAND_PRIORS)
    with pytest.raises(TypeError, match="integer"):
        match(HAND_GT, torch.tensor([1.0, 2.0]), HAND_PRIORS)
    with pytest.raises(ValueError, match="priors"):
        encode(HAND_GT, HAND_PRIORS)  # 2 boxes, 5 priors
    with pytest.raises(ValueError, match="variances"):
        decode(torch.zeros(5, 4), HAND_PRIORS, variances=(0.1, 0.0))
    with pytest.raises(ValueError, match="gt_labels has 1"):
        build_targets([HAND_GT, HAND_GT], [HAND_LABELS], HAND_PRIORS)
    with pytest.raises(ValueError, match="image 1"):
        build_targets([HAND_GT, HAND_GT], [HAND_LABELS, HAND_LABELS[:1]], HAND_PRIORS)


def test_build_targets_refuses_float_labels_as_match_does():
    # they used to be cast to long silently: label 1.7 became class 1
    with pytest.raises(TypeError, match="image 0: gt_labels must be an integer"):
        build_targets([HAND_GT], [torch.tensor([1.7, 2.0])], HAND_PRIORS)
    with pytest.raises(TypeError, match="integer"):
        build_targets([HAND_GT], [torch.tensor([True, True])], HAND_PRIORS)
