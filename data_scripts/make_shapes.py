"""Write a synthetic ShapesDataset split to disk in PASCAL VOC layout.

    python data_scripts/make_shapes.py OUT_DIR --num-images 500 --split train --seed 0

OUT_DIR gets JPEGImages/<id>.jpg, Annotations/<id>.xml and ImageSets/Main/<split>.txt, so
``VOCDataset(OUT_DIR, split, class_names=SHAPES_CLASSES)`` reads it back (boxes in the devkit's
1-based convention, see ``ssd_tutorial.data.write_voc_split``).  Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssd_tutorial.cli import add_debug_flag, int_at_least, run_main
from ssd_tutorial.data import SHAPES_CLASSES, ShapesDataset, write_voc_split


def make_shapes(
    out_dir: str | Path, num_images: int, split: str = "train", seed: int = 0, image_size: int = 300, quality: int = 90
) -> Path:
    """Generate ``num_images`` shapes images with ``seed`` and write them under ``out_dir`` (VOC layout)."""
    split_file = Path(out_dir) / "ImageSets" / "Main" / f"{split}.txt"
    if split_file.exists():
        split_file.unlink()  # rewrite the split rather than append to an old one
    dataset = ShapesDataset(num_images, image_size=image_size, seed=seed)
    return write_voc_split(dataset, out_dir, split, SHAPES_CLASSES, quality=quality)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-images", type=int_at_least(0), default=500)
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (1-100)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be 1 to 100, got {args.quality}")
    return run_main(lambda: _main(args), args.debug)


def _main(args: argparse.Namespace) -> int:
    root = make_shapes(args.out_dir, args.num_images, args.split, args.seed, args.image_size, args.quality)
    print(f"wrote {args.num_images} images ({args.split}) to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
