"""The ``ssd300_coco`` preset end to end on a COCO-format mini set made offline (shapes
as COCO JSON with COCO-like gaps in the category ids): COCODataset, COCO default boxes,
and the periodic evaluation by pycocotools.  The tiny model, a few iterations, one CPU
thread."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssd_tutorial.config import get_config
from ssd_tutorial.data import SHAPES_CLASSES, ShapesDataset, write_coco_json
from ssd_tutorial.default_boxes import SSD300_COCO, default_boxes
from ssd_tutorial.detect import load_stored_detector
from ssd_tutorial.own_data import open_data
from ssd_tutorial.train import train
from ssd_tutorial.validate import evaluate_model

CATEGORY_IDS = [1, 3, 18, 44, 90]  # COCO's 80 classes have ids 1..90 with gaps


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    for split, n, seed in (("train2017", 12, 0), ("val2017", 6, 500)):
        write_coco_json(
            ShapesDataset(n, seed=seed),
            root / "annotations" / f"instances_{split}.json",
            SHAPES_CLASSES,
            CATEGORY_IDS,
            images_dir=root / split,
        )
    cfg = get_config(
        "ssd300_coco",
        data=str(root / "annotations" / "instances_train2017.json"),
        images=str(root / "train2017"),
        val_data=str(root / "annotations" / "instances_val2017.json"),
        val_images=str(root / "val2017"),
        width_mult=0.125,
        backbone_weights=None,
        init="kaiming",
        batch_size=2,
        max_iters=3,
        warmup_iters=0,
        lr_steps=(100,),
        log_every=1,
        checkpoint_every=0,
        eval_every=3,
        eval_images=6,
        num_workers=0,
        pin_memory=False,
        amp="none",
        channels_last=False,
        tensorboard=False,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train(cfg, root / "run", progress=False)
    finally:
        torch.set_num_threads(before)
    return {"root": root, "run": root / "run", "summary": summary, "cfg": cfg}


def test_the_preset_trains_on_coco_json(coco_run):
    summary = coco_run["summary"]
    assert summary["iterations"] == 3
    assert all(math.isfinite(r["loss"]) for r in summary["losses"])


def test_periodic_evaluation_reports_pycocotools_ap(coco_run):
    records = [
        json.loads(l)
        for l in (coco_run["run"] / "metrics.jsonl").read_text().splitlines()
        if l.strip()
    ]
    evals = [r for r in records if "map" in r and "ap" in r]
    assert len(evals) == 1 and evals[0]["iteration"] == 3
    coco = evals[0]["coco"]
    assert sorted(coco) == ["map", "map50", "map75"] and all(
        0.0 <= v <= 1.0 for v in coco.values()
    )
    # the same numbers again from the checkpoint, through the evaluation a user would
    # run
    stored = load_stored_detector(coco_run["run"] / "last.pt")
    val = open_data(
        coco_run["root"] / "annotations" / "instances_val2017.json",
        coco_run["root"] / "val2017",
    )
    # its own boxes
    again = evaluate_model(stored.model, val, list(SHAPES_CLASSES), "cpu", coco=True)
    assert again["coco"] == pytest.approx(coco, abs=1e-6) and again[
        "map"
    ] == pytest.approx(evals[0]["map"], abs=1e-6)


def test_checkpoint_keeps_the_coco_layout_and_category_ids(coco_run):
    stored = load_stored_detector(coco_run["run"] / "last.pt")
    assert stored.category_ids == tuple(CATEGORY_IDS)
    assert stored.names == tuple(SHAPES_CLASSES)
    torch.testing.assert_close(
        stored.priors, default_boxes(SSD300_COCO), rtol=0, atol=0
    )
    # conv4_3's 21 px box (paper Sec. 3.4)
    assert stored.priors[0, 2].item() == pytest.approx(21 / 300)
