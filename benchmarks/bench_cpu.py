"""CPU speed of ssd_tutorial against torchvision's SSD300, every row in one interleaved
run.

    python benchmarks/bench_cpu.py --out benchmarks/results  # all (~5-10 min, 2 cores)
    python benchmarks/bench_cpu.py --out OUT_DIR --smoke     # tiny models, one round
    python benchmarks/bench_cpu.py --table benchmarks/results/cpu.json  # README table

Rows (ratio = torchvision's median time / ours: above 1 means ours is faster):

* ``train_full`` / ``train_tiny``: one training step (forward, target building, loss,
  backward, SGD step) at batch 2 on random 300x300 inputs with 1-4 random boxes, random
  weights.  Ours: ``Trainer.train_step`` with the ``shapes_cpu`` preset (width 1.0 /
  0.125; its memory format, amp off); torchvision: ``ssd300_vgg16`` returning its losses
  (full), or torchvision's ``SSD`` class on our tiny trunk (the same network: the row
  compares everything around it).
* ``forward_b1``: the network alone at batch 1, both float32 (ours in channels_last, as
  ``Predictor`` runs it on a CPU); ``forward_b1_auto``: ours as ``Predictor`` runs it
  here (``precision="auto"``: bf16 autocast on a CPU with native bf16) vs torchvision's
  float32.
* ``detect_b{1,32,64}_{dense,peaky}``: ``inference.detect`` vs
  ``SSD.postprocess_detections`` fed the same outputs (8732 default boxes, 21 classes,
  torchvision's 400 candidates per class).
  Dense: random logits (an untrained model: ~8000 candidates per image); peaky: a
  trained model's look (``bench_inference.synthetic_outputs``).
* ``build_targets_b32``: ``matching.build_targets`` vs torchvision's per-image
  ``SSDMatcher`` + ``BoxCoder`` loop (``bench_targets``), 32 VOC-like scenes.
* ``end_to_end_b1``: one 500x375 uint8 image to detections in its pixels:
  ``Predictor(model)``
  (defaults) vs torchvision's eval ``ssd300_vgg16`` (the image as float in [0, 1]),
  random weights, 21 classes, the same thresholds.

Rounds are interleaved: each round runs every row once, ours and torchvision's back to
back (AB, then BA the next round), so a busy machine slows both alike; the median per
row is reported with the range of the per-round ratios (how noisy the run was).  Writes
``cpu.json``.
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
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_gpu import synthetic_batch, torchvision_ssd  # noqa: E402
from bench_inference import synthetic_outputs  # noqa: E402
from bench_targets import random_batch, torchvision_targets  # noqa: E402

from ssd_tutorial.boxes import cxcywh_to_xyxy  # noqa: E402
from ssd_tutorial.config import get_config  # noqa: E402
from ssd_tutorial.default_boxes import default_boxes  # noqa: E402
from ssd_tutorial.inference import Predictor, detect  # noqa: E402
from ssd_tutorial.matching import build_targets  # noqa: E402
from ssd_tutorial.model import SSD300, TINY_WIDTH  # noqa: E402
from ssd_tutorial.trainer import Trainer  # noqa: E402

Row = tuple[Callable[[], Any], Callable[[], Any]]  # (ours, torchvision's)


def interleaved(
    rows: dict[str, Row], warmup: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """Median seconds of each row's two functions, every row run once per round, the
    pair's order reversed every other round (AB, BA, ...); also the range of the
    per-round ratios."""
    for ours, theirs in rows.values():
        for _ in range(warmup):
            ours()
            theirs()
    times: dict[str, tuple[list[float], list[float]]] = {
        name: ([], []) for name in rows
    }
    for k in range(rounds):
        for name, (ours, theirs) in rows.items():
            pair = [(0, ours), (1, theirs)] if k % 2 == 0 else [(1, theirs), (0, ours)]
            for side, fn in pair:
                start = time.perf_counter()
                fn()
                times[name][side].append(time.perf_counter() - start)
    out = {}
    for name, (ours_t, theirs_t) in times.items():
        ratios = [t / o for o, t in zip(ours_t, theirs_t)]
        ours_s, theirs_s = statistics.median(ours_t), statistics.median(theirs_t)
        out[name] = {
            "ssd_tutorial_s": round(ours_s, 5),
            "torchvision_s": round(theirs_s, 5),
            "ratio": round(theirs_s / ours_s, 3),
            "round_ratios_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
            # the least disturbed calls
            "ratio_of_fastest_rounds": round(min(theirs_t) / min(ours_t), 3),
        }
    return out


class _Trunk(nn.Module):
    """Our SSD300's six source maps as the ``OrderedDict`` torchvision's ``SSD`` class
    wants."""

    def __init__(self, model: SSD300) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((str(i), m) for i, m in enumerate(self.model.source_maps(x)))


def torchvision_on_our_trunk(num_classes: int, width: float) -> nn.Module:
    """torchvision's ``SSD`` (its transform, anchors, matcher, loss, post-processing) on
    the trunk of our SSD300 of ``width``: the same network as ours, torchvision's
    machinery around it."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    # ssd300_vgg16's
    anchors = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    trunk = _Trunk(
        SSD300(num_classes=num_classes, backbone_weights=None, width_mult=width)
    )
    return SSD(trunk, anchors, (300, 300), num_classes)


def dense_outputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``loc [B, 8732, 4]`` and logits ``[B, 8732, 21]``: an untrained model's
    outputs."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 8732, 4, generator=g), torch.randn(
        batch, 8732, 21, generator=g
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for cpu.json")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models, small batches, one round"
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; smoke: 1)",
    )
    parser.add_argument(
        "--table", help="print the README table of this cpu.json and stop"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return {}
    if not args.out:
        parser.error("--out is required (or --table)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or (1 if args.smoke else threads))
    try:
        return _run(args, out)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    smoke = args.smoke
    full_width = TINY_WIDTH if smoke else 1.0
    warmup, rounds = (0, 1) if smoke else (1, args.rounds)
    detect_batches = (1,) if smoke else (1, 32, 64)
    targets_batch = 4 if smoke else 32
    t0 = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows: dict[str, Row] = {}

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        # -- training steps (gradients on inside the steps)
        trainers = {}
        for name, width in (("train_full", full_width), ("train_tiny", TINY_WIDTH)):
            cfg = get_config(
                "shapes_cpu",
                batch_size=2,
                width_mult=width,
                grad_clip_norm=0.0,
                tensorboard=False,
                shapes_train_images=64,
                shapes_val_images=0,
            )
            trainer = Trainer(
                cfg, Path(tmp) / name, device=torch.device("cpu"), progress=False
            )
            images, boxes, labels = synthetic_batch(
                2, trainer.num_classes, torch.device("cpu"), seed=0
            )
            # as a loader gives them; train_step applies the preset's format
            images = images.contiguous()
            if name == "train_full" and not smoke:
                tv = torchvision_ssd(trainer.num_classes, smoke=False)
            else:
                tv = torchvision_on_our_trunk(trainer.num_classes, width)
            tv.train()
            opt = torch.optim.SGD(
                tv.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4
            )
            # [3, 300, 300] in [0, 1]
            pictures = [(img * 0.25 + 0.5).clamp(0, 1).contiguous() for img in images]
            # pixels
            targets = [
                {"boxes": b * 300.0, "labels": lab} for b, lab in zip(boxes, labels)
            ]
            trainers[name] = trainer

            def ours_step(
                trainer=trainer, images=images, boxes=boxes, labels=labels
            ) -> None:
                with torch.enable_grad():
                    trainer.train_step(images, boxes, labels)

            def tv_step(tv=tv, opt=opt, pictures=pictures, targets=targets) -> None:
                with torch.enable_grad():
                    losses = tv(pictures, targets)
                    opt.zero_grad(set_to_none=True)
                    sum(losses.values()).backward()
                    opt.step()

            rows[name] = (ours_step, tv_step)

        # -- the network alone, batch 1 (21 classes, random weights)
        ours_model = SSD300(
            num_classes=21, backbone_weights=None, width_mult=full_width
        )
        # on a CPU: channels_last, and bf16 where native (precision="auto")
        predictor = Predictor(ours_model)
        tv_eval = (
            torchvision_ssd(21, smoke=False)
            if not smoke
            else torchvision_on_our_trunk(21, full_width)
        ).eval()
        x = torch.randn(1, 3, 300, 300)
        x_last = x.contiguous(memory_format=torch.channels_last)

        def ours_forward() -> None:
            ours_model(x_last)

        def ours_forward_auto() -> None:
            with torch.autocast(
                "cpu", dtype=torch.bfloat16, enabled=predictor.precision == "bf16"
            ):
                ours_model(x_last)

        def tv_forward() -> None:
            tv_eval.head(list(tv_eval.backbone(x).values()))

        rows["forward_b1"] = (ours_forward, tv_forward)
        rows["forward_b1_auto"] = (ours_forward_auto, tv_forward)

        # -- post-processing on the same outputs
        priors = default_boxes()  # [8732, 4] cxcywh
        # torchvision's anchors: xyxy pixels
        anchors_px = cxcywh_to_xyxy(priors) * 300.0
        post = torchvision_ssd(
            21, smoke=True
        ).eval()  # only its postprocess_detections is used
        (
            post.score_thresh,
            post.nms_thresh,
            post.detections_per_img,
            post.topk_candidates,
        ) = 0.01, 0.45, 200, 400
        for batch in detect_batches:
            for kind in ("dense", "peaky"):
                loc, logits = (
                    dense_outputs(batch, seed=batch)
                    if kind == "dense"
                    else synthetic_outputs(batch, 8732, 21, seed=batch)
                )
                head = {"bbox_regression": loc, "cls_logits": logits}

                def ours_detect(loc=loc, logits=logits) -> None:
                    detect(loc, logits, priors)

                def tv_detect(head=head, batch=batch) -> None:
                    post.postprocess_detections(
                        head, [anchors_px] * batch, [(300, 300)] * batch
                    )

                rows[f"detect_b{batch}_{kind}"] = (ours_detect, tv_detect)

        # -- training targets
        from torchvision.models.detection._utils import BoxCoder, SSDMatcher

        scene_boxes, scene_labels = random_batch(targets_batch, seed=0)
        matcher, coder = SSDMatcher(0.5), BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        anchors = cxcywh_to_xyxy(priors)
        rows[f"build_targets_b{targets_batch}"] = (
            lambda: build_targets(scene_boxes, scene_labels, priors),
            lambda: torchvision_targets(
                scene_boxes, scene_labels, anchors, matcher, coder
            ),
        )

        # -- one image to detections
        g = torch.Generator().manual_seed(1)
        # a VOC-sized image
        photo = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8, generator=g)

        def ours_end_to_end() -> None:
            predictor([photo])

        def tv_end_to_end() -> None:
            tv_eval([photo.float() / 255.0])

        rows["end_to_end_b1"] = (ours_end_to_end, tv_end_to_end)

        medians = interleaved(rows, warmup, rounds)

    results = {
        "device": f"cpu ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores visible)",
        "cpu_native_bf16": predictor.precision == "bf16",
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "smoke": smoke,
        "settings": {
            "width_full": full_width,
            "width_tiny": TINY_WIDTH,
            "train_batch": 2,
            "warmup": warmup,
            "rounds": rounds,
            "train_channels_last": trainers["train_full"].cfg.channels_last,
            "predictor": {
                "precision": predictor.precision,
                "channels_last": predictor.channels_last,
            },
            "statistic": "median seconds per call over the rounds, rows interleaved; "
            "ratio = torchvision / ours",
        },
        "rows": medians,
        "min_ratio": min(r["ratio"] for r in medians.values()),
        "total_seconds": round(time.perf_counter() - t0, 1),
        # other processes slow both sides alike (interleaved), but make absolute numbers
        # noisy:
        # the 1, 5 and 15-minute load averages at the start and at the end
        "load_average": [
            [round(v, 2) for v in load_start] if load_start else None,
            [round(v, 2) for v in os.getloadavg()]
            if hasattr(os, "getloadavg")
            else None,
        ],
    }
    (out / "cpu.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    print(markdown_table(results))
    return results


ROW_TITLES = {
    "train_full": "train step, SSD300, batch 2",
    "train_tiny": "train step, tiny (width 1/8), batch 2",
    "forward_b1": "network forward, batch 1, float32",
    "forward_b1_auto": "network forward, batch 1, ours as Predictor runs it",
    "end_to_end_b1": "one image to detections (Predictor vs eval ssd300_vgg16)",
}


def markdown_table(results: dict[str, Any]) -> str:
    """The README's table of a ``cpu.json``: one line per row, ours vs torchvision."""
    lines = [
        "| row | ssd_tutorial (ms) | torchvision (ms) | ratio | per-round ratios |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in results["rows"].items():
        title = ROW_TITLES.get(name)
        if title is None:
            if name.startswith("detect_"):
                _, batch, kind = name.split("_")
                title = f"detect, batch {batch[1:]}, {kind} scores"
            else:
                title = name.replace("_b", ", batch ").replace("_", " ")
        low, high = row["round_ratios_min_max"]
        lines.append(
            f"| {title} | {row['ssd_tutorial_s'] * 1e3:.1f} | "
            f"{row['torchvision_s'] * 1e3:.1f} | {row['ratio']:.2f}x | "
            f"{low:.2f}-{high:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
