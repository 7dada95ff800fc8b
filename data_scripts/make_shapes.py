"""Write a synthetic ShapesDataset split to disk in PASCAL VOC layout or COCO format.

    python data_scripts/make_shapes.py OUT_DIR --num-images 500 --split train --seed 0
    python data_scripts/make_shapes.py OUT_DIR --num-images 500 --split train \\
        --format coco

VOC: OUT_DIR gets JPEGImages/<id>.jpg, Annotations/<id>.xml and
ImageSets/Main/<split>.txt, so ``VOCDataset(OUT_DIR, split,
class_names=SHAPES_CLASSES)`` reads it back (boxes in the devkit's 1-based convention,
see ``ssd_tutorial.data.write_voc_split``).  COCO: OUT_DIR gets images/<id>.jpg and
<split>.json (bbox = the shapes' pixel edges, [x, y, w, h]; category ids 1..5, or
--category-ids to number them as a labelling tool might), which ``COCODataset(OUT_DIR /
"<split>.json", OUT_DIR / "images")`` reads back.  Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssd_tutorial.cli import add_debug_flag, int_at_least, run_main
from ssd_tutorial.data import (
    SHAPES_CLASSES,
    ShapesDataset,
    write_coco_json,
    write_voc_split,
)


def make_shapes(
    out_dir: str | Path,
    num_images: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 300,
    quality: int = 90,
) -> Path:
    """Generate ``num_images`` shapes images with ``seed`` and write them under
    ``out_dir`` (VOC layout)."""
    split_file = Path(out_dir) / "ImageSets" / "Main" / f"{split}.txt"
    if split_file.exists():
        split_file.unlink()  # rewrite the split rather than append to an old one
    dataset = ShapesDataset(num_images, image_size=image_size, seed=seed)
    return write_voc_split(dataset, out_dir, split, SHAPES_CLASSES, quality=quality)


def make_shapes_coco(
    out_dir: str | Path,
    num_images: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 300,
    quality: int = 90,
    category_ids: list[int] | None = None,
) -> Path:
    """Generate ``num_images`` shapes images with ``seed``: ``out_dir/images/*.jpg`` and
    ``out_dir/<split>.json`` (COCO format).  Returns the JSON's path."""
    out_dir = Path(out_dir)
    dataset = ShapesDataset(num_images, image_size=image_size, seed=seed)
    return write_coco_json(
        dataset,
        out_dir / f"{split}.json",
        SHAPES_CLASSES,
        category_ids,
        images_dir=out_dir / "images",
        quality=quality,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-images", type=int_at_least(0), default=500)
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (1-100)")
    parser.add_argument("--format", choices=("voc", "coco"), default="voc")
    parser.add_argument(
        "--category-ids",
        default=None,
        help="--format coco: the 5 classes' ids, comma-separated (default 1,2,3,4,5)",
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be 1 to 100, got {args.quality}")
    return run_main(lambda: _main(args), args.debug)


def _main(args: argparse.Namespace) -> int:
    if args.format == "coco":
        ids = None
        if args.category_ids:
            try:
                ids = [int(v) for v in args.category_ids.split(",")]
            except ValueError:
                raise ValueError(
                    f"--category-ids must be whole numbers, got {args.category_ids!r}"
                ) from None
        out = make_shapes_coco(
            args.out_dir,
            args.num_images,
            args.split,
            args.seed,
            args.image_size,
            args.quality,
            ids,
        )
    else:
        out = make_shapes(
            args.out_dir,
            args.num_images,
            args.split,
            args.seed,
            args.image_size,
            args.quality,
        )
    print(f"wrote {args.num_images} images ({args.split}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
