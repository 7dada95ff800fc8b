"""Speed of ``evaluation.evaluate_voc``: 5,000 images x 100 detections on a CPU.

Goal: under 2 s.

    python benchmarks/bench_evaluation.py  # -> benchmarks/results/evaluation_cpu.json

Synthetic data, 20 classes: each image has 1 to 6 ground-truth boxes (10% difficult);
its 100 detections are jittered copies of them (some good, some poor, some duplicates)
and random boxes.
The baseline is a devkit-style evaluator written here the way py-faster-rcnn's
``voc_eval`` works (a Python loop over the detections of each class, numpy IoU against
the image's boxes), timed on the first 500 images; both give the same APs there, and the
ratio compares time per detection.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from timing import report

from ssd_tutorial.evaluation import evaluate_voc

ROOT = Path(__file__).resolve().parent.parent
CLASSES = [f"class{k}" for k in range(20)]


def synthetic(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    gts, dets = {}, {}
    for i in range(num_images):
        g = int(rng.integers(1, 7))
        xy = rng.uniform(0, 400, size=(g, 2))
        wh = rng.uniform(20, 200, size=(g, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).round()
        labels = rng.integers(1, 21, size=g)
        gts[f"img{i:05d}"] = {
            "boxes": boxes,
            "labels": labels,
            "difficult": rng.random(g) < 0.1,
        }
        # half near a true object ...
        near = rng.integers(0, g, size=dets_per_image // 2)
        jitter = (
            rng.normal(0, 1, size=(near.size, 4))
            * np.repeat(wh[near], 2, axis=1)
            * rng.uniform(0.02, 0.4, (near.size, 1))
        )
        near_boxes = boxes[near] + jitter
        far = dets_per_image - near.size  # ... half anywhere
        fxy = rng.uniform(0, 400, size=(far, 2))
        far_boxes = np.concatenate(
            [fxy, fxy + rng.uniform(10, 200, size=(far, 2))], axis=1
        )
        det_boxes = np.concatenate([near_boxes, far_boxes])
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        det_labels = np.concatenate([labels[near], rng.integers(1, 21, size=far)])
        wrong = rng.random(near.size) < 0.1  # some right boxes with the wrong class
        det_labels[: near.size][wrong] = rng.integers(1, 21, size=int(wrong.sum()))
        dets[f"img{i:05d}"] = {
            "boxes": det_boxes,
            "labels": det_labels,
            "scores": rng.random(dets_per_image),
        }
    return dets, gts


def devkit_style(
    dets: dict, gts: dict, num_classes: int, thr: float = 0.5
) -> dict[int, float]:
    """voc_eval's algorithm (11-point AP): per class, a loop over detections sorted by
    score."""
    aps = {}
    for c in range(1, num_classes + 1):
        recs = {}
        npos = 0
        for image_id, g in gts.items():
            m = g["labels"] == c
            recs[image_id] = (
                g["boxes"][m],
                g["difficult"][m],
                np.zeros(int(m.sum()), bool),
            )
            npos += int((~g["difficult"][m]).sum())
        ids, scores, boxes = [], [], []
        for image_id, d in dets.items():
            m = d["labels"] == c
            ids += [image_id] * int(m.sum())
            scores.append(d["scores"][m])
            boxes.append(d["boxes"][m])
        scores, boxes = np.concatenate(scores), np.concatenate(boxes)
        order = np.argsort(-scores, kind="stable")
        tp, fp = np.zeros(order.size), np.zeros(order.size)
        for n, i in enumerate(order):
            bbgt, difficult, taken = recs[ids[i]]
            bb = boxes[i]
            ovmax = -np.inf
            if bbgt.size:
                iw = np.maximum(
                    np.minimum(bbgt[:, 2], bb[2]) - np.maximum(bbgt[:, 0], bb[0]) + 1.0,
                    0.0,
                )
                ih = np.maximum(
                    np.minimum(bbgt[:, 3], bb[3]) - np.maximum(bbgt[:, 1], bb[1]) + 1.0,
                    0.0,
                )
                inter = iw * ih
                uni = (
                    (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                    + (bbgt[:, 2] - bbgt[:, 0] + 1.0) * (bbgt[:, 3] - bbgt[:, 1] + 1.0)
                    - inter
                )
                ov = inter / uni
                ovmax, j = np.max(ov), np.argmax(ov)
            if ovmax > thr:
                if not difficult[j]:
                    if not taken[j]:
                        tp[n], taken[j] = 1.0, True
                    else:
                        fp[n] = 1.0
            else:
                fp[n] = 1.0
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[c] = (
            sum(
                (prec[rec >= t].max() if (rec >= t).any() else 0.0)
                for t in np.arange(0.0, 1.1, 0.1)
            )
            / 11.0
        )
    return aps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--baseline-images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    dets, gts = synthetic(args.images, args.dets)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = evaluate_voc(dets, gts, CLASSES)
        times.append(time.perf_counter() - start)
    t_full = min(times)

    ids = list(gts)[: args.baseline_images]
    sub_d, sub_g = {i: dets[i] for i in ids}, {i: gts[i] for i in ids}
    start = time.perf_counter()
    ours_sub = evaluate_voc(sub_d, sub_g, CLASSES)
    t_ours_sub = time.perf_counter() - start
    start = time.perf_counter()
    reference = devkit_style(sub_d, sub_g, len(CLASSES))
    t_ref_sub = time.perf_counter() - start
    max_diff = max(
        abs(ours_sub["ap"][CLASSES[c - 1]] - ap) for c, ap in reference.items()
    )

    n_full, n_sub = args.images * args.dets, len(ids) * args.dets
    ratio = (t_ref_sub / n_sub) / (t_full / n_full)
    out = {
        "benchmark": "evaluation.evaluate_voc (VOC AP50, 11-point) on synthetic "
        "detections",
        "device": f"{platform.processor() or platform.machine()} (numpy, one process)",
        "numpy": np.__version__,
        "images": args.images,
        "detections": n_full,
        "ground_truth_boxes": int(sum(len(g["labels"]) for g in gts.values())),
        "evaluate_voc_s": round(t_full, 4),
        "goal_s": 2.0,
        "map": round(result["map"], 6),
        "baseline": f"devkit-style loop on the first {len(ids)} images",
        "baseline_s": round(t_ref_sub, 4),
        "evaluate_voc_on_baseline_images_s": round(t_ours_sub, 4),
        "speedup_per_detection_vs_devkit_style": round(ratio, 1),
        "max_ap_difference_vs_devkit_style": max_diff,
    }
    report(
        out,
        f"evaluate_voc: {t_full:.3f} s for {args.images} images x {args.dets} "
        f"detections (goal < 2 s); devkit-style loop: {t_ref_sub:.2f} s for "
        f"{len(ids)} images -> {ratio:.0f}x faster per detection",
        args.out,
        "evaluation_cpu.json",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
