"""CPU speed of ssd_tutorial against torchvision's SSD300 in the same run (goal: not slower).

    python benchmarks/bench_cpu.py --out OUT_DIR            # full SSD300, batch 2 (~1-2 min on 2 cores)
    python benchmarks/bench_cpu.py --out OUT_DIR --smoke    # tiny models, one iteration (the tests)

Training step = forward + loss (with target building) + backward + SGD step, batch 2, random
weights, random 300x300 inputs with 1-4 random boxes each; ours is the package's own
``Trainer.train_step`` (amp off on CPU), torchvision's is ``ssd300_vgg16`` returning its losses.
Inference = batch 1 forward + decode + NMS (ours: ``model`` + ``inference.detect`` with
torchvision's 400 candidates per class; torchvision: eval forward with its postprocess).
Measurements alternate between the two models (AB BA AB ...) so that a busy machine slows both
alike; the median time per step is reported.  Writes ``OUT_DIR/cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_gpu import synthetic_batch, torchvision_ssd  # noqa: E402

from ssd_tutorial.config import get_config  # noqa: E402
from ssd_tutorial.default_boxes import default_boxes  # noqa: E402
from ssd_tutorial.inference import detect  # noqa: E402
from ssd_tutorial.model import TINY_WIDTH  # noqa: E402
from ssd_tutorial.train import Trainer  # noqa: E402


def alternate(fns: dict[str, Callable[[], Any]], warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round by round (the order
    reversed every other round: A B, B A, A B, ...)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for k in range(rounds):
        order = list(fns.items()) if k % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for cpu.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models, one round")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    torch.manual_seed(0)
    width = TINY_WIDTH if args.smoke else 1.0
    warmup, rounds = (1, 1) if args.smoke else (1, args.rounds)
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    with tempfile.TemporaryDirectory() as tmp:
        cfg = get_config(
            "shapes_cpu", batch_size=args.batch, width_mult=width, amp="none", channels_last=False,
            grad_clip_norm=0.0, tensorboard=False, shapes_train_images=max(64, args.batch), shapes_val_images=0,
        )  # shapes: 5 classes + background
        trainer = Trainer(cfg, Path(tmp) / "run", device=device, progress=False)
        num_classes = trainer.num_classes
        images, boxes, labels = synthetic_batch(args.batch, num_classes, device, seed=0)
        images = images.contiguous()

        tv = torchvision_ssd(num_classes, args.smoke).train()
        tv_opt = torch.optim.SGD(tv.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        pictures = [(img * 0.25 + 0.5).clamp(0, 1).contiguous() for img in images]  # [3, 300, 300] in [0, 1]
        targets = [{"boxes": b * 300.0, "labels": lab} for b, lab in zip(boxes, labels)]  # pixels

        def ours_train() -> None:
            trainer.train_step(images, boxes, labels)

        def tv_train() -> None:
            losses = tv(pictures, targets)
            total = sum(losses.values())
            tv_opt.zero_grad(set_to_none=True)
            total.backward()
            tv_opt.step()

        train_s = alternate({"ssd_tutorial": ours_train, "torchvision": tv_train}, warmup, rounds)

        priors = default_boxes()
        model = trainer.model.eval()
        tv.eval()
        one = images[:1]

        @torch.inference_mode()
        def ours_infer() -> None:
            loc, conf_logits = model(one)
            detect(loc, conf_logits, priors, candidates_per_class=400)

        @torch.inference_mode()
        def tv_infer() -> None:
            tv(pictures[:1])

        infer_s = alternate({"ssd_tutorial": ours_infer, "torchvision": tv_infer}, warmup, rounds)

    results = {
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores visible)",
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "smoke": args.smoke,
        "settings": {"batch": args.batch, "width_mult": width, "warmup": warmup, "rounds": rounds,
                     "num_classes": num_classes, "statistic": "median seconds, calls interleaved"},
        "train_seconds_per_step": {k: round(v, 4) for k, v in train_s.items()},
        "train_img_s": {k: round(args.batch / v, 3) for k, v in train_s.items()},
        "inference_seconds_b1": {k: round(v, 4) for k, v in infer_s.items()},
        "inference_img_s": {k: round(1 / v, 3) for k, v in infer_s.items()},
        "ratios": {
            "train_vs_torchvision": round(train_s["torchvision"] / train_s["ssd_tutorial"], 3),  # goal >= 1
            "inference_vs_torchvision": round(infer_s["torchvision"] / infer_s["ssd_tutorial"], 3),
        },
        "total_seconds": round(time.perf_counter() - t0, 1),
        # other processes on the machine slow both models alike (calls are interleaved), but
        # make the absolute numbers noisy: the 1-minute load average at start and end
        "load_average": [load_start, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
    }
    (out / "cpu.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
