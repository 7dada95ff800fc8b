"""Your own data: COCO-format reading, class discovery, splits, the up-front check,
fine-tuning.

The datasets are written by the tests themselves (ShapesDataset to disk), so nothing
here needs ../shared except the raccoon CLI test, which skips without it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ssd_tutorial import detect, evaluate, train
from ssd_tutorial.data import (
    SHAPES_CLASSES,
    COCODataset,
    ShapesDataset,
    VOCDataset,
    write_coco_json,
    write_voc_split,
)
from ssd_tutorial.model import SSD300
from ssd_tutorial.own_data import (
    DatasetError,
    check_dataset,
    open_data,
    split_train_val,
    transfer_weights,
    voc_class_names,
)

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "data" / "raccoon"
# COCO-style ids with gaps, as labelling tools number categories
ODD_IDS = [
    3,
    7,
    11,
    20,
    42,
]


def _voc_folder(root: Path, n: int = 6, seed: int = 0) -> Path:
    write_voc_split(ShapesDataset(n, seed=seed), root, "train", SHAPES_CLASSES)
    return root


def _coco_set(folder: Path, n: int, seed: int, name: str, ids=ODD_IDS) -> Path:
    return write_coco_json(
        ShapesDataset(n, seed=seed),
        folder / f"{name}.json",
        SHAPES_CLASSES,
        ids,
        images_dir=folder / "images",
    )


def test_a_voc_folder_and_its_coco_json_give_identical_items(tmp_path):
    voc = VOCDataset(_voc_folder(tmp_path / "voc"), "train", class_names=SHAPES_CLASSES)
    json_file = write_coco_json(voc, tmp_path / "coco.json", SHAPES_CLASSES, ODD_IDS)
    coco = COCODataset(json_file, images_dir=tmp_path / "voc" / "JPEGImages")
    assert len(coco) == len(voc) == 6 and coco.class_names == SHAPES_CLASSES
    assert coco.category_ids == tuple(ODD_IDS) and coco.problems == []
    for k in range(len(voc)):
        (image_v, target_v), (image_c, target_c) = voc[k], coco[k]
        assert torch.equal(image_v, image_c)
        assert target_v["image_id"] == target_c["image_id"]
        for key in ("boxes", "labels", "difficult"):
            assert torch.equal(target_v[key], target_c[key]), key


def test_make_shapes_coco_keeps_the_shapes_pixel_edges(tmp_path, data_script):
    make_shapes_main = data_script("make_shapes").main

    assert (
        make_shapes_main(
            [
                str(tmp_path),
                "--num-images",
                "3",
                "--format",
                "coco",
                "--category-ids",
                ",".join(map(str, ODD_IDS)),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "train.json").read_text())
    assert sorted(c["id"] for c in data["categories"]) == ODD_IDS
    # file names lead from the JSON to images/
    coco = COCODataset(tmp_path / "train.json")
    shapes = ShapesDataset(3, seed=0)
    for k in range(3):
        _, want = shapes[k]
        _, got = coco[k]
        assert torch.equal(got["boxes"], want["boxes"]) and torch.equal(
            got["labels"], want["labels"]
        )


def test_class_names_are_discovered_sorted_and_coco_ids_map_to_contiguous_labels(
    tmp_path,
):
    root = _voc_folder(tmp_path / "voc", n=8)
    names = voc_class_names(sorted((root / "Annotations").glob("*.xml")))
    assert (
        names == tuple(sorted(names))
        and set(names) <= set(SHAPES_CLASSES)
        and len(names) >= 3
    )
    assert open_data(root).class_names == names  # no split file: every annotation
    coco = COCODataset(_coco_set(tmp_path, 4, 1, "set"))
    labels = torch.cat([coco[k][1]["labels"] for k in range(4)])
    assert labels.min() >= 1 and labels.max() <= 5  # 42 became 5
    reordered = COCODataset(tmp_path / "set.json", class_names=["cross", "ellipse"])
    # the other three categories' objects left out
    assert reordered.category_ids == (
        42,
        3,
    )
    assert {int(l) for k in range(4) for l in reordered[k][1]["labels"]} <= {1, 2}


def test_seeded_split_is_reproducible_and_disjoint():
    data = ShapesDataset(50)
    a_train, a_val = split_train_val(data, 0.2, seed=3)
    b_train, b_val = split_train_val(data, 0.2, seed=3)
    assert a_val.indices == b_val.indices and len(a_val) == 10 and len(a_train) == 40
    assert not set(a_train.indices) & set(a_val.indices)
    assert split_train_val(data, 0.2, seed=4)[1].indices != a_val.indices
    with pytest.raises(ValueError, match="too small"):
        split_train_val(ShapesDataset(1), 0.5)


def _bad_voc_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """A VOC folder of 4 good images and one of each bad file; returns it and {id: what
    must be said}."""
    _voc_folder(root, n=4)
    ann, jpg = root / "Annotations", root / "JPEGImages"
    good_xml = (ann / "shapes_0_000000.xml").read_text()
    good_jpg = (jpg / "shapes_0_000000.jpg").read_bytes()
    bad = {
        "garbage": "cannot decode",
        "truncated": "truncated",
        "malformed": "malformed XML",
        "hostile": "unsafe XML",
        "outside": "outside",
        "reversed": "reversed",
        "unicorn": "unknown class",
        "noimage": "image file not found",
    }
    for image_id in bad:
        (ann / f"{image_id}.xml").write_text(good_xml)
        if image_id != "noimage":
            (jpg / f"{image_id}.jpg").write_bytes(good_jpg)
    (jpg / "garbage.jpg").write_bytes(b"not a jpeg at all" * 10)
    (jpg / "truncated.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    (ann / "malformed.xml").write_text(good_xml[: len(good_xml) // 2])
    (ann / "hostile.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y '
        '"&x;&x;&x;&x;">]>'
        "<annotation><filename>&y;</filename></annotation>"
    )
    first_box = good_xml.split("<bndbox>")[1].split("</bndbox>")[0]
    (ann / "outside.xml").write_text(
        good_xml.replace(
            first_box,
            first_box.replace(first_box.split("<xmax>")[1].split("</xmax>")[0], "900"),
        )
    )
    xmin = first_box.split("<xmin>")[1].split("</xmin>")[0]
    xmax = first_box.split("<xmax>")[1].split("</xmax>")[0]
    swapped = first_box.replace(f"<xmin>{xmin}</xmin>", f"<xmin>{xmax}</xmin>").replace(
        f"<xmax>{xmax}</xmax>", f"<xmax>{xmin}</xmax>"
    )
    (ann / "reversed.xml").write_text(good_xml.replace(first_box, swapped))
    name = good_xml.split("<name>")[1].split("</name>")[0]
    (ann / "unicorn.xml").write_text(
        good_xml.replace(f"<name>{name}</name>", "<name>unicorn</name>", 1)
    )
    return root, bad


def test_every_bad_voc_file_is_reported_in_one_error(tmp_path):
    root, bad = _bad_voc_folder(tmp_path / "voc")
    data = open_data(root, class_names=SHAPES_CLASSES)
    with pytest.raises(DatasetError) as caught:
        check_dataset(data)
    problems = caught.value.problems
    assert len(problems) == len(bad)
    for image_id, said in bad.items():
        assert any(image_id in p and said in p for p in problems), (
            image_id,
            said,
            problems,
        )
    kept, check = check_dataset(data, skip_bad=True)
    assert len(kept) == 4 and len(check.problems) == len(bad)


def test_every_bad_coco_record_is_reported_and_an_empty_set_is_a_problem(tmp_path):
    json_file = _coco_set(tmp_path, 4, 0, "set")
    data = json.loads(json_file.read_text())
    data["images"].append(
        {"id": 99, "file_name": "images/missing.jpg", "width": 300, "height": 300}
    )
    data["annotations"] += [
        # image not listed
        {
            "id": 501,
            "image_id": 1234,
            "category_id": 3,
            "bbox": [1, 1, 5, 5],
        },
        # unknown category
        {
            "id": 502,
            "image_id": 2,
            "category_id": 8,
            "bbox": [1, 1, 5, 5],
        },
        # negative width
        {
            "id": 503,
            "image_id": 3,
            "category_id": 3,
            "bbox": [10, 10, -4, 5],
        },
        # past the right edge
        {
            "id": 504,
            "image_id": 4,
            "category_id": 3,
            "bbox": [250, 10, 90, 5],
        },
    ]
    json_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as caught:
        check_dataset(COCODataset(json_file))
    text = "\n".join(caught.value.problems)
    for said in (
        "annotation 501 is for image id 1234",
        "annotation 502: unknown category id 8",
        "annotation 503: bbox",
        "outside",
        "missing.jpg",
    ):
        assert said in text, (said, text)
    assert len(caught.value.problems) == 5
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        COCODataset(tmp_path / "broken.json")
    empty = write_coco_json(ShapesDataset(0), tmp_path / "empty.json", SHAPES_CLASSES)
    with pytest.raises(DatasetError, match="has no images"):
        check_dataset(COCODataset(empty), name="empty set")


def test_images_without_objects_are_kept_as_negatives(tmp_path):
    json_file = _coco_set(tmp_path, 3, 0, "set")
    data = json.loads(json_file.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
    json_file.write_text(json.dumps(data))
    kept, check = check_dataset(COCODataset(json_file))
    assert len(kept) == 3 and check.problems == [] and len(kept[1][1]["labels"]) == 0


def test_transfer_weights_keeps_everything_but_heads_of_another_class_count():
    torch.manual_seed(0)
    source = SSD300(num_classes=6, width_mult=0.125)
    target = SSD300(num_classes=3, width_mult=0.125)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    copied, kept = transfer_weights(target, source.state_dict())
    assert kept and all(k.startswith("conf_heads.") for k in kept)
    for k, v in target.state_dict().items():
        assert torch.equal(v, source.state_dict()[k] if k in copied else before[k]), k
    with pytest.raises(ValueError, match="share no backbone tensor"):
        transfer_weights(SSD300(num_classes=3, width_mult=0.25), source.state_dict())


def _train_args(data: str, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        "finetune_cpu",
        "--data",
        data,
        "--output-dir",
        str(out),
        "--max-iters",
        "2",
        "--batch-size",
        "2",
        "--eval-images",
        "8",
        "--no-progress",
        *extra,
    ]


def test_cli_refuses_bad_data_with_every_file_listed_and_trains_with_skip_bad(
    tmp_path, capsys
):
    root, bad = _bad_voc_folder(tmp_path / "voc")
    names = [
        "--set",
        "class_names=" + ",".join(SHAPES_CLASSES),
        "--val-fraction",
        "0.3",
    ]
    assert train.main(_train_args(str(root), tmp_path / "run", *names)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and all(image_id in err for image_id in bad)
    assert not (tmp_path / "run" / "last.pt").exists()
    assert (
        train.main(_train_args(str(root), tmp_path / "run", *names, "--skip-bad")) == 0
    )
    out = capsys.readouterr().out
    assert (
        "skipped: " in out
        and json.loads(out.strip().splitlines()[-1])["iterations"] == 2
    )


def test_coco_ids_with_gaps_round_trip_through_train_evaluate_and_detect(
    tmp_path, capsys
):
    train_json = _coco_set(tmp_path, 12, 0, "train")
    val_json = _coco_set(tmp_path, 4, 50, "val")
    weights = SSD300(num_classes=6, width_mult=0.125)
    torch.save(weights.state_dict(), tmp_path / "start.pt")
    args = _train_args(
        str(train_json),
        tmp_path / "run",
        "--val-data",
        str(val_json),
        "--weights",
        str(tmp_path / "start.pt"),
    )
    assert train.main(args) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (
        state["class_names"] == list(SHAPES_CLASSES)
        and state["category_ids"] == ODD_IDS
    )
    capsys.readouterr()
    assert (
        evaluate.main(
            [
                "--checkpoint",
                str(tmp_path / "run" / "last.pt"),
                "--data",
                str(val_json),
                "--output-dir",
                str(tmp_path / "eval"),
                "--no-coco",
            ]
        )
        == 0
    )
    assert (
        json.loads((tmp_path / "eval" / "evaluation.json").read_text())["images"] == 4
    )
    renumbered = json.loads(val_json.read_text())
    for record in renumbered["categories"] + renumbered["annotations"]:
        key = "id" if "name" in record else "category_id"
        record[key] = {3: 1, 7: 2, 11: 3, 20: 4, 42: 5}[record[key]]
    (tmp_path / "renumbered.json").write_text(json.dumps(renumbered))
    assert (
        evaluate.main(
            [
                "--checkpoint",
                str(tmp_path / "run" / "last.pt"),
                "--data",
                str(tmp_path / "renumbered.json"),
                "--output-dir",
                str(tmp_path / "e2"),
            ]
        )
        == 2
    )
    assert "other ids" in capsys.readouterr().err
    image = tmp_path / "images" / "shapes_50_000000.jpg"
    assert (
        detect.main(
            [
                str(image),
                "--checkpoint",
                str(tmp_path / "run" / "last.pt"),
                "--score-threshold",
                "0",
                "--output",
                str(tmp_path / "det.png"),
            ]
        )
        == 0
    )
    found = json.loads(capsys.readouterr().out)["detections"]
    assert found and all(d["category_id"] == ODD_IDS[d["label_id"] - 1] for d in found)


def test_a_detector_with_its_own_default_boxes_is_fine_tuned_and_evaluated_with_them(
    tmp_path, capsys
):
    """A torchvision-layout detector (COCO's default boxes): the boxes travel into the
    checkpoint."""
    from torchvision.models.detection import ssd300_vgg16

    from ssd_tutorial.default_boxes import TORCHVISION_COCO, default_boxes

    torch.manual_seed(0)
    theirs = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=4)
    torch.save(theirs.state_dict(), tmp_path / "tv.pt")
    train_json = _coco_set(tmp_path, 8, 0, "train")
    assert (
        train.main(
            _train_args(
                str(train_json),
                tmp_path / "run",
                "--config",
                "finetune",
                "--weights",
                str(tmp_path / "tv.pt"),
                "--backbone-weights",
                "none",
                "--batch-size",
                "2",
                "--num-workers",
                "0",
                "--amp",
                "none",
                "--eval-every",
                "0",
            )
        )
        == 0
    )
    assert "conf_heads" in capsys.readouterr().err
    stored = detect.load_stored_detector(tmp_path / "run" / "last.pt")
    assert stored.priors is not None and torch.equal(
        stored.priors, default_boxes(TORCHVISION_COCO)
    )


@pytest.mark.skipif(
    not RACCOON.is_dir(), reason="needs ../shared/data/raccoon (200 real photos)"
)
def test_raccoon_folder_trains_evaluates_and_detects_from_the_cli(tmp_path, capsys):
    assert train.main(_train_args(str(RACCOON), tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert (
        "classes raccoon;" in out
        and "train.txt and val.txt" in out
        and "160 of 160" in out
    )
    checkpoint = str(tmp_path / "run" / "last.pt")
    assert (
        evaluate.main(
            [
                "--checkpoint",
                checkpoint,
                "--data",
                str(RACCOON),
                "--max-images",
                "4",
                "--output-dir",
                str(tmp_path / "eval"),
                "--no-coco",
            ]
        )
        == 0
    )
    assert "raccoon" in (tmp_path / "eval" / "per_class.txt").read_text()
    photo = RACCOON / "JPEGImages" / "raccoon-1.jpg"
    capsys.readouterr()
    assert (
        detect.main(
            [
                str(photo),
                "--checkpoint",
                checkpoint,
                "--score-threshold",
                "0",
                "--output",
                str(tmp_path / "det.png"),
            ]
        )
        == 0
    )
    assert '"label": "raccoon"' in capsys.readouterr().out
    shutil.rmtree(tmp_path / "run")
