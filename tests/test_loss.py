"""The multibox loss: a hand-worked case, a numpy reference, parity with torchvision's
SSD loss, gradients, and robustness (no positives, huge logits, bf16 autocast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssd_tutorial.loss import LossOutput, MultiboxLoss, multibox_loss


def test_hand_worked_case() -> None:
    # One image, 3 default boxes, 2 classes (0 = background, 1 = object); prior 0 is
    # positive.
    # Cross-entropies, by hand:
    #   prior 0, label 1, logits (0, ln 3): softmax = (1/4, 3/4) -> -ln(3/4) = ln(4/3)
    #   prior 1, label 0, logits (0, 0):    softmax = (1/2, 1/2) -> ln 2
    # (hardest negative) prior 2, label 0, logits (ln 3, 0): softmax = (3/4, 1/4) ->
    #   ln(4/3)
    # Smooth L1 (beta 1) at prior 0: diffs (0.5, -2, 0, -0.25) -> 0.125 + 1.5 + 0 +
    # 0.03125 = 1.65625.
    # Prior 1's wild offsets must not count: it is a negative.
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [0.0, 0.0], [ln3, 0.0]]])
    loc = torch.tensor(
        [[[0.5, -2.0, 0.0, 0.0], [100.0, -100.0, 50.0, 7.0], [0.0, 0.0, 0.0, 0.0]]]
    )
    loc_targets = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]
    )
    labels = torch.tensor([[1, 0, 0]])

    # Ratio 1 -> only prior 1 is kept among the negatives.  N = 1, alpha = 2.
    out = multibox_loss(loc, logits, loc_targets, labels, neg_pos_ratio=1, alpha=2.0)
    assert isinstance(out, LossOutput)
    assert out.loc.item() == pytest.approx(1.65625, abs=1e-6)
    assert out.conf.item() == pytest.approx(math.log(8 / 3), abs=1e-6)  # ln(4/3) + ln 2
    assert out.total.item() == pytest.approx(math.log(8 / 3) + 2 * 1.65625, abs=1e-6)

    # Ratio 3 -> min(3, 2) = both negatives: ln(4/3) + ln 2 + ln(4/3) = ln(32/9).
    out3 = multibox_loss(loc, logits, loc_targets, labels, neg_pos_ratio=3)
    assert out3.conf.item() == pytest.approx(math.log(32 / 9), abs=1e-6)


def test_normalizes_by_positives_of_the_whole_batch() -> None:
    # Two identical images each with one positive: sums double, N doubles -> same loss
    # as one image.
    torch.manual_seed(0)
    loc, logits = torch.randn(1, 6, 4), torch.randn(1, 6, 3)
    targets, labels = torch.randn(1, 6, 4), torch.tensor([[2, 0, 0, 0, 0, 0]])
    one = multibox_loss(loc, logits, targets, labels)
    two = multibox_loss(
        loc.repeat(2, 1, 1),
        logits.repeat(2, 1, 1),
        targets.repeat(2, 1, 1),
        labels.repeat(2, 1),
    )
    torch.testing.assert_close(torch.stack(two), torch.stack(one))


def numpy_multibox_loss(loc, logits, loc_targets, labels, ratio=3, alpha=1.0):
    """Independent reference in float64 numpy, one image and one box at a time."""
    loc, logits, loc_targets = (
        np.asarray(a, dtype=np.float64) for a in (loc, logits, loc_targets)
    )
    labels = np.asarray(labels)
    loc_sum = conf_sum = 0.0
    num_pos = 0
    for b in range(labels.shape[0]):
        ce = []
        for i in range(labels.shape[1]):
            z = logits[b, i]
            log_sum_exp = z.max() + np.log(np.exp(z - z.max()).sum())
            ce.append(log_sum_exp - z[labels[b, i]])
        ce = np.array(ce)
        pos = np.flatnonzero(labels[b] > 0)
        neg = np.flatnonzero(labels[b] == 0)
        for i in pos:
            d = np.abs(loc[b, i] - loc_targets[b, i])
            loc_sum += np.where(d < 1, 0.5 * d**2, d - 0.5).sum()
        hardest = neg[np.argsort(-ce[neg], kind="stable")][
            : min(ratio * pos.size, neg.size)
        ]
        conf_sum += ce[pos].sum() + ce[hardest].sum()
        num_pos += pos.size
    n = max(num_pos, 1)
    return conf_sum / n + alpha * loc_sum / n, loc_sum / n, conf_sum / n


def random_case(
    batch=3, priors=300, classes=5, seed=0, empty_image=None, dtype=torch.float32
):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, priors, 4, generator=g, dtype=dtype)
    logits = 3 * torch.randn(batch, priors, classes, generator=g, dtype=dtype)
    loc_targets = torch.randn(batch, priors, 4, generator=g, dtype=dtype)
    labels = torch.randint(1, classes, (batch, priors), generator=g)
    labels[torch.rand(batch, priors, generator=g) > 0.05] = 0  # ~5% positives
    if empty_image is not None:
        labels[empty_image] = 0
    return loc, logits, loc_targets, labels


@pytest.mark.parametrize("ratio, alpha", [(3, 1.0), (1, 0.5), (5, 2.0)])
def test_matches_numpy_reference(ratio, alpha) -> None:
    loc, logits, loc_targets, labels = random_case(empty_image=1)
    out = multibox_loss(
        loc, logits, loc_targets, labels, neg_pos_ratio=ratio, alpha=alpha
    )
    expected = numpy_multibox_loss(loc, logits, loc_targets, labels, ratio, alpha)
    np.testing.assert_allclose([t.item() for t in out], expected, rtol=1e-5)


# -------------------------------------------------------------- parity with torchvision


@pytest.fixture(scope="module")
def torchvision_ssd():
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(0)
    return ssd300_vgg16(weights=None, weights_backbone=None, num_classes=5).eval()


def encode_by_hand(
    gt_xyxy: torch.Tensor, anchors_xyxy: torch.Tensor, variances=(0.1, 0.2)
) -> torch.Tensor:
    """The paper's offsets (eq. 2), written out here independently of
    ssd_tutorial.matching."""
    gw, gh = gt_xyxy[:, 2] - gt_xyxy[:, 0], gt_xyxy[:, 3] - gt_xyxy[:, 1]
    aw, ah = (
        anchors_xyxy[:, 2] - anchors_xyxy[:, 0],
        anchors_xyxy[:, 3] - anchors_xyxy[:, 1],
    )
    gcx, gcy = gt_xyxy[:, 0] + gw / 2, gt_xyxy[:, 1] + gh / 2
    acx, acy = anchors_xyxy[:, 0] + aw / 2, anchors_xyxy[:, 1] + ah / 2
    return torch.stack(
        (
            (gcx - acx) / aw / variances[0],
            (gcy - acy) / ah / variances[0],
            torch.log(gw / aw) / variances[1],
            torch.log(gh / ah) / variances[1],
        ),
        dim=-1,
    )


def parity_case(batch=3, priors=400, classes=5, seed=0, positives=(12, 0, 30)):
    """Random anchors (pixels, xyxy), random ground truth per image, and a random
    matching.

    Returns our inputs (loc_targets, labels) and torchvision's (targets, anchors,
    matched_idxs) describing the same assignment.  Image 1 has objects but no positive.
    """
    g = torch.Generator().manual_seed(seed)

    def random_boxes(n):
        xy = torch.rand(n, 2, generator=g) * 250
        wh = torch.rand(n, 2, generator=g) * 60 + 5
        return torch.cat((xy, xy + wh), dim=1)  # [n, 4] xyxy px

    targets, anchors, matched_idxs, loc_targets, labels = [], [], [], [], []
    for b in range(batch):
        gt = random_boxes(4)
        gt_labels = torch.randint(1, classes, (4,), generator=g)
        image_anchors = random_boxes(priors)
        matched = torch.full((priors,), -1, dtype=torch.long)
        chosen = torch.randperm(priors, generator=g)[: positives[b]]
        matched[chosen] = torch.randint(0, 4, (positives[b],), generator=g)
        targets.append({"boxes": gt, "labels": gt_labels})
        anchors.append(image_anchors)
        matched_idxs.append(matched)
        # Our representation: labels [P] (0 = background) and encoded offsets [P, 4].
        safe = matched.clamp(min=0)
        labels.append(
            torch.where(matched >= 0, gt_labels[safe], torch.zeros_like(safe))
        )
        loc_targets.append(encode_by_hand(gt[safe], image_anchors))
    return targets, anchors, matched_idxs, torch.stack(loc_targets), torch.stack(labels)


def test_parity_with_torchvision_ssd_compute_loss(torchvision_ssd) -> None:
    # torchvision's SSD.compute_loss: smooth-L1 (beta 1) on BoxCoder(weights=(10, 10, 5,
    # 5)) offsets = our variances (0.1, 0.2); cross-entropy over positives + the 3 x
    # positives hardest negatives per image; both terms divided by N = max(1, positives
    # in the batch).
    # Same definition as ours as long as 3 x positives <= negatives in every image (see
    # the next test for when it is not).  Its sort is not stable, so we use continuous
    # random logits:
    # no ties, a unique answer.
    targets, anchors, matched_idxs, loc_targets, labels = parity_case()
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(3, 400, 4, generator=g)
    logits = 3 * torch.randn(3, 400, 5, generator=g)
    head_outputs = {"bbox_regression": loc, "cls_logits": logits}

    theirs = torchvision_ssd.compute_loss(targets, head_outputs, anchors, matched_idxs)
    ours = multibox_loss(
        loc, logits, loc_targets, labels, neg_pos_ratio=torchvision_ssd.neg_to_pos_ratio
    )

    assert (
        labels[1].sum() == 0
        and (labels[0] > 0).sum() == 12
        and (labels[2] > 0).sum() == 30
    )
    torch.testing.assert_close(
        ours.loc, theirs["bbox_regression"], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        ours.conf, theirs["classification"], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        ours.total,
        theirs["bbox_regression"] + theirs["classification"],
        rtol=1e-5,
        atol=1e-5,
    )


def test_torchvision_differs_when_too_few_negatives(torchvision_ssd) -> None:
    # With 3 x positives > negatives, torchvision keeps the ranks < 3 x positives of a
    # ranking in which positives were put last (loss -inf), so positives are counted a
    # second time as "background".  With 30 positives among 40 priors (90 wanted >= 40)
    # every prior is in, and its classification term exceeds ours by exactly (CE over
    # positives) / N.  We follow the paper ("at most 3:1") and keep only the 10
    # negatives that exist.
    targets, anchors, matched_idxs, loc_targets, labels = parity_case(
        batch=1, priors=40, positives=(30,), seed=3
    )
    g = torch.Generator().manual_seed(2)
    loc, logits = torch.randn(1, 40, 4, generator=g), torch.randn(1, 40, 5, generator=g)
    theirs = torchvision_ssd.compute_loss(
        targets, {"bbox_regression": loc, "cls_logits": logits}, anchors, matched_idxs
    )
    ours = multibox_loss(loc, logits, loc_targets, labels)
    ce = F.cross_entropy(logits[0], labels[0], reduction="none")
    positive_ce = ce[labels[0] > 0].sum() / 30
    torch.testing.assert_close(
        theirs["classification"], ours.conf + positive_ce, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(ours.conf, ce.sum() / 30, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- gradients and robustness


def test_gradcheck_double() -> None:
    loc, logits, loc_targets, labels = random_case(
        batch=2, priors=12, classes=3, seed=4, dtype=torch.float64
    )
    labels[0, :3] = torch.tensor([1, 2, 1])
    labels[1] = 0  # an image with no positive
    loc.requires_grad_(True)
    logits.requires_grad_(True)

    def total(loc_, logits_):
        return multibox_loss(
            loc_, logits_, loc_targets, labels, neg_pos_ratio=2, alpha=0.7
        ).total

    assert multibox_loss(loc, logits, loc_targets, labels).total.dtype == torch.float64
    assert torch.autograd.gradcheck(total, (loc, logits), eps=1e-6, atol=1e-5)


def test_no_positives_gives_zero_loss_and_zero_gradient() -> None:
    loc, logits, loc_targets, labels = random_case(seed=5)
    labels.zero_()
    loc.requires_grad_(True)
    logits.requires_grad_(True)
    out = multibox_loss(loc, logits, loc_targets, labels)
    # paper p.5: "If N = 0, we set the loss to 0"
    assert [t.item() for t in out] == [
        0.0,
        0.0,
        0.0,
    ]
    out.total.backward()
    assert torch.count_nonzero(loc.grad) == 0 and torch.count_nonzero(logits.grad) == 0


def test_empty_image_gets_no_gradient_in_a_batch() -> None:
    loc, logits, loc_targets, labels = random_case(seed=6, empty_image=1)
    logits.requires_grad_(True)
    multibox_loss(loc, logits, loc_targets, labels).total.backward()
    assert torch.count_nonzero(logits.grad[1]) == 0
    assert torch.count_nonzero(logits.grad[0]) > 0


def test_huge_logits_stay_finite() -> None:
    loc, logits, loc_targets, labels = random_case(seed=7, empty_image=0)
    logits = (torch.sign(logits) * 1e4).requires_grad_(True)
    out = multibox_loss(loc, logits, loc_targets, labels)
    out.total.backward()
    assert all(torch.isfinite(t) for t in out)
    assert torch.isfinite(logits.grad).all()
    assert out.conf.item() > 1e3  # confidently wrong answers cost ~1e4 each, not inf


def test_bf16_autocast_computes_in_float32() -> None:
    loc, logits, loc_targets, labels = random_case(seed=8)
    loc_bf16, logits_bf16 = (
        loc.bfloat16().requires_grad_(True),
        logits.bfloat16().requires_grad_(True),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = multibox_loss(loc_bf16, logits_bf16, loc_targets.bfloat16(), labels)
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in out)
    out.total.backward()
    assert (
        torch.isfinite(loc_bf16.grad.float()).all()
        and torch.isfinite(logits_bf16.grad.float()).all()
    )
    # Same as float32 on the same (bf16-rounded) numbers.
    ref = multibox_loss(
        loc_bf16.float(), logits_bf16.float(), loc_targets.bfloat16().float(), labels
    )
    torch.testing.assert_close(torch.stack(out), torch.stack(ref))


def test_negative_modes() -> None:
    loc, logits, loc_targets, labels = random_case(seed=9, empty_image=2)
    hard = multibox_loss(loc, logits, loc_targets, labels)
    all_neg = multibox_loss(loc, logits, loc_targets, labels, negatives="all")
    rand_a = multibox_loss(
        loc,
        logits,
        loc_targets,
        labels,
        negatives="random",
        generator=torch.Generator().manual_seed(0),
    )
    rand_b = multibox_loss(
        loc,
        logits,
        loc_targets,
        labels,
        negatives="random",
        generator=torch.Generator().manual_seed(0),
    )
    n = (labels > 0).sum()
    ce = F.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), reduction="none")
    torch.testing.assert_close(all_neg.conf, ce.sum() / n)
    torch.testing.assert_close(rand_a.conf, rand_b.conf)
    # Same number of negatives, but mining keeps the highest losses.
    assert hard.conf > rand_a.conf
    assert hard.loc == all_neg.loc == rand_a.loc
    with pytest.raises(ValueError, match="negatives must be one of"):
        multibox_loss(loc, logits, loc_targets, labels, negatives="some")


def test_compiles_without_graph_breaks() -> None:
    loc, logits, loc_targets, labels = random_case(seed=10, empty_image=0)
    compiled = torch.compile(multibox_loss, fullgraph=True, backend="eager")
    torch.testing.assert_close(
        torch.stack(compiled(loc, logits, loc_targets, labels)),
        torch.stack(multibox_loss(loc, logits, loc_targets, labels)),
    )


@pytest.mark.parametrize(
    "shapes, message",
    [
        (
            ((2, 10, 3), (2, 10, 5), (2, 10, 3), (2, 10)),
            r"loc must have shape \[B, P, 4\]",
        ),
        (((2, 10, 4), (2, 9, 5), (2, 10, 4), (2, 10)), "conf_logits must have shape"),
        (((2, 10, 4), (2, 10, 5), (2, 10, 4), (2, 9)), "labels must have shape"),
        (((2, 10, 4), (2, 10, 5), (1, 10, 4), (2, 10)), "loc_targets"),
        (((2, 10, 4), (2, 10, 1), (2, 10, 4), (2, 10)), "at least 2 classes"),
    ],
)
def test_bad_shapes(shapes, message) -> None:
    loc, logits, targets, labels = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        multibox_loss(loc, logits, targets, labels.long())


def test_float_labels_are_refused() -> None:
    with pytest.raises(TypeError, match="torch.long"):
        multibox_loss(
            torch.zeros(1, 3, 4),
            torch.zeros(1, 3, 2),
            torch.zeros(1, 3, 4),
            torch.zeros(1, 3),
        )


# ---------------------------------------------------------------- the module


def test_module_priors_buffer_is_not_saved_and_follows_dtype_moves() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.5, 0.5]])
    module = MultiboxLoss(priors)
    assert "priors" in dict(module.named_buffers())
    assert module.state_dict() == {}
    assert torch.equal(module.priors, priors)
    with pytest.raises(ValueError, match=r"priors_cxcywh must have shape \[P, 4\]"):
        MultiboxLoss(torch.zeros(4))


def test_module_end_to_end_matches_torchvision_with_its_own_matcher(
    torchvision_ssd,
) -> None:
    # The whole path: our build_targets on the real 8732 default boxes + our loss,
    # against torchvision's SSDMatcher (IoU >= 0.5, plus each object's best anchor
    # forced) and its compute_loss on the same boxes in pixels.  Image 1 has no object
    # at all.
    from torchvision.ops import box_iou as tv_box_iou

    from ssd_tutorial.boxes import cxcywh_to_xyxy
    from ssd_tutorial.default_boxes import default_boxes

    priors = default_boxes()  # [8732, 4] cxcywh normalized
    anchors_px = cxcywh_to_xyxy(priors) * 300  # [8732, 4] xyxy px
    gt_boxes = [
        torch.tensor(
            [
                [0.10, 0.15, 0.45, 0.60],
                [0.50, 0.40, 0.95, 0.90],
                [0.05, 0.70, 0.20, 0.85],
            ]
        ),
        torch.zeros(0, 4),
        torch.tensor([[0.30, 0.20, 0.70, 0.80]]),
    ]
    gt_labels = [
        torch.tensor([1, 4, 2]),
        torch.zeros(0, dtype=torch.long),
        torch.tensor([3]),
    ]
    g = torch.Generator().manual_seed(11)
    loc, logits = (
        torch.randn(3, 8732, 4, generator=g),
        2 * torch.randn(3, 8732, 5, generator=g),
    )

    targets, matched_idxs = [], []
    for boxes, labels in zip(gt_boxes, gt_labels):
        targets.append({"boxes": boxes * 300, "labels": labels})
        if boxes.numel() == 0:
            matched_idxs.append(torch.full((8732,), -1, dtype=torch.long))
        else:
            matched_idxs.append(
                torchvision_ssd.proposal_matcher(tv_box_iou(boxes * 300, anchors_px))
            )
    theirs = torchvision_ssd.compute_loss(
        targets,
        {"bbox_regression": loc, "cls_logits": logits},
        [anchors_px] * 3,
        matched_idxs,
    )
    ours = MultiboxLoss(priors)(loc, logits, gt_boxes, gt_labels)

    assert sum(int((m >= 0).sum()) for m in matched_idxs) > 10
    torch.testing.assert_close(
        ours.loc, theirs["bbox_regression"], rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        ours.conf, theirs["classification"], rtol=1e-5, atol=1e-5
    )


# --------------------------------------------------------- GPU: no host synchronisation

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (runs in the GPU check)"
)


@needs_cuda
def test_cuda_forward_backward_never_waits_for_the_host() -> None:
    # set_sync_debug_mode("error") raises on any synchronising call (.item(), boolean
    # indexing, nonzero, ...), so this proves the training step can run ahead of the
    # CPU.
    loc, logits, loc_targets, labels = (
        t.cuda()
        for t in random_case(batch=8, priors=8732, classes=21, seed=12, empty_image=3)
    )
    loc.requires_grad_(True)
    logits.requires_grad_(True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = multibox_loss(loc, logits, loc_targets, labels)
        out.total.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = multibox_loss(
        loc.detach().cpu(), logits.detach().cpu(), loc_targets.cpu(), labels.cpu()
    )
    torch.testing.assert_close(
        torch.stack(out).detach().cpu(), torch.stack(expected), rtol=1e-5, atol=1e-5
    )


@needs_cuda
def test_cuda_graph_capture_and_replay() -> None:
    static = [
        t.cuda()
        for t in random_case(batch=8, priors=8732, classes=21, seed=14, empty_image=2)
    ]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the graph, as CUDA graphs require
            multibox_loss(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = multibox_loss(*static)
    fresh = [
        t.cuda()
        for t in random_case(batch=8, priors=8732, classes=21, seed=15, empty_image=5)
    ]
    for dst, src in zip(static, fresh):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(
        torch.stack(static_out),
        torch.stack(multibox_loss(*fresh)),
        rtol=1e-5,
        atol=1e-5,
    )
