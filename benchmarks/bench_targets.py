"""Speed of ``matching.build_targets`` at batch 32 vs torchvision's per-image matching.

    python benchmarks/bench_targets.py           # CPU, writes benchmarks/results/
    python benchmarks/bench_targets.py --device cuda --out DIR

Both sides get the same 32 scenes (1 to 9 objects per image, about 3 on average as in
VOC, random boxes in the unit square) and SSD300's 8732 default boxes.  The baseline is
what torchvision's ``SSD.compute_loss`` does before the loss: a Python loop over images
with ``box_iou`` + ``SSDMatcher(0.5)`` + ``BoxCoder(weights=(10, 10, 5,
5)).encode_single`` on the foreground boxes. ``build_targets`` pads the objects and
handles the whole batch at once.

Printed and written to ``OUT/targets_<device>.json``: median times, the speed-up ratio,
and how many (image, default box) labels agree with torchvision's (they can differ only
where two objects share a best default box: the tie rules differ, see
``ssd_tutorial.matching``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from timing import device_name, report, timed

from ssd_tutorial.boxes import cxcywh_to_xyxy
from ssd_tutorial.default_boxes import default_boxes
from ssd_tutorial.matching import build_targets

ROOT = Path(__file__).resolve().parent.parent


def random_batch(
    batch: int, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``batch`` scenes: boxes ``[G_i, 4]`` normalized xyxy (G_i in 1..9, mean ~3),
    labels 1..20."""
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for _ in range(batch):
        n = min(9, 1 + int(torch.poisson(torch.tensor(2.0), generator=g)))
        centre = torch.rand(n, 2, generator=g)  # [n, 2]
        # [n, 2], mostly small objects
        size = 0.05 + 0.6 * torch.rand(n, 2, generator=g) ** 2
        # [n, 4]
        xyxy = torch.cat((centre - size / 2, centre + size / 2), dim=1).clamp(0, 1)
        boxes.append(xyxy)
        labels.append(torch.randint(1, 21, (n,), generator=g))
    return boxes, labels


def torchvision_targets(boxes, labels, anchors_xyxy, matcher, coder):
    """torchvision SSD.compute_loss's target building, image by image."""
    from torchvision.ops import box_iou

    loc_targets, class_targets = [], []
    for gt, gt_labels in zip(boxes, labels):
        matched = matcher(box_iou(gt, anchors_xyxy))  # [P], -1 = background
        foreground = torch.where(matched >= 0)[0]
        loc_targets.append(
            coder.encode_single(gt[matched[foreground]], anchors_xyxy[foreground])
        )
        target = torch.zeros(
            anchors_xyxy.shape[0], dtype=torch.long, device=anchors_xyxy.device
        )
        target[foreground] = gt_labels[matched[foreground]]
        class_targets.append(target)
    return loc_targets, torch.stack(class_targets)  # list of [F_i, 4], [B, P]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    from torchvision.models.detection._utils import BoxCoder, SSDMatcher

    priors = default_boxes().to(device)  # [8732, 4] cxcywh normalized
    anchors = cxcywh_to_xyxy(priors)  # [8732, 4] xyxy, what torchvision works with
    boxes, labels = random_batch(args.batch, seed=0)
    boxes = [b.to(device) for b in boxes]
    labels = [lab.to(device) for lab in labels]
    matcher, coder = SSDMatcher(0.5), BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))

    with torch.inference_mode():
        t_ours, (loc, ours) = timed(
            lambda: build_targets(boxes, labels, priors), device, args.repeats
        )
        t_tv, (tv_loc, theirs) = timed(
            lambda: torchvision_targets(boxes, labels, anchors, matcher, coder),
            device,
            args.repeats,
        )
    same_labels = int((ours == theirs).sum())
    foreground = theirs > 0
    agree_fg = ours[foreground] == theirs[foreground]
    loc_err = float(
        (loc[foreground][agree_fg] - torch.cat(tv_loc)[agree_fg]).abs().max()
    )
    result = {
        "benchmark": "matching.build_targets vs torchvision SSDMatcher + BoxCoder per "
        "image",
        "device": device_name(device),
        "torch": torch.__version__,
        "batch": args.batch,
        "priors": int(priors.shape[0]),
        "objects": int(sum(b.shape[0] for b in boxes)),
        "build_targets_s": round(t_ours, 5),
        "torchvision_loop_s": round(t_tv, 5),
        "speedup_vs_torchvision": round(t_tv / t_ours, 2),
        "labels_agreeing_with_torchvision": f"{same_labels}/{ours.numel()}",
        "max_offset_difference": round(loc_err, 7),
    }
    report(
        result,
        f"build_targets: {t_ours * 1e3:.2f} ms, torchvision loop: {t_tv * 1e3:.2f} ms "
        f"per batch of {args.batch} -> ratio {t_tv / t_ours:.1f}x ({result['device']})",
        args.out,
        f"targets_{device.type}.json",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
