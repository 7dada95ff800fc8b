"""Speed of ``inference.detect`` on a batch of 64 vs torchvision's SSD post-processing.

    python benchmarks/bench_inference.py         # CPU, writes benchmarks/results/
    python benchmarks/bench_inference.py --device cuda --out DIR

Both sides get the same inputs: SSD300's 8732 default boxes, 21 classes, and logits
shaped like a trained model's (background dominant, a few confident objects per image,
the rest noise), so the number of candidates above the 0.01 threshold is realistic
rather than 8732 x 20.  torchvision's ``SSD.postprocess_detections`` (ssd300_vgg16, no
weights) is set to the same thresholds: score 0.01, NMS IoU 0.45, 200 detections per
image, 400 candidates per class.  It loops over images and classes in Python; ``detect``
uses its default NMS path (``"auto"``: ``"per_class"`` on a CPU, an NMS call per (image,
class) on only the candidates that can make the top 200; ``"padded"``, all (image,
class) groups at once, on a GPU).  ``"batched"`` and ``"padded"`` are timed too, and
their detections compared with each other.

Printed and written to ``OUT/inference_<device>.json``: median times, the speed-up
ratio, and how many detections of the two agree (same label, score and box within 1e-4).
On a GPU, the CPU result of ``detect`` is compared with the GPU one too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from timing import device_name, report, timed

from ssd_tutorial.boxes import cxcywh_to_xyxy
from ssd_tutorial.default_boxes import default_boxes
from ssd_tutorial.inference import detect

ROOT = Path(__file__).resolve().parent.parent


def synthetic_outputs(
    batch: int, num_priors: int, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``loc [B, P, 4]`` and ``conf_logits [B, P, C]`` that look like a trained
    SSD's."""
    g = torch.Generator().manual_seed(seed)
    loc = 0.5 * torch.randn(batch, num_priors, 4, generator=g)
    logits = torch.randn(batch, num_priors, num_classes, generator=g)
    # background wins almost everywhere: ~1% of (box, class) pairs pass 0.01
    logits[..., 0] += 7.0
    # ~6 objects per image, each claimed confidently by ~30 default boxes
    for b in range(batch):
        for _ in range(6):
            boxes = torch.randint(0, num_priors, (30,), generator=g)
            label = int(torch.randint(1, num_classes, (1,), generator=g))
            logits[b, boxes, label] += 8.0
    return loc, logits


def agreement(ours: list[dict], theirs: list[dict], size: float) -> tuple[int, int]:
    """(detections that agree, detections in total); boxes compared in normalized
    coordinates."""
    same = total = 0
    for a, b in zip(ours, theirs):
        total += max(len(a["scores"]), len(b["scores"]))
        if len(a["scores"]) != len(b["scores"]):
            continue
        ok = (
            (a["labels"].cpu() == b["labels"].cpu())
            & ((a["scores"].cpu() - b["scores"].cpu()).abs() < 1e-4)
            & ((a["boxes"].cpu() - b["boxes"].cpu() / size).abs().amax(dim=1) < 1e-4)
        )
        same += int(ok.sum())
    return same, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    from torchvision.models.detection import ssd300_vgg16

    num_classes, size = 21, 300
    priors = default_boxes().to(device)  # [8732, 4] cxcywh normalized
    loc, logits = synthetic_outputs(args.batch, priors.shape[0], num_classes, seed=0)
    loc, logits = loc.to(device), logits.to(device)
    candidates = int((logits.softmax(-1)[..., 1:] > 0.01).sum())

    tv = (
        ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes)
        .to(device)
        .eval()
    )
    tv.score_thresh, tv.nms_thresh, tv.detections_per_img, tv.topk_candidates = (
        0.01,
        0.45,
        200,
        400,
    )
    anchors = [
        cxcywh_to_xyxy(priors) * size
    ] * args.batch  # torchvision wants xyxy pixel anchors
    head = {"bbox_regression": loc, "cls_logits": logits}
    shapes = [(size, size)] * args.batch

    with torch.inference_mode():
        t_ours, ours = timed(
            lambda: detect(loc, logits, priors, 0.01, 0.45, 200), device, args.repeats
        )
        t_all, _ = timed(
            lambda: detect(
                loc, logits, priors, 0.01, 0.45, 200, candidates_per_class=None
            ),
            device,
            args.repeats,
        )
        t_tv, theirs = timed(
            lambda: tv.postprocess_detections(head, anchors, shapes),
            device,
            args.repeats,
        )
        paths = {
            nms: timed(
                lambda nms=nms: detect(loc, logits, priors, 0.01, 0.45, 200, nms=nms),
                device,
                args.repeats,
            )
            for nms in ("batched", "padded")
        }
    same, total = agreement(ours, theirs, size)
    batched_dets, padded_dets = paths["batched"][1], paths["padded"][1]
    same_nms, total_nms = agreement(
        padded_dets, [{**d, "boxes": d["boxes"] * size} for d in batched_dets], size
    )
    result = {
        "benchmark": "inference.detect vs torchvision SSD.postprocess_detections",
        "device": device_name(device),
        "torch": torch.__version__,
        "batch": args.batch,
        "priors": int(priors.shape[0]),
        "classes": num_classes,
        "candidates_above_0.01": candidates,
        "detect_s": round(t_ours, 5),
        "detect_nms_default": "padded" if device.type == "cuda" else "per_class",
        "detect_batched_nms_s": round(paths["batched"][0], 5),
        "detect_padded_nms_s": round(paths["padded"][0], 5),
        "padded_vs_batched_detections_agreeing": f"{same_nms}/{total_nms}",
        "detect_all_candidates_s": round(t_all, 5),
        "torchvision_postprocess_s": round(t_tv, 5),
        "speedup_vs_torchvision": round(t_tv / t_ours, 2),
        "detections_agreeing_with_torchvision": f"{same}/{total}",
    }
    if device.type == "cuda":
        with torch.inference_mode():
            cpu = detect(loc.cpu(), logits.cpu(), priors.cpu(), 0.01, 0.45, 200)
        same_cpu, total_cpu = agreement(
            ours, [{**d, "boxes": d["boxes"] * size} for d in cpu], size
        )
        result["cpu_gpu_detections_agreeing"] = f"{same_cpu}/{total_cpu}"
    report(
        result,
        f"detect: {t_ours * 1e3:.1f} ms, torchvision postprocess: {t_tv * 1e3:.1f} ms "
        f"per batch of {args.batch} -> ratio {t_tv / t_ours:.1f}x "
        f"({result['device']})\n"
        f"detect nms=batched: {paths['batched'][0] * 1e3:.1f} ms, nms=padded: "
        f"{paths['padded'][0] * 1e3:.1f} ms (default here: "
        f"{result['detect_nms_default']}; detections agreeing {same_nms}/{total_nms})",
        args.out,
        f"inference_{device.type}.json",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
