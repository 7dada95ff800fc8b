"""Tests for ssd_tutorial.evaluation: hand-worked cases, the VOC devkit's numbers on
real data, a straightforward loop reference on random data, pycocotools on a hand case,
and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_tutorial.evaluation import evaluate_coco, evaluate_voc, per_class_table, voc_ap

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
VOC_MINI = SHARED_DATA / "voc2012_mini100"
TOY = SHARED_DATA / "map_toy_case1"
VOC_NAMES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor"
).split()


# ---------------------------------------------------------------- hand-worked cases
def hand_case() -> tuple[dict, dict]:
    """Two images, classes a (label 1), b (2), c (3).  Pixel boxes, inclusive corners.

    Image A: one 'a' box [0,0,9,9] (10 x 10 = 100 px) and one 'b' box.
    Image B: one 'a' box [0,0,9,9] and one difficult 'a' box [20,20,29,29].
    'a' detections, by score:
      .9 A [0,0,9,9]    IoU 1 -> TP
      .8 A [0,0,9,9]    same box again -> duplicate, FP
      .7 B [20,20,29,29] on the difficult box -> ignored
      .6 B [0,0,9,4]    10 x 5 = 50 px inside the 100 px box: IoU 50/100 = 0.5, not >
      0.5 -> FP .5 B [0,0,9,9]    IoU 1 -> TP
    'b' has no detection (AP 0); 'c' has a detection but no ground truth (left out of
    the mean).
    """
    gts = {
        "A": {
            "boxes": [[0, 0, 9, 9], [30, 30, 39, 39]],
            "labels": [1, 2],
            "difficult": [False, False],
        },
        "B": {
            "boxes": [[0, 0, 9, 9], [20, 20, 29, 29]],
            "labels": [1, 1],
            "difficult": [False, True],
        },
    }
    dets = {
        "A": {
            "boxes": [[0, 0, 9, 9], [0, 0, 9, 9]],
            "scores": [0.9, 0.8],
            "labels": [1, 1],
        },
        "B": {
            "boxes": [[20, 20, 29, 29], [0, 0, 9, 4], [0, 0, 9, 9], [50, 50, 60, 60]],
            "scores": [0.7, 0.6, 0.5, 0.4],
            "labels": [1, 1, 1, 3],
        },
    }
    return dets, gts


def test_hand_case_11_point() -> None:
    dets, gts = hand_case()
    result = evaluate_voc(dets, gts, ["a", "b", "c"], use_07_metric=True)
    # kept sequence TP, FP, FP, TP: recall .5 .5 .5 1, precision 1 .5 1/3 .5
    np.testing.assert_allclose(result["recall"]["a"], [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(result["precision"]["a"], [1.0, 0.5, 1 / 3, 0.5])
    # levels 0 .. 0.5 (six) reach precision 1; levels 0.6 .. 1 (five) only the last
    # point, 0.5
    assert result["ap"]["a"] == pytest.approx(8.5 / 11, abs=1e-12)
    assert result["ap"]["b"] == 0.0
    assert result["missing_classes"] == ["c"]
    assert "c" not in result["ap"]
    assert result["map"] == pytest.approx((8.5 / 11 + 0.0) / 2, abs=1e-12)
    # the difficult box is not counted
    assert result["num_gt"] == {
        "a": 2,
        "b": 1,
        "c": 0,
    }


def test_hand_case_all_point_and_looser_threshold() -> None:
    dets, gts = hand_case()
    # envelope 1 up to recall .5, then .5 up to recall 1: .5 * 1 + .5 * .5
    assert evaluate_voc(dets, gts, ["a", "b", "c"], use_07_metric=False)["ap"][
        "a"
    ] == pytest.approx(0.75)
    # at IoU 0.4 the .6 detection (IoU .5) claims image B's box first: TP FP TP FP,
    # precision 1 .5 2/3 .5 -> envelope 1 to recall .5, 2/3 to recall 1
    looser = evaluate_voc(
        dets, gts, ["a", "b", "c"], iou_threshold=0.4, use_07_metric=False
    )
    assert looser["ap"]["a"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_voc_ap_by_hand() -> None:
    # one detection, a true positive that reaches recall 1: every level has precision 1
    assert voc_ap([1.0], [1.0], True) == pytest.approx(1.0)
    assert voc_ap([1.0], [1.0], False) == pytest.approx(1.0)
    # recall exactly 0.3 misses the devkit's 4th level (0.30000000000000004): levels 0,
    # .1, .2 only
    assert voc_ap([0.3], [1.0], True) == pytest.approx(3 / 11)
    assert voc_ap([0.3], [1.0], False) == pytest.approx(0.3)
    assert voc_ap([], [], True) == 0.0
    # tensors are accepted too
    assert voc_ap(
        torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.5]), False
    ) == pytest.approx(0.75)


def test_tensors_accepted_and_missing_detections_entry() -> None:
    gts = {
        0: {"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([1])},
        1: {"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([1])},
    }
    dets = {
        0: {
            "boxes": torch.tensor([[0.0, 0, 9, 9]]),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([1]),
        }
    }
    # image 1 has no entry in dets: its box is missed, recall 1/2 at precision 1
    assert evaluate_voc(dets, gts, ["x"], use_07_metric=False)["map"] == pytest.approx(
        0.5
    )


def test_nan_box_is_a_false_positive_as_in_the_devkit() -> None:
    # a diverged model can decode NaN boxes; this used to raise an IndexError.  The
    # devkit's "ovmax > ovthresh" is False for a NaN overlap: a false positive.
    gts = {"a": {"boxes": [[0, 0, 10, 10]], "labels": [1]}}
    dets = {
        "a": {
            "boxes": [[float("nan")] * 4, [0, 0, 10, 10]],
            "scores": [0.9, 0.8],
            "labels": [1, 1],
        }
    }
    result = evaluate_voc(dets, gts, ["x"], use_07_metric=False)
    assert result["precision"]["x"].tolist() == [0.0, 0.5]
    assert result["recall"]["x"].tolist() == [0.0, 1.0]
    assert result["ap"]["x"] == pytest.approx(0.5)


# ---------------------------------------------------------------- bad input
def test_unknown_image_id_is_a_clear_error() -> None:
    dets, gts = hand_case()
    dets["nope"] = {"boxes": [[0, 0, 1, 1]], "scores": [0.1], "labels": [1]}
    with pytest.raises(ValueError, match="'nope'"):
        evaluate_voc(dets, gts, ["a", "b", "c"])


def test_bad_labels_and_shapes() -> None:
    dets, gts = hand_case()
    dets["A"]["labels"] = [0, 1]  # 0 is background: not a detection label
    with pytest.raises(ValueError, match="1-based"):
        evaluate_voc(dets, gts, ["a", "b", "c"])
    dets, gts = hand_case()
    dets["A"]["scores"] = [0.9]
    with pytest.raises(ValueError, match="image 'A'"):
        evaluate_voc(dets, gts, ["a", "b", "c"])
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_voc(*hand_case(), ["a", "b", "c"], iou_threshold=1.5)


# -------------------------------------------------------- loop reference on random data
def reference_voc(
    dets: dict, gts: dict, num_classes: int, thr: float, use_07: bool
) -> dict[int, float]:
    """The devkit's algorithm as a plain loop over detections (written here,
    independently)."""
    aps = {}
    for c in range(1, num_classes + 1):
        records = {}
        npos = 0
        for image_id, g in gts.items():
            keep = [i for i, lab in enumerate(g["labels"]) if lab == c]
            records[image_id] = {
                "boxes": [g["boxes"][i] for i in keep],
                "difficult": [g["difficult"][i] for i in keep],
                "taken": [False] * len(keep),
            }
            npos += sum(not g["difficult"][i] for i in keep)
        cands = [
            (d["scores"][i], n, image_id, d["boxes"][i])
            for n, (image_id, d) in enumerate(dets.items())
            for i, lab in enumerate(d["labels"])
            if lab == c
        ]
        cands.sort(key=lambda t: -t[0])  # stable: ties keep input order
        tp, fp = [], []
        for _, _, image_id, box in cands:
            rec = records[image_id]
            best, best_j = -1.0, -1
            for j, g in enumerate(rec["boxes"]):
                iw = min(box[2], g[2]) - max(box[0], g[0]) + 1
                ih = min(box[3], g[3]) - max(box[1], g[1]) + 1
                inter = max(iw, 0) * max(ih, 0)
                union = (
                    (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
                    + (g[2] - g[0] + 1) * (g[3] - g[1] + 1)
                    - inter
                )
                if inter / union > best:
                    best, best_j = inter / union, j
            if best > thr:
                if rec["difficult"][best_j]:
                    continue
                if not rec["taken"][best_j]:
                    rec["taken"][best_j] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        if npos == 0:
            continue
        tpc, fpc = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
        rec_, prec_ = tpc / npos, tpc / np.maximum(tpc + fpc, np.finfo(float).eps)
        if use_07:
            aps[c] = (
                sum(
                    max([p for r, p in zip(rec_, prec_) if r >= t], default=0.0)
                    for t in np.arange(0, 1.1, 0.1)
                )
                / 11
            )
        else:
            r = [0.0, *rec_, 1.0]
            p = [0.0, *prec_, 0.0]
            for i in range(len(p) - 2, -1, -1):
                p[i] = max(p[i], p[i + 1])
            aps[c] = sum(
                (r[i + 1] - r[i]) * p[i + 1]
                for i in range(len(r) - 1)
                if r[i + 1] != r[i]
            )
    return aps


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    use_07=st.booleans(),
    thr=st.sampled_from([0.1, 0.3, 0.5, 0.7]),
)
def test_matches_loop_reference_on_random_data(
    seed: int, use_07: bool, thr: float
) -> None:
    rng = np.random.default_rng(seed)
    num_classes = 3

    def rand_boxes(n: int) -> list[list[float]]:
        xy = rng.integers(0, 40, size=(n, 2))
        wh = rng.integers(0, 25, size=(n, 2))
        return np.concatenate([xy, xy + wh], axis=1).astype(float).tolist()

    gts, dets = {}, {}
    for image in range(int(rng.integers(1, 6))):
        g = int(rng.integers(0, 5))
        gts[f"im{image}"] = {
            "boxes": rand_boxes(g),
            "labels": rng.integers(1, num_classes + 1, size=g).tolist(),
            "difficult": (rng.random(g) < 0.2).tolist(),
        }
        if rng.random() < 0.8:
            d = int(rng.integers(0, 8))
            # distinct scores: the devkit's unstable sort makes ties
            # implementation-defined
            dets[f"im{image}"] = {
                "boxes": rand_boxes(d),
                "scores": rng.permutation(1000)[:d].astype(float).tolist(),
                "labels": rng.integers(1, num_classes + 1, size=d).tolist(),
            }
    result = evaluate_voc(
        dets, gts, ["a", "b", "c"], iou_threshold=thr, use_07_metric=use_07
    )
    expected = reference_voc(dets, gts, num_classes, thr, use_07)
    assert sorted(result["ap"]) == sorted("abc"[c - 1] for c in expected)
    for c, ap in expected.items():
        assert result["ap"]["abc"[c - 1]] == pytest.approx(ap, abs=1e-12)


# ---------------------------------------------------- the devkit's numbers on real data
def read_voc_mini() -> tuple[dict, dict]:
    from defusedxml import ElementTree

    ids = (VOC_MINI / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    gts, dets = {}, {}
    for image_id in ids:
        root = ElementTree.parse(VOC_MINI / "Annotations" / f"{image_id}.xml").getroot()
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            # the XML's 1-based inclusive pixel corners, unchanged, exactly as voc_eval
            # reads them
            boxes.append(
                [float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            )
            labels.append(VOC_NAMES.index(obj.find("name").text.strip()) + 1)
            difficult.append(int(obj.find("difficult").text) == 1)
        gts[image_id] = {"boxes": boxes, "labels": labels, "difficult": difficult}
        path = VOC_MINI / "extras" / "detections_abs_xyxy" / f"{image_id}.txt"
        if path.exists():  # two images have no detection file: zero detections
            rows = [
                line.split() for line in path.read_text().splitlines() if line.strip()
            ]
            dets[image_id] = {
                # 0-based class index -> 1-based label
                "labels": [int(r[0]) + 1 for r in rows],
                "scores": [float(r[1]) for r in rows],
                "boxes": [[float(v) for v in r[2:6]] for r in rows],
            }
    return dets, gts


@pytest.mark.skipif(
    not VOC_MINI.exists(),
    reason="../shared/data/voc2012_mini100 is absent (sample data beside the checkout)",
)
@pytest.mark.parametrize(
    "use_07, expected_map, some_aps",
    [
        (
            True,
            0.607511,
            {
                "aeroplane": 0.8235,
                "car": 0.2291,
                "motorbike": 0.3030,
                "tvmonitor": 0.7475,
            },
        ),
        (
            False,
            0.613875,
            {
                "aeroplane": 0.8408,
                "car": 0.2450,
                "motorbike": 0.2667,
                "tvmonitor": 0.8025,
            },
        ),
    ],
)
def test_reproduces_voc_devkit_on_voc2012_mini100(
    use_07: bool, expected_map: float, some_aps: dict
) -> None:
    dets, gts = read_voc_mini()
    assert len(gts) == 100 and sum(len(d["scores"]) for d in dets.values()) == 452
    result = evaluate_voc(dets, gts, VOC_NAMES, iou_threshold=0.5, use_07_metric=use_07)
    assert result["missing_classes"] == []
    assert round(result["map"], 6) == pytest.approx(expected_map, abs=1e-12)
    for name, ap in some_aps.items():
        assert result["ap"][name] == pytest.approx(ap, abs=5e-5)
    table = per_class_table(result)
    assert table.splitlines()[-1].split()[-1] == f"{result['map']:.4f}"


def read_toy() -> tuple[dict, dict]:
    gts, dets = {}, {}
    for path in sorted((TOY / "gts").glob("*.txt")):

        def xyxy(values: list[str]) -> list[float]:
            x, y, w, h = (float(v) for v in values)
            return [x, y, x + w, y + h]  # SOURCE.md: x2 = x + w

        g = [line.split() for line in path.read_text().splitlines() if line.strip()]
        d = [
            line.split()
            for line in (TOY / "dets" / path.name).read_text().splitlines()
            if line.strip()
        ]
        gts[path.stem] = {"boxes": [xyxy(r[1:5]) for r in g], "labels": [1] * len(g)}
        dets[path.stem] = {
            "boxes": [xyxy(r[2:6]) for r in d],
            "scores": [float(r[1]) for r in d],
            "labels": [1] * len(d),
        }
    return dets, gts


@pytest.mark.skipif(
    not TOY.exists(),
    reason="../shared/data/map_toy_case1 is absent (sample data beside the checkout)",
)
@pytest.mark.parametrize(
    "thr, use_07, expected",
    [
        (0.5, True, 0.0303030303),
        (0.5, False, 0.0222222222),
        (0.75, True, 0.0),
        (0.75, False, 0.0),
    ],
)
def test_map_toy_case1(thr: float, use_07: bool, expected: float) -> None:
    dets, gts = read_toy()
    assert sum(len(g["labels"]) for g in gts.values()) == 15
    assert sum(len(d["labels"]) for d in dets.values()) == 24
    result = evaluate_voc(
        dets, gts, ["object"], iou_threshold=thr, use_07_metric=use_07
    )
    assert result["ap"]["object"] == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------- COCO through pycocotools
def test_coco_hand_case() -> None:
    # one 100 x 100 box; the detection covers its top 62 rows: IoU 0.62 (continuous
    # coordinates).
    # COCO's thresholds .50 .55 .60 accept it (AP 1), the other seven (.65 ... .95) do
    # not (AP 0).
    gts = {"x": {"boxes": [[0.0, 0.0, 100.0, 100.0]], "labels": [1]}}
    dets = {"x": {"boxes": [[0.0, 0.0, 100.0, 62.0]], "scores": [0.9], "labels": [1]}}
    result = evaluate_coco(dets, gts, ["thing"])
    assert result["map"] == pytest.approx(0.3, abs=1e-9)
    assert result["map50"] == pytest.approx(1.0)
    assert result["map75"] == pytest.approx(0.0)


def test_coco_perfect_and_empty(capsys: pytest.CaptureFixture[str]) -> None:
    gts = {"x": {"boxes": [[10.0, 10.0, 50.0, 60.0]], "labels": [2]}}
    dets = {"x": {"boxes": [[10.0, 10.0, 50.0, 60.0]], "scores": [0.5], "labels": [2]}}
    perfect = evaluate_coco(dets, gts, ["a", "b"])
    assert perfect == pytest.approx({"map": 1.0, "map50": 1.0, "map75": 1.0}, abs=1e-12)
    assert evaluate_coco({}, gts, ["a", "b"]) == {
        "map": 0.0,
        "map50": 0.0,
        "map75": 0.0,
    }
    assert capsys.readouterr().out == ""  # pycocotools' printing is silenced


# ---------------------------------------------------------------- the evaluate CLI
def _tiny_state_dict(num_classes: int) -> dict:
    from ssd_tutorial.model import tiny_ssd300

    torch.manual_seed(0)
    model = tiny_ssd300(num_classes)
    with torch.no_grad():  # background logit +8 everywhere: few candidates, a fast test
        for head in model.conf_heads:
            head.bias.view(-1, num_classes)[:, 0] += 8.0
    return model.state_dict()


@pytest.mark.parametrize("wrapped", [False, True])
def test_evaluate_cli_writes_json_and_plot(tmp_path: Path, wrapped: bool) -> None:
    import json

    from ssd_tutorial.data import SHAPES_CLASSES
    from ssd_tutorial.evaluate import main

    state = _tiny_state_dict(len(SHAPES_CLASSES) + 1)
    ckpt = tmp_path / "model.pt"
    torch.save({"model": state, "iteration": 3} if wrapped else state, ckpt)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "--checkpoint",
                str(ckpt),
                "--dataset",
                "shapes",
                "--num-images",
                "3",
                "--device",
                "cpu",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["images"] == 3
    assert 0.0 <= summary["voc_map50_11point"] <= 1.0
    assert set(summary["coco"]) == {"map", "map50", "map75"}
    assert (out / "pr_curves.png").stat().st_size > 0
    assert (out / "per_class.txt").read_text().splitlines()[-1].startswith("mAP")


def test_evaluate_cli_bad_checkpoints(tmp_path: Path) -> None:
    from ssd_tutorial.evaluate import load_model

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        load_model(tmp_path / "other.pt")


def test_evaluate_cli_uses_and_checks_the_checkpoints_class_names(
    tmp_path: Path, capsys
) -> None:
    """A checkpoint that stores its class names is scored with them; --classes in
    another order, or the shapes dataset's names, are refused (listing both), not scored
    differently."""
    import json

    from ssd_tutorial.checkpoint import save_atomic
    from ssd_tutorial.data import ShapesDataset, write_voc_split
    from ssd_tutorial.evaluate import main

    names = ["a", "b", "c", "d", "e"]
    root = write_voc_split(
        ShapesDataset(2, image_size=64, seed=1), tmp_path / "voc", "test", names
    )
    ckpt = tmp_path / "last.pt"
    save_atomic(
        {"model": _tiny_state_dict(6), "iteration": 3, "class_names": names}, ckpt
    )
    common = [
        "--checkpoint",
        str(ckpt),
        "--device",
        "cpu",
        "--no-coco",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    voc = [*common, "--dataset", "voc", "--root", str(root)]
    assert main(voc) == 0  # without --classes: the stored names, not VOC's
    capsys.readouterr()
    summary = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert sorted([*summary["ap50_11point"], *summary["missing_classes"]]) == names
    assert main([*voc, "--classes", "e,d,c,b,a"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ") and "e, d, c, b, a" in err and "a, b, c, d, e" in err
    )
    assert main([*common, "--dataset", "shapes", "--num-images", "1"]) == 2
    assert "ellipse" in capsys.readouterr().err
    plain = tmp_path / "plain.pt"
    # no stored names: --classes needs the right count
    torch.save(_tiny_state_dict(6), plain)
    assert main([*voc, "--checkpoint", str(plain), "--classes", "a,b"]) == 2
    assert "2 classes given" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value",
    [("--batch-size", "0"), ("--max-images", "-1"), ("--max-images", "0")],
)
def test_evaluate_cli_refuses_counts_below_one(
    tmp_path: Path, flag: str, value: str, capsys
) -> None:
    from ssd_tutorial.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--checkpoint",
                str(tmp_path / "m.pt"),
                "--output-dir",
                str(tmp_path),
                flag,
                value,
            ]
        )
    assert (
        exit_info.value.code == 2
        and f"{flag}: must be >= 1, got {value}" in capsys.readouterr().err
    )


def test_collect_detections_refuses_counts_below_one() -> None:
    from ssd_tutorial.data import ShapesDataset
    from ssd_tutorial.evaluate import collect_detections
    from ssd_tutorial.model import tiny_ssd300

    model, dataset = tiny_ssd300(6), ShapesDataset(2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        collect_detections(model, dataset, batch_size=0)
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        collect_detections(model, dataset, max_images=-1)
