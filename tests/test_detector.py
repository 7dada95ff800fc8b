"""The model owns its default boxes and input transform; one loader gives one Detector
type.

The fixtures in tests/fixtures were written by this package before the refactor that
made the model own its layout (#26): two tiny training checkpoints (SSD300 and SSD512
layouts) and the detections the loader of that time gave on seeded ShapesDataset images.
They must load, and detect the same, through today's loader.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ssd_tutorial.checkpoint import save_checkpoint, stored_prior_config
from ssd_tutorial.data import SHAPES_CLASSES, ShapesDataset
from ssd_tutorial.default_boxes import (
    SSD300_VOC,
    SSD512_VOC,
    DefaultBoxConfig,
    default_boxes,
)
from ssd_tutorial.detector import Detector, load_detector
from ssd_tutorial.inference import Predictor
from ssd_tutorial.model import SSD512, build_ssd

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
RECORDED = json.loads((FIXTURES / "pre_refactor_detections.json").read_text())[
    "detections"
]

# A layout of our own: six maps as SSD300, two more aspect ratios on the first and last
# two maps, other sizes (6 boxes in every cell: 6 x (38^2 + 19^2 + 10^2 + 5^2 + 3^2 + 1)
# = 11640).
CUSTOM = dataclasses.replace(
    SSD300_VOC,
    min_sizes=(20, 50, 100, 150, 200, 250),
    max_sizes=(50, 100, 150, 200, 250, 300),
    aspect_ratios=((2, 3),) * 6,
)


def test_ssd512_detects_without_priors_passed():
    torch.manual_seed(0)
    model = SSD512(num_classes=6, width_mult=0.125)
    image = ShapesDataset(1, image_size=512, seed=3)[0][0]  # uint8 [3, 512, 512]
    predictor = Predictor(model, score_threshold=0.0, precision="fp32")
    assert predictor.priors.shape == (24564, 4) and predictor.size == 512
    (found,) = predictor([image])
    assert len(found["scores"]) == 200  # an untrained model: every class scores ~1/6
    # in the image's pixels
    assert found["boxes"].min() >= 0 and found["boxes"].max() <= 512
    torch.testing.assert_close(
        model.default_boxes(), default_boxes(SSD512_VOC), rtol=0, atol=0
    )


def test_a_custom_layout_is_the_models_own():
    torch.manual_seed(0)
    model = build_ssd(4, CUSTOM, width_mult=0.125)
    assert model.boxes_per_cell == (6,) * 6
    with torch.no_grad():
        loc, _ = model(torch.zeros(1, 3, 300, 300))
    assert loc.shape[1] == model.default_boxes().shape[0] == 11640
    (found,) = Predictor(model, score_threshold=0.0, precision="fp32")(
        [ShapesDataset(1, seed=4)[0][0]]
    )
    assert 0 < len(found["scores"]) <= 200


def test_a_custom_layout_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_ssd(4, CUSTOM, width_mult=0.125)
    state = {
        "model": model.state_dict(),
        "class_names": ["a", "b", "c"],
        "prior_config": CUSTOM.to_dict(),  # plain data: weights_only=True reads it
    }
    save_checkpoint(state, tmp_path, iteration=1)
    assert (
        stored_prior_config(torch.load(tmp_path / "last.pt", weights_only=True))
        == CUSTOM
    )
    detector = load_detector(tmp_path / "last.pt")
    assert isinstance(detector, Detector)
    assert detector.prior_config == CUSTOM and detector.class_names == ("a", "b", "c")
    assert detector.names_stored and detector.names == ("a", "b", "c")
    image = ShapesDataset(1, seed=6)[0][0]
    expected = Predictor(model, score_threshold=0.05, precision="fp32")([image])[0]
    got = detector.predictor(score_threshold=0.05, precision="fp32")([image])[0]
    torch.testing.assert_close(got["scores"], expected["scores"], rtol=0, atol=0)
    torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=0, atol=0)


def test_default_box_config_dicts_are_checked():
    assert (
        DefaultBoxConfig.from_dict(json.loads(json.dumps(SSD512_VOC.to_dict())))
        == SSD512_VOC
    )
    with pytest.raises(ValueError, match="unknown fields"):
        DefaultBoxConfig.from_dict({**SSD300_VOC.to_dict(), "scales": [0.1]})


@pytest.mark.parametrize(
    "name, size",
    [
        ("tests/fixtures/pre_refactor_ssd300.pt", 300),
        ("tests/fixtures/pre_refactor_ssd512.pt", 512),
        ("book/results/shapes_tiny.pt", 300),
    ],
)
def test_checkpoints_from_before_the_refactor_detect_the_same(name, size):
    detector = load_detector(ROOT / name)
    assert detector.model.image_size == size
    if name.startswith("tests"):  # training checkpoints store their names
        assert detector.names == tuple(SHAPES_CLASSES)
    else:  # a plain state dict: names by class count, not stored
        assert detector.names is None and detector.class_names == tuple(SHAPES_CLASSES)
    dataset = ShapesDataset(3, image_size=size, seed=123)
    predictor = detector.predictor(
        score_threshold=0.05, precision="fp32", channels_last=False
    )
    # the recording ran on 2 threads; another count sums the convolutions in another
    # order (boxes then differ by ~5e-7 of their size), and other tests change it
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        found = predictor([dataset[i][0] for i in range(3)])
    finally:
        torch.set_num_threads(threads)
    for got, recorded in zip(found, RECORDED[name]):
        n = len(recorded["scores"])
        assert torch.equal(got["labels"][:n], torch.tensor(recorded["labels"]))
        torch.testing.assert_close(
            got["scores"][:n], torch.tensor(recorded["scores"]), rtol=0, atol=1e-6
        )
        torch.testing.assert_close(
            got["boxes"][:n], torch.tensor(recorded["boxes"]), rtol=0, atol=1e-4
        )


def test_the_loader_names_what_it_cannot_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_detector(tmp_path / "nowhere.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt"):
        load_detector(foreign)
