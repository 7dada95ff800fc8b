"""Images/s of the Trainer's input path on real JPEGs, against an earlier version of the
package.

    python benchmarks/bench_loader.py                        # this checkout only
    python benchmarks/bench_loader.py --baseline 75f540a  # and that commit, interleaved

What the Trainer's DataLoader workers do for every item: ``SeededItems`` (per-item
seeding), ``VOCDataset`` (XML + JPEG decode) with ``SSDAugmentation`` (uint8 out where
the version has it, as the Trainer asks), and the Trainer's flat collate.  The steady
rate is timed after the start-up and the prefetch buffer have been consumed.  With
``--baseline REV`` the same measurement runs on a ``git worktree`` of that revision, in
a separate process, alternating with this checkout ``--rounds`` times; the medians and
their ratio are printed and written to ``<out>/loader_<device>.json``.  The JPEGs are
../shared/data/voc2012_mini100 (or ``--data``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINI100 = REPO / ".." / "shared" / "data" / "voc2012_mini100"


def measure(
    data: Path, workers: int, batch_size: int, batches: int, classes: str = "voc"
) -> dict:
    """One timed run of the loader in this process (the package found first on
    sys.path).

    ``classes``: ``"voc"`` (the 20 VOC classes) or ``"shapes"`` (a folder written by
    make_shapes).
    """
    import torch
    from torch.utils.data import DataLoader

    from ssd_tutorial.augmentation import SSDAugmentation
    from ssd_tutorial.data import SHAPES_CLASSES, VOC_CLASSES, VOCDataset
    from ssd_tutorial.train import ResumableBatchSampler, SeededItems, _collate_to_flat

    torch.set_num_threads(1)
    uint8 = "normalize" in inspect.signature(SSDAugmentation).parameters
    transform = SSDAugmentation(300, normalize=False) if uint8 else SSDAugmentation(300)
    names = {"voc": VOC_CLASSES, "shapes": SHAPES_CLASSES}[classes]
    dataset = VOCDataset(data, "trainval", transform=transform, class_names=names)
    skip = max(6, 3 * workers)  # start-up and the prefetch buffer (prefetch_factor 2)
    sampler = ResumableBatchSampler(
        len(dataset), batch_size, 0, 0, skip + batches, 0, 1
    )
    loader = DataLoader(
        SeededItems(dataset, 0),
        batch_sampler=sampler,
        collate_fn=_collate_to_flat,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None,
    )
    it = iter(loader)
    for _ in range(skip):
        next(it)
    start, count = time.perf_counter(), 0
    for images, *_ in it:
        count += images.shape[0]
    return {"img_s": count / (time.perf_counter() - start), "uint8_out": uint8}


def run_in(tree: Path, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh process that imports the package from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from bench_loader import "
        "measure; from pathlib import Path; "
        "print(json.dumps(measure(Path(sys.argv[2]), *map(int, sys.argv[3:6]), "
        "sys.argv[6])))"
    )
    argv = [
        str(REPO / "benchmarks"),
        str(args.data),
        str(args.workers),
        str(args.batch_size),
        str(args.batches),
        args.classes,
    ]
    out = subprocess.run(
        [sys.executable, "-c", code, *argv],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=MINI100, help="a VOC-layout folder"
    )
    parser.add_argument(
        "--classes",
        choices=("voc", "shapes"),
        default="voc",
        help="the folder's class names",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=50, help="timed batches per run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved runs of each version"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="git revision to compare with (a worktree in a temp dir)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.data = args.data.resolve()
    if not (args.data / "ImageSets" / "Main" / "trainval.txt").is_file():
        raise SystemExit(
            f"{args.data}: not a VOC-layout folder with ImageSets/Main/trainval.txt "
            "(use --data)"
        )

    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this checkout": REPO}
        if args.baseline:
            base = Path(tmp) / "baseline"
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(REPO),
                    "worktree",
                    "add",
                    "--detach",
                    "-q",
                    str(base),
                    args.baseline,
                ],
                check=True,
            )
            trees[f"baseline {args.baseline}"] = base
        rates: dict[str, list[float]] = {name: [] for name in trees}
        uint8: dict[str, bool] = {}
        try:
            for round_ in range(args.rounds):
                for name, tree in trees.items():
                    result = run_in(tree, args)
                    rates[name].append(round(result["img_s"], 1))
                    uint8[name] = result["uint8_out"]
                    print(
                        f"round {round_ + 1}: {name}: {result['img_s']:.1f} img/s",
                        flush=True,
                    )
        finally:
            if args.baseline:
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(REPO),
                        "worktree",
                        "remove",
                        "--force",
                        str(base),
                    ],
                    check=False,
                )

    medians = {name: statistics.median(values) for name, values in rates.items()}
    report = {
        "benchmark": "the Trainer's input path: SeededItems + VOCDataset + "
        "SSDAugmentation + flat collate",
        "data": args.data.name,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
        "cpu_count": os.cpu_count(),
        "runs_img_s": rates,
        "median_img_s": medians,
        "uint8_out": uint8,
        "command": "python benchmarks/bench_loader.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    for name, value in medians.items():
        print(f"{name}: median {value:.1f} img/s (uint8 out: {uint8[name]})")
    if args.baseline:
        report["ratio_this_over_baseline"] = round(
            medians["this checkout"] / medians[f"baseline {args.baseline}"], 3
        )
        print(f"ratio this checkout / baseline: {report['ratio_this_over_baseline']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"loader_cpu_{args.workers}workers.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
