"""Tests for ssd_tutorial.detect: checkpoints of both kinds, the CLI, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssd_tutorial.checkpoint import save_atomic
from ssd_tutorial.data import SHAPES_CLASSES, ShapesDataset
from ssd_tutorial.detect import (
    detect_image,
    main,
    model_from_checkpoint,
    read_image_file,
)
from ssd_tutorial.inference import Predictor
from ssd_tutorial.model import tiny_ssd300


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return tiny_ssd300(num_classes=len(SHAPES_CLASSES) + 1).state_dict()


@pytest.fixture()
def shapes_png(tmp_path):
    image, _ = ShapesDataset(1, seed=3)[0]  # uint8 [3, 300, 300]
    path = tmp_path / "shapes.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path, image


def test_plain_state_dict_gives_width_classes_and_names(tmp_path, tiny_state):
    path = tmp_path / "plain.pt"
    torch.save(tiny_state, path)
    model, names = model_from_checkpoint(path)
    assert model.num_classes == 6 and names == list(SHAPES_CLASSES)
    assert model.backbone.conv1_1.weight.shape[0] == 8  # 64 * 0.125
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in tiny_state.items())
    assert not model.training


def test_training_checkpoint_uses_its_class_names(tmp_path, tiny_state):
    path = tmp_path / "last.pt"
    save_atomic(
        {"model": tiny_state, "iteration": 5, "class_names": ["a", "b", "c", "d", "e"]},
        path,
    )
    _, names = model_from_checkpoint(path)
    assert names == ["a", "b", "c", "d", "e"]


def test_detect_image_matches_predictor(tmp_path, tiny_state, shapes_png):
    path = tmp_path / "plain.pt"
    torch.save(tiny_state, path)
    model, _ = model_from_checkpoint(path)
    _, image = shapes_png
    got = detect_image(model, image, score_threshold=0.3)
    want = Predictor(model, score_threshold=0.3)([image])[0]
    torch.testing.assert_close(got["boxes"], want["boxes"])
    assert torch.equal(got["labels"], want["labels"])
    assert bool((got["scores"] >= 0.3).all())


def test_cli_precision_fp32_gives_the_fp32_predictors_detections(
    tmp_path, tiny_state, shapes_png, capsys
):
    """--precision fp32 forces float32 (the default, auto, picks bf16 on a CPU with
    native bf16)."""
    ckpt = tmp_path / "plain.pt"
    torch.save(tiny_state, ckpt)
    png, image = shapes_png
    out = tmp_path / "det.png"
    args = [
        str(png),
        "--checkpoint",
        str(ckpt),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--score-threshold",
        "0.2",
    ]
    assert main(args + ["--precision", "fp32"]) == 0
    record = json.loads(capsys.readouterr().out)
    model, _ = model_from_checkpoint(ckpt)
    want = Predictor(model, score_threshold=0.2, precision="fp32")([image])[0]
    assert [d["label_id"] for d in record["detections"]] == want["labels"].tolist()
    assert [d["score"] for d in record["detections"]] == [
        round(s, 4) for s in want["scores"].tolist()
    ]
    with pytest.raises(SystemExit):  # argparse refuses it, naming the choices
        main(args + ["--precision", "fp16"])
    assert "fp16" in capsys.readouterr().err


def test_cli_writes_png_and_prints_json(tmp_path, tiny_state, shapes_png, capsys):
    ckpt = tmp_path / "plain.pt"
    torch.save(tiny_state, ckpt)
    png, image = shapes_png
    out = tmp_path / "out" / "det.png"
    assert (
        main(
            [
                str(png),
                "--checkpoint",
                str(ckpt),
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for det in record["detections"]:
        x1, y1, x2, y2 = det["box_xyxy_px"]
        assert det["label"] in SHAPES_CLASSES and det["score"] >= 0.4
        assert x1 <= x2 and y1 <= y2


def test_cli_bad_inputs_name_the_file(tmp_path, tiny_state, shapes_png, capsys):
    png, _ = shapes_png
    ckpt = tmp_path / "plain.pt"
    torch.save(tiny_state, ckpt)
    assert main([str(tmp_path / "missing.jpg"), "--checkpoint", str(ckpt)]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a jpeg")
    assert main([str(not_image), "--checkpoint", str(ckpt)]) == 2
    assert "notes.jpg" in capsys.readouterr().err
    assert main([str(png), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err


class _Payload:
    pass


def test_pickled_checkpoint_and_foreign_state_dict_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload()}, evil)
    with pytest.raises(RuntimeError, match="weights_only"):
        model_from_checkpoint(evil)
    foreign = tmp_path / "foreign.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(ValueError, match="not an SSD300 state dict"):
        model_from_checkpoint(foreign)


def test_read_image_file_gray_png_becomes_rgb(tmp_path):
    gray = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray[0].numpy()).save(path)  # 2-D uint8: mode L
    image = read_image_file(path)
    assert (
        image.shape == (3, 8, 8)
        and torch.equal(image[0], image[2])
        and torch.equal(image[0], gray[0])
    )


def test_training_checkpoint_with_wrong_number_of_names_refused(tmp_path, tiny_state):
    path = tmp_path / "last.pt"
    save_atomic({"model": tiny_state, "iteration": 5, "class_names": ["a", "b"]}, path)
    with pytest.raises(ValueError, match="2 class names for a model of 5 classes"):
        model_from_checkpoint(path)


def test_saving_a_figure_leaves_the_matplotlib_backend_alone(tmp_path, shapes_png):
    """A notebook's backend must survive a call (switching to Agg would hide its later
    plots)."""
    import matplotlib

    from ssd_tutorial.detect import save_detections_figure

    _, image = shapes_png
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        detections = {
            "boxes": torch.tensor([[10.0, 20.0, 100.0, 150.0]]),
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([2]),
        }
        out = save_detections_figure(
            image, detections, SHAPES_CLASSES, tmp_path / "d.png"
        )
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


# --------------------------------------------------------------------------------------
# The CLI on folders of real photos
# --------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
MINI100_JPEGS = REPO / ".." / "shared" / "data" / "voc2012_mini100" / "JPEGImages"
BOOK_MODEL = REPO / "book" / "results" / "shapes_tiny.pt"


@pytest.mark.skipif(
    not MINI100_JPEGS.is_dir(), reason="../shared/data/voc2012_mini100 not present"
)
def test_cli_on_a_folder_of_real_photos(tmp_path, capsys):
    """One drawing per photo and one JSON for all; the notes file in the folder is not
    an image."""
    photos = tmp_path / "photos"
    photos.mkdir()
    chosen = sorted(MINI100_JPEGS.glob("*.jpg"))[:5]
    for path in chosen:
        shutil.copy(path, photos / path.name)
    (photos / "notes.txt").write_text("not an image, and not named like one")
    (tmp_path / "extra").mkdir()
    # the same name from another folder
    shutil.copy(chosen[0], tmp_path / "extra" / chosen[0].name)
    out = tmp_path / "out"
    argv = [
        str(photos),
        str(tmp_path / "extra" / chosen[0].name),
        "--checkpoint",
        str(BOOK_MODEL),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--score-threshold",
        "0.2",
    ]
    assert main(argv) == 0
    report = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in report["images"]] == [
        p.name for p in chosen
    ] + [chosen[0].name]
    drawings = sorted(p.name for p in out.glob("*.png"))
    assert drawings == sorted(
        [f"{p.stem}.png" for p in chosen] + [f"{chosen[0].stem}-2.png"]
    )
    for record, path in zip(report["images"], chosen):
        image = read_image_file(path)
        assert (record["width"], record["height"]) == (image.shape[2], image.shape[1])
        for det in record["detections"]:
            x1, y1, x2, y2 = det["box_xyxy_px"]
            assert 0 <= x1 <= x2 <= image.shape[2] and 0 <= y1 <= y2 <= image.shape[1]
            assert (
                det["score"] >= 0.2
                and det["label"] == SHAPES_CLASSES[det["label_id"] - 1]
            )
    assert report["classes"] == list(SHAPES_CLASSES)
    # the same photo twice gives the same detections (batching does not change them)
    assert report["images"][0]["detections"] == report["images"][-1]["detections"]
    assert "wrote" in capsys.readouterr().out


def test_cli_folder_with_a_broken_image_stops_or_skips(
    tmp_path, tiny_state, shapes_png, capsys
):
    ckpt = tmp_path / "plain.pt"
    torch.save(tiny_state, ckpt)
    png, _ = shapes_png
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(png, folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    assert (
        main(
            [
                str(folder),
                "--checkpoint",
                str(ckpt),
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    # nothing half-written
    assert "broken.jpg" in capsys.readouterr().err and not out.exists()
    assert (
        main(
            [
                str(folder),
                "--checkpoint",
                str(ckpt),
                "--output",
                str(out),
                "--device",
                "cpu",
                "--skip-bad",
            ]
        )
        == 0
    )
    report = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in report["images"]] == ["good.png"]
    assert len(report["skipped"]) == 1 and "broken.jpg" in report["skipped"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--checkpoint", str(ckpt)]) == 2
    assert "without image files" in capsys.readouterr().err


def test_cli_classes_must_match_the_model(tmp_path, tiny_state, shapes_png, capsys):
    ckpt = tmp_path / "plain.pt"
    torch.save(tiny_state, ckpt)
    png, _ = shapes_png
    out = tmp_path / "d.png"
    assert (
        main(
            [
                str(png),
                "--checkpoint",
                str(ckpt),
                "--classes",
                "cat,dog",
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert "2 classes" in capsys.readouterr().err and not out.exists()
    names = "a,b,c,d,e"
    assert (
        main(
            [
                str(png),
                "--checkpoint",
                str(ckpt),
                "--classes",
                names,
                "--output",
                str(out),
                "--device",
                "cpu",
                "--score-threshold",
                "0.0",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert {d["label"] for d in record["detections"]} <= set(names.split(","))


# --------------------------------------------------------------------------------------
# Nothing silently wrong (#20): stored class names, huge and thin images
# --------------------------------------------------------------------------------------
def test_cli_classes_must_repeat_the_names_a_checkpoint_stores(
    tmp_path, tiny_state, shapes_png, capsys
):
    ckpt = tmp_path / "last.pt"
    save_atomic(
        {"model": tiny_state, "iteration": 5, "class_names": ["a", "b", "c", "d", "e"]},
        ckpt,
    )
    png, _ = shapes_png
    out = tmp_path / "d.png"
    assert (
        main(
            [
                str(png),
                "--checkpoint",
                str(ckpt),
                "--classes",
                "e,d,c,b,a",
                "--output",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and "e, d, c, b, a" in err
        and "a, b, c, d, e" in err
        and not out.exists()
    )
    assert (
        main(
            [
                str(png),
                "--checkpoint",
                str(ckpt),
                "--classes",
                "a,b,c,d,e",
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )


def test_resolve_class_names_rules():
    from ssd_tutorial.detect import resolve_class_names

    assert resolve_class_names(None, ["x", "y"], 3, "c.pt") == ["x", "y"]
    assert resolve_class_names(None, None, 6, "c.pt") == list(SHAPES_CLASSES)
    # no stored names: a count check
    assert resolve_class_names(["p", "q"], None, 3, "c.pt") == [
        "p",
        "q",
    ]
    with pytest.raises(ValueError, match="differ from those stored in c.pt"):
        resolve_class_names(["y", "x"], ["x", "y"], 3, "c.pt")
    with pytest.raises(
        ValueError, match=r"1 classes given \(p\), but the weights from c.pt have 2"
    ):
        resolve_class_names(["p"], None, 3, "c.pt")


def test_max_pixels_refuses_before_decoding(
    tmp_path, tiny_state, shapes_png, monkeypatch, capsys
):
    import ssd_tutorial.detect as detect

    png, _ = shapes_png  # 300 x 300 = 90 000 pixels
    ckpt = tmp_path / "plain.pt"
    torch.save(tiny_state, ckpt)

    def no_decoding(path, *args, **kwargs):
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(detect, "read_image", no_decoding)
    with pytest.raises(
        ValueError, match=r"shapes\.png: 300 x 300 .*--max-pixels \(now 50000\)"
    ):
        read_image_file(png, max_pixels=50_000)
    out = tmp_path / "d.png"
    assert (
        main(
            [
                str(png),
                "--checkpoint",
                str(ckpt),
                "--max-pixels",
                "50000",
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert "--max-pixels" in capsys.readouterr().err and not out.exists()
    monkeypatch.undo()
    # at the limit: read
    assert read_image_file(png, max_pixels=90_000).shape == (
        3,
        300,
        300,
    )


@pytest.mark.parametrize("height, width", [(2, 5000), (600, 2)])
def test_very_thin_images_are_drawn_at_a_sane_size(tmp_path, height, width):
    from ssd_tutorial.detect import save_detections_figure

    image = torch.full((3, height, width), 200, dtype=torch.uint8)
    detections = {
        "boxes": torch.tensor([[0.0, 0.0, width / 2, height / 2]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    out = save_detections_figure(
        image, detections, SHAPES_CLASSES, tmp_path / "thin.png"
    )
    with Image.open(out) as drawing:
        assert drawing.size[0] == 600 and 100 <= drawing.size[1] <= 2400
