"""Images/s of the training input pipeline: JPEG decode + SSD augmentation + collate.

    python benchmarks/bench_data.py              # this machine, N = cpu count workers
    python benchmarks/bench_data.py --workers 16 --out DIR  # e.g. on the GPU machine

Compares, in the same run and on the same JPEGs:

* ours: ``VOCDataset(..., transform=SSDAugmentation(300))`` + ``detection_collate``;
* ours, uint8 out: ``SSDAugmentation(300, normalize=False)``, what the Trainer's
  DataLoader workers run (the GPU normalizes the batch);
* torchvision.transforms.v2: RandomPhotometricDistort, RandomZoomOut (mean fill, up to
  4x), RandomIoUCrop, RandomHorizontalFlip, Resize(300, 300), SanitizeBoundingBoxes,
  ToDtype + Normalize -- the same steps, decoded with the same torchvision.io call;

each with 0 DataLoader workers (one process, one thread) and with N workers, and prints
the ratio ours / torchvision.  The JPEGs are ../shared/data/voc2012_mini100 when present
(real VOC sizes, the relevant case), else a shapes set written with make_shapes into a
temp dir.  It also times ShapesDataset's on-the-fly generation.  Results go to
``<out>/data_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ssd_tutorial.augmentation import IMAGENET_MEAN, IMAGENET_STD, SSDAugmentation
from ssd_tutorial.data import (
    SHAPES_CLASSES,
    VOC_CLASSES,
    ShapesDataset,
    VOCDataset,
    detection_collate,
    read_image,
)

REPO = Path(__file__).resolve().parents[1]
MINI100 = REPO / ".." / "shared" / "data" / "voc2012_mini100"


class TorchvisionV2Dataset(Dataset):
    """The same JPEGs and annotations through an equivalent torchvision.transforms.v2
    pipeline."""

    def __init__(self, voc: VOCDataset, size: int = 300) -> None:
        from torchvision.transforms import v2

        self.voc = voc
        fill = [round(255 * m) for m in IMAGENET_MEAN]
        self.transform = v2.Compose(
            [
                v2.RandomPhotometricDistort(p=0.5),
                v2.RandomZoomOut(fill=fill, side_range=(1.0, 4.0), p=0.5),
                v2.RandomIoUCrop(),
                v2.RandomHorizontalFlip(p=0.5),
                v2.Resize((size, size)),
                v2.SanitizeBoundingBoxes(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
            ]
        )

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        image_id = self.voc.ids[index]
        ann = self.voc.annotation(index)
        # same decoder as ours
        image = read_image(self.voc.root / "JPEGImages" / f"{image_id}.jpg")
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                ann["boxes"], format="XYXY", canvas_size=tuple(image.shape[1:])
            ),
            "labels": ann["labels"],
        }
        image, target = self.transform(tv_tensors.Image(image), target)
        return image.as_subclass(torch.Tensor), target


def images_per_second(
    dataset: Dataset, workers: int, batch_size: int, repeats: int
) -> float:
    """Time ``repeats`` passes over ``dataset`` after one warm-up pass (workers already
    started)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=detection_collate,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up: start workers, fill caches
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for images, _targets in loader:
            count += images.shape[0]
    return count / (time.perf_counter() - start)


def shapes_rate(num: int = 300) -> float:
    """ShapesDataset generation alone, one process: images/s."""
    dataset = ShapesDataset(num, seed=123)
    start = time.perf_counter()
    for i in range(num):
        dataset[i]
    return num / (time.perf_counter() - start)


def device_info() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "cuda_device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DataLoader workers for the N-worker run",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--name",
        default=None,
        help="results file name (default data_cpu.json / data_<gpu>.json)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed passes over the images"
    )
    parser.add_argument(
        "--source",
        choices=("auto", "mini100", "shapes"),
        default="auto",
        help="JPEGs to use: ../shared/data/voc2012_mini100, shapes written to a temp "
        "dir, or auto (mini100 if present)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="any VOC-layout folder with VOC classes (trainval)",
    )
    parser.add_argument(
        "--shapes-images",
        type=int,
        default=200,
        help="images to write when falling back to shapes",
    )
    args = parser.parse_args(argv)
    # one core for the 0-worker run; workers use one thread each anyway
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.data is not None:
            root, class_names, source = args.data, VOC_CLASSES, str(args.data.name)
        elif args.source == "mini100" or (args.source == "auto" and MINI100.is_dir()):
            root, class_names, source = (
                MINI100,
                VOC_CLASSES,
                "voc2012_mini100 (100 real VOC JPEGs, ~500x375)",
            )
        else:
            from ssd_tutorial.data import write_voc_split

            root = Path(tmp) / "shapes"
            write_voc_split(
                ShapesDataset(args.shapes_images, seed=7),
                root,
                "trainval",
                SHAPES_CLASSES,
            )
            class_names, source = (
                SHAPES_CLASSES,
                f"{args.shapes_images} shapes JPEGs, 300x300 (make_shapes)",
            )
        ours = VOCDataset(
            root, "trainval", transform=SSDAugmentation(300), class_names=class_names
        )
        ours_uint8 = VOCDataset(
            root,
            "trainval",
            transform=SSDAugmentation(300, normalize=False),
            class_names=class_names,
        )
        theirs = TorchvisionV2Dataset(
            VOCDataset(root, "trainval", class_names=class_names)
        )
        results: dict = {
            "images": len(ours),
            "data": source,
            "batch_size": args.batch_size,
        }
        for workers in sorted({0, args.workers}):
            row = {}
            for name, dataset in (
                ("ours", ours),
                ("ours_uint8_out", ours_uint8),
                ("torchvision_v2", theirs),
            ):
                row[name] = round(
                    images_per_second(dataset, workers, args.batch_size, args.repeats),
                    1,
                )
            row["ratio_ours_over_torchvision"] = round(
                row["ours"] / row["torchvision_v2"], 3
            )
            row["ratio_ours_uint8_out_over_torchvision"] = round(
                row["ours_uint8_out"] / row["torchvision_v2"], 3
            )
            results[f"workers_{workers}"] = row
            print(
                f"workers={workers}: ours {row['ours']} img/s, ours uint8 out "
                f"{row['ours_uint8_out']} img/s, torchvision v2 "
                f"{row['torchvision_v2']} img/s, ratios "
                f"{row['ratio_ours_over_torchvision']} / "
                f"{row['ratio_ours_uint8_out_over_torchvision']}",
                flush=True,
            )
    results["shapes_generation_img_per_s_1proc"] = round(shapes_rate(), 1)
    print(
        f"ShapesDataset generation: {results['shapes_generation_img_per_s_1proc']} "
        "img/s (1 process)"
    )
    info = device_info()
    report = {
        "benchmark": "data pipeline: decode + augment + collate",
        "device": info,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or (
        "data_cpu.json" if info["cuda_device"] is None else "data_gpu_machine.json"
    )
    (args.out / name).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
