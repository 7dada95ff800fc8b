"""The recorded run of chapter 11: the book's tiny model fine-tuned on 160 raccoon
photos, on a CPU.

    # ~2 x 10 min on a quiet 2-core CPU
    python book/make_raccoon_run.py --data ../shared/data/raccoon

``--data`` is a VOC-layout folder with ``ImageSets/Main/train.txt`` and ``val.txt`` (the
raccoon set: 160 + 40 real photos, one class).  The script runs the package's three
command-line tools exactly as a reader would, and records each command beside what it
printed:

1. ``python -m ssd_tutorial.train --config finetune_cpu --data DATA --weights
   book/results/shapes_tiny.pt`` (the tiny SSD300 of chapter 10, trained on shapes: its
   confidence heads are re-made for one class, everything else is kept), and the same
   schedule from scratch (``--weights`` left out), so the chapter can show what the
   start point is worth;
2. ``python -m ssd_tutorial.evaluate`` on the 40 held-out photos (``val.txt``) for both
   runs;
3. ``python -m ssd_tutorial.detect`` with the fine-tuned model on four held-out photos.

It writes ``book/results/raccoon_tiny_cpu.json`` (commands, losses, mAP, the detections)
and ``book/results/raccoon_tiny_cpu.png`` (those four photos with their detections,
drawn small): chapter 11 reads these two files and does not need the photos to execute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "book" / "results"


def run(command: list[str], log: list[dict]) -> str:
    """Run one of the package's CLIs from the repository root; record the command and
    its output."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shown = " ".join(shlex.quote(c) for c in ["python", *command[1:]])
    print(f"$ {shown}   ({seconds:.0f} s)", flush=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    log.append(
        {
            "command": shown,
            "seconds": round(seconds, 1),
            "stdout": done.stdout.strip().splitlines()[-6:],
            "stderr": [line for line in done.stderr.splitlines() if "it/s" not in line][
                -8:
            ],
        }
    )
    return done.stdout


def losses(run_dir: Path) -> list[dict]:
    """The training log's rows (iteration, loss, loc, conf, lr), rounded."""
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    keep = ("iteration", "loss", "loc", "conf", "lr")
    return [{k: round(r[k], 5) for k in keep} for r in rows if "loss" in r]


def draw(detections_json: Path, truth: dict[str, list], out: Path) -> None:
    """The four held-out photos with their detections (orange) and the labelled boxes
    (green, dashed), two a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ssd_tutorial.data import read_image
    from ssd_tutorial.viz import draw_boxes, show_image

    report = json.loads(detections_json.read_text())
    fig, axes = plt.subplots(2, 2, figsize=(7, 6))
    for ax, item in zip(axes.flat, report["images"]):
        image = read_image(ROOT / item["image"])
        show_image(image, ax=ax, title=Path(item["image"]).stem)
        draw_boxes(
            ax, truth[Path(item["image"]).stem], colors="tab:green", linestyle="--"
        )
        dets = item["detections"]
        if dets:
            boxes = torch.tensor([d["box_xyxy_px"] for d in dets])
            labels = [f"{d['label']} {d['score']:.2f}" for d in dets]
            draw_boxes(ax, boxes, labels=labels, colors="tab:orange")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default="../shared/data/raccoon",
        help="VOC-layout folder with train.txt/val.txt",
    )
    parser.add_argument("--work-dir", default="runs/raccoon_tiny_cpu")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    data = Path(os.path.relpath(Path(args.data).resolve(), ROOT))
    work = Path(args.work_dir)
    val = sorted((ROOT / data / "ImageSets" / "Main" / "val.txt").read_text().split())
    py = sys.executable
    # The recipe: the finetune_cpu preset, longer, with the SSD augmentation on (160
    # photos are seen 15 times each in 300 iterations of 8: without it the model learns
    # them by heart).
    schedule = [
        "--max_iters",
        str(args.iters),
        "--lr_steps",
        str(int(args.iters * 0.8)),
        "--eval_every",
        "0",
        "--augment",
        "true",
        "--log_every",
        "10",
    ]
    log: list[dict] = []
    runs = {
        "finetuned": ["--weights", "book/results/shapes_tiny.pt"],
        "from_scratch": [],
    }
    summary: dict = {}
    for name, start in runs.items():
        out = work / name
        run(
            [
                py,
                "-m",
                "ssd_tutorial.train",
                "--config",
                "finetune_cpu",
                "--data",
                str(data),
                *start,
                "--output-dir",
                str(out),
                "--overwrite",
                "--no-progress",
                *schedule,
            ],
            log,
        )
        run(
            [
                py,
                "-m",
                "ssd_tutorial.evaluate",
                "--checkpoint",
                str(out / "last.pt"),
                "--dataset",
                "voc",
                "--root",
                str(data),
                "--split",
                "val",
                "--no-coco",
                "--output-dir",
                str(out / "eval"),
            ],
            log,
        )
        evaluation = json.loads((ROOT / out / "eval" / "evaluation.json").read_text())
        summary[name] = {
            "map50_11point": evaluation["voc_map50_11point"],
            "map50_allpoint": evaluation["voc_map50_allpoint"],
            "val_images": evaluation["images"],
            "val_objects": evaluation["objects"],
            "loss_curve": losses(ROOT / out),
        }
    photos = [str(data / "JPEGImages" / f"{i}.jpg") for i in val[:4]]
    run(
        [
            py,
            "-m",
            "ssd_tutorial.detect",
            *photos,
            "--checkpoint",
            str(work / "finetuned" / "last.pt"),
            "--output",
            str(work / "detect"),
            "--score-threshold",
            "0.4",
        ],
        log,
    )
    detections = ROOT / work / "detect" / "detections.json"
    from ssd_tutorial.data import VOCDataset

    labelled = VOCDataset(ROOT / data, "val", class_names=("raccoon",))
    truth = {}
    for image_id in val[:4]:
        target = labelled[labelled.ids.index(image_id)][1]
        truth[image_id] = [
            [round(v, 1) for v in box] for box in target["boxes"].tolist()
        ]
    draw(detections, truth, RESULTS / "raccoon_tiny_cpu.png")
    # Object sizes as SSD sees them, sqrt(w h) / sqrt(W H) after the resize to a square
    # (chapter 02 compares them with the default boxes' scales).
    training = VOCDataset(ROOT / data, "train", class_names=("raccoon",))
    sizes = []
    for k in range(len(training)):
        parsed = training.annotation(k)  # the XML: boxes and the <size> of the photo
        w, h = parsed["width"], parsed["height"]
        for x1, y1, x2, y2 in parsed["boxes"].tolist():
            sizes.append(round(((x2 - x1) * (y2 - y1) / (w * h)) ** 0.5, 3))
    import torch

    record = {
        "what": "tiny SSD300 (width 1/8) fine-tuned on the raccoon photos, 160 train / "
        "40 val",
        "data": "raccoon (github.com/datitran/raccoon_dataset, MIT): "
        "ImageSets/Main/train.txt, val.txt",
        "metric": "VOC AP at IoU 0.5 on the 40 val photos (evaluation.evaluate_voc)",
        "iterations": args.iters,
        "threads": args.threads,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "results": summary,
        "train_object_scales": sorted(sizes),
        "detections": [
            {
                "image": Path(i["image"]).name,
                "width": i["width"],
                "height": i["height"],
                "labelled_boxes_xyxy_px": truth[Path(i["image"]).stem],
                "detections": i["detections"],
            }
            for i in json.loads(detections.read_text())["images"]
        ],
        "commands": log,
    }
    (RESULTS / "raccoon_tiny_cpu.json").write_text(json.dumps(record, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: {m: v[m] for m in ("map50_11point", "map50_allpoint")}
                for k, v in summary.items()
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
