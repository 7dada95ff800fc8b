"""Train SSD from the command line: ``python -m ssd_tutorial.train``.

    python -m ssd_tutorial.train --config shapes_cpu --output-dir runs/tiny
    python -m ssd_tutorial.train --config shapes_gpu --output-dir runs/shapes \\
        --set lr=0.002
    torchrun --nproc-per-node 4 -m ssd_tutorial.train --config ssd300_voc0712 \\
        --output-dir runs/voc
    python -m ssd_tutorial.train --config shapes_cpu --output-dir runs/tiny --resume

The work is done by the training layer: :mod:`ssd_tutorial.trainer` (the loop, exact
resume, several processes), :mod:`ssd_tutorial.sampling` (the data order),
:mod:`ssd_tutorial.optim`, :mod:`ssd_tutorial.recipes` (datasets, models, initial
weights), :mod:`ssd_tutorial.rundir` and :mod:`ssd_tutorial.validate`.  This module
parses the flags, and re-exports the names the chapters import from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ssd_tutorial.checkpoint import latest_checkpoint
from ssd_tutorial.cli import USER_ERRORS, add_debug_flag, int_at_least, run_main
from ssd_tutorial.config import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    get_config,
)
from ssd_tutorial.optim import (
    build_optimizer,
    build_scheduler,
    lr_factor,
    parameter_groups,
)
from ssd_tutorial.recipes import (
    build_datasets,
    build_model,
    class_names_for,
)
from ssd_tutorial.rundir import run_files
from ssd_tutorial.sampling import ResumableBatchSampler, SeededItems

# its old name, re-exported
from ssd_tutorial.sampling import collate_to_flat as _collate_to_flat  # noqa: F401
from ssd_tutorial.trainer import Trainer, compute_loss
from ssd_tutorial.validate import evaluate_model

# The CLI (train, main), and the training layer's names that chapters, tests and
# benchmarks import from here (re-exported).
__all__ = [
    "ResumableBatchSampler",
    "SeededItems",
    "Trainer",
    "build_datasets",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "class_names_for",
    "compute_loss",
    "evaluate_model",
    "lr_factor",
    "main",
    "parameter_groups",
    "run_files",
    "train",
]


def train(
    cfg: TrainConfig,
    output_dir: str | Path,
    max_iters: int | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train with ``cfg``, writing checkpoints and metrics to ``output_dir``; returns a
    summary.

    ``max_iters`` stops early at that iteration (the schedule still follows
    ``cfg.max_iters``), which is how a run is split into parts: ``train(cfg, d,
    max_iters=k)`` then ``train(cfg, d, resume=True)`` equals one ``train(cfg, d)``.  A
    folder that already holds a run is refused unless ``resume`` or ``overwrite``
    (delete that run's files) is given.
    """
    trainer = Trainer(
        cfg,
        output_dir,
        resume=resume,
        device=device,
        progress=progress,
        overwrite=overwrite,
    )
    try:
        return trainer.fit(stop_at=max_iters)
    finally:
        trainer.close()


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_tutorial.train",
        description="Train SSD. Any config field can be overridden: --set field=value "
        "or --field value.",
    )
    parser.add_argument(
        "--config",
        default="shapes_cpu",
        help=f"preset name: {', '.join(sorted(PRESETS))}",
    )
    parser.add_argument(
        "--max-iters",
        type=int_at_least(1),
        default=None,
        help="stop at this iteration (schedule unchanged)",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="checkpoints and metrics (default runs/<config>)",
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue from last.pt in the output dir"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="the output dir holds a run: delete its checkpoints and metrics, start "
        "afresh",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="your own data: a VOC-layout folder or a COCO-format .json (see --images, "
        "--val-data, --val-fraction); class names come from it",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="start from: imagenet (VGG16 backbone), torchvision-coco, "
        "ssd-pytorch-voc, "
        "or a checkpoint path; heads for another class count are re-initialized",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="train without the files the up-front data check finds bad",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m ssd_tutorial.train [flags]``: train, print the summary as JSON; the
    exit status."""
    args, overrides = _parse_args(argv)
    # KeyError: an unknown preset or field; FloatingPointError: a diverging run (its
    # message says what to do).
    return run_main(
        lambda: _main(args, overrides),
        args.debug,
        USER_ERRORS + (KeyError, FloatingPointError),
    )


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """--data, --weights and --skip-bad as the config overrides they stand for."""
    extra = []
    if args.data is not None:
        extra += ["--dataset", "files", "--data", args.data]
    if args.weights == "imagenet":
        extra += ["--backbone_weights", "imagenet"]
    elif args.weights is not None:
        extra += ["--weights", args.weights]
    if args.skip_bad:
        extra += ["--skip_bad", "true"]
    return extra


def _main(args: argparse.Namespace, overrides: list[str]) -> int:
    overrides = _flag_overrides(args) + overrides
    cfg = apply_overrides(get_config(args.config), overrides)
    output_dir = Path(args.output_dir or f"runs/{cfg.name}")
    saved = output_dir / "config.json"
    if args.resume and latest_checkpoint(output_dir) is not None and saved.is_file():
        # The config the run started with, plus this command's overrides (not the
        # preset's defaults).
        cfg = apply_overrides(
            config_from_dict(json.loads(saved.read_text())), overrides
        )
    summary = train(
        cfg,
        output_dir,
        max_iters=args.max_iters,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        short = {k: v for k, v in summary.items() if k != "losses"}
        print(json.dumps(short))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
