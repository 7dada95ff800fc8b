"""Tests for ssd_tutorial.export: ONNX files run by onnxruntime (CPU) against the
PyTorch model.

Exports take ~10-20 s each on a busy 2-core machine, so the file makes two: the book's
trained tiny SSD300 with the post-processing (through the command line), and a tiny
SSD512 without.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "onnx",
    reason="ONNX export tests need the 'export' extra (pip install onnx onnxruntime "
    "onnxscript)",
)
pytest.importorskip(
    "onnxscript", reason="torch.onnx.export needs onnxscript (the 'export' extra)"
)
pytest.importorskip(
    "onnxruntime",
    reason="the parity tests run the files with onnxruntime (the 'export' extra)",
)

from ssd_tutorial.data import ShapesDataset  # noqa: E402
from ssd_tutorial.default_boxes import SSD512_VOC, default_boxes  # noqa: E402
from ssd_tutorial.detect import load_stored_detector  # noqa: E402
from ssd_tutorial.export import (  # noqa: E402
    ExportableSSD,
    export_onnx,
    group_nms,
    main,
    run_onnx,
)
from ssd_tutorial.inference import detect, preprocess  # noqa: E402
from ssd_tutorial.model import SSD512  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the book's trained tiny SSD300 (5 shape classes)
BOOK_MODEL = ROOT / "book" / "results" / "shapes_tiny.pt"


@pytest.fixture(scope="module")
def shapes_images() -> torch.Tensor:
    """8 held-out ShapesDataset images as the network takes them: [8, 3, 300, 300]
    normalized."""
    data = ShapesDataset(8, seed=4321)
    return torch.stack([preprocess(data[i][0], 300) for i in range(8)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """The command line on the book's model, with the post-processing."""
    out = tmp_path_factory.mktemp("onnx") / "shapes_tiny_nms.onnx"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(
            ["--checkpoint", str(BOOK_MODEL), "--out", str(out), "--with-postprocess"]
        )
    stored = load_stored_detector(BOOK_MODEL)
    return {
        "status": status,
        "path": out,
        "printed": printed.getvalue(),
        "model": stored.model,
    }


def test_cli_writes_a_file_and_reports_parity(exported):
    assert exported["status"] == 0 and exported["path"].is_file()
    line = next(
        l
        for l in exported["printed"].splitlines()
        if l.startswith("onnxruntime vs PyTorch: ")
    )
    report = json.loads(line.split(": ", 1)[1])
    assert report["detections_identical"] is True
    assert report["max_abs_diff_loc"] < 1e-4 and report["max_abs_diff_conf"] < 1e-4


def test_network_outputs_match_pytorch_at_any_batch(exported, shapes_images):
    model = exported["model"]
    # exported with an example batch of 2: the batch axis is dynamic
    for batch in (
        1,
        5,
        8,
    ):
        x = shapes_images[:batch]
        got = run_onnx(exported["path"], x)
        with torch.no_grad():
            loc, conf = model(x)
        assert got["loc"].shape == (batch, 8732, 4) and got["conf_logits"].shape == (
            batch,
            8732,
            6,
        )
        torch.testing.assert_close(got["loc"], loc, rtol=0, atol=1e-4)
        # the trained model's logits reach ~37 on these images: float32 rounding alone
        # (PyTorch against itself in float64) is ~1e-4 there, so 1e-4 plus 1e-5 of the
        # largest logit
        scale = conf.abs().max().item()
        assert (got["conf_logits"] - conf).abs().max().item() <= 1e-4 + 1e-5 * scale


def test_onnxruntime_is_as_close_to_float64_as_pytorch(exported, shapes_images):
    # which of the two float32 results is off?  Neither more than float32 rounding:
    # against the same network in float64, onnxruntime's error is at most 1.5x PyTorch's
    # own float32 error
    import copy

    model, x = exported["model"], shapes_images[:4]
    got = run_onnx(exported["path"], x)
    with torch.no_grad():
        loc32, conf32 = model(x)
        loc64, conf64 = copy.deepcopy(model).double()(x.double())
    for ours, theirs, exact in (
        (loc32, got["loc"], loc64),
        (conf32, got["conf_logits"], conf64),
    ):
        torch_error = (ours.double() - exact).abs().max().item()
        ort_error = (theirs.double() - exact).abs().max().item()
        assert 0 < torch_error < 1e-3 and ort_error <= 1.5 * torch_error


def test_postprocess_gives_detects_detections(exported, shapes_images):
    model = exported["model"]
    got = run_onnx(exported["path"], shapes_images)
    with torch.no_grad():
        loc, conf = model(shapes_images)
    # score 0.01, IoU 0.45, top 200, 400 per class
    expected = detect(loc, conf, default_boxes())
    assert got["boxes"].shape == (8, 200, 4) and got["labels"].dtype == torch.int64
    for b, det in enumerate(expected):
        n = len(det["scores"])
        assert int(got["num_detections"][b]) == n
        assert torch.equal(got["labels"][b, :n], det["labels"])
        torch.testing.assert_close(got["boxes"][b, :n], det["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(
            got["scores"][b, :n], det["scores"], rtol=0, atol=1e-4
        )
        # the padding: zeros, label 0
        assert not got["labels"][b, n:].any() and not got["scores"][b, n:].any()
    # a real test: there are detections to compare
    assert sum(len(d["scores"]) for d in expected) > 8


def test_metadata_says_how_to_feed_the_model(exported):
    import onnx

    proto = onnx.load(str(exported["path"]), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == [
        "ellipse",
        "rectangle",
        "triangle",
        "ring",
        "cross",
    ]
    assert (
        meta["image_size"] == "300" and json.loads(meta["postprocess"])["top_k"] == 200
    )
    assert meta["resize"] == "uint8"  # ours; torchvision's weights would say "float"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406]  # ImageNet's, by hand
    assert [o.name for o in proto.graph.output] == [
        "loc",
        "conf_logits",
        "boxes",
        "scores",
        "labels",
        "num_detections",
    ]
    assert any(node.op_type == "NonMaxSuppression" for node in proto.graph.node)


def test_ssd512_network_export(tmp_path):
    torch.manual_seed(0)
    model = SSD512(num_classes=4, width_mult=0.125).eval()
    path = export_onnx(model, tmp_path / "ssd512.onnx")
    for batch in (1, 3):
        x = torch.randn(
            batch, 3, 512, 512, generator=torch.Generator().manual_seed(batch)
        )
        got = run_onnx(path, x)
        assert sorted(got) == ["conf_logits", "loc"]
        with torch.no_grad():
            loc, conf = model(x)
        assert got["loc"].shape == (batch, 24564, 4)
        torch.testing.assert_close(got["loc"], loc, rtol=0, atol=1e-4)
        torch.testing.assert_close(got["conf_logits"], conf, rtol=0, atol=1e-4)


def test_group_nms_hand_worked_in_pytorch_and_onnx(tmp_path):
    # group 0: A and B overlap with IoU 0.9 (B suppressed), C is apart (kept), D is
    # under the score threshold 0.01 (never a candidate).  group 1: same boxes, B first:
    # A suppressed.
    boxes = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],
            [0.0, 0.0, 1.0, 0.9],
            [2.0, 2.0, 3.0, 3.0],
            [5.0, 5.0, 6.0, 6.0],
        ]
    )
    boxes = boxes.expand(2, 4, 4).contiguous()  # [G=2, K=4, 4]
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.005], [0.5, 0.8, 0.7, 0.02]])  # [2, 4]
    expected = torch.tensor([[True, False, True, False], [False, True, True, True]])
    assert torch.equal(group_nms(boxes, scores, 0.45, 0.01), expected)

    class Only(torch.nn.Module):
        def forward(self, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return group_nms(b, s, 0.45, 0.01)

    import onnxruntime as ort

    from ssd_tutorial.onnx_export import _group_nms_onnx

    path = tmp_path / "nms.onnx"
    torch.onnx.export(
        Only().eval(),
        (boxes, scores),
        str(path),
        dynamo=True,
        verbose=False,
        custom_translation_table={
            torch.ops.ssd_tutorial.group_nms.default: _group_nms_onnx
        },
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(
        None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), (boxes, scores))}
    )
    assert got.tolist() == expected.tolist()


def test_exportable_refuses_bad_settings():
    model = SSD512(num_classes=3, width_mult=0.125)
    with pytest.raises(ValueError, match="priors must have shape"):
        ExportableSSD(model, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="top_k and candidates_per_class must be >= 1"):
        ExportableSSD(model, default_boxes(SSD512_VOC), True, top_k=0)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert (
        main(
            [
                "--checkpoint",
                str(tmp_path / "missing.pt"),
                "--out",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 2
    )
    assert "missing.pt" in capsys.readouterr().err
