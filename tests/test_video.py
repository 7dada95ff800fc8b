"""Detection on video (ssd_tutorial.video through ``python -m ssd_tutorial.detect
clip.mp4``).

The video is made by the test: ShapesDataset frames encoded by TorchCodec's
VideoEncoder.
TorchCodec needs FFmpeg's shared libraries (4 to 7), which pip does not install: where
they are missing the tests that decode or encode skip, saying so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ssd_tutorial.boxes import box_iou
from ssd_tutorial.data import ShapesDataset
from ssd_tutorial.detect import main
from ssd_tutorial.video import is_video, open_video, torchcodec_video_problem

ROOT = Path(__file__).resolve().parents[1]
# the book's trained tiny SSD300 (shapes)
BOOK_MODEL = ROOT / "book" / "results" / "shapes_tiny.pt"
NUM_FRAMES = 6


needs_ffmpeg = pytest.mark.skipif(
    torchcodec_video_problem() is not None,
    reason=f"TorchCodec cannot make or read a video here: {torchcodec_video_problem()}",
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    """A 6-frame 300 x 300 video of shapes at 5 fps (H.264 or the container's default
    codec)."""
    from torchcodec.encoders import VideoEncoder

    data = ShapesDataset(NUM_FRAMES, seed=2024)
    items = [data[i] for i in range(NUM_FRAMES)]
    frames = torch.stack([image for image, _ in items])  # [6, 3, 300, 300] uint8
    path = tmp_path_factory.mktemp("video") / "shapes_clip.mp4"
    VideoEncoder(frames, frame_rate=5).to_file(str(path), crf=0)
    return {"path": path, "targets": [t for _, t in items]}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


@needs_ffmpeg
def test_detect_on_a_video_writes_json_and_an_annotated_video(clip, tmp_path, capsys):
    out = tmp_path / "out"
    status, printed, _ = _run(
        [
            str(clip["path"]),
            "--checkpoint",
            str(BOOK_MODEL),
            "--output",
            str(out),
            "--score-threshold",
            "0.4",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert status == 0, printed
    report = json.loads((out / "shapes_clip.json").read_text())
    assert (report["width"], report["height"], report["num_frames"]) == (
        300,
        300,
        NUM_FRAMES,
    )
    assert report["fps"] == pytest.approx(5.0)
    assert [f["frame"] for f in report["frames"]] == list(range(NUM_FRAMES))
    assert [f["time_s"] for f in report["frames"]] == pytest.approx(
        [i / 5 for i in range(NUM_FRAMES)]
    )
    # the trained model finds the shapes in the decoded frames: most ground-truth
    # objects of each frame are hit by a detection of their class (a wrong frame order
    # or box scale fails)
    hits = total = 0
    for frame, target in zip(report["frames"], clip["targets"]):
        boxes = torch.tensor([d["box_xyxy_px"] for d in frame["detections"]]).reshape(
            -1, 4
        )
        labels = torch.tensor(
            [d["label_id"] for d in frame["detections"]], dtype=torch.long
        )
        iou = box_iou(target["boxes"], boxes)  # [G, N]
        same = target["labels"][:, None] == labels[None, :]
        hits += int(((iou > 0.5) & same).any(dim=1).sum())
        total += len(target["labels"])
    assert hits >= 0.7 * total, (hits, total)
    # the annotated copy: as many frames, same size, and not the input (boxes were
    # drawn)
    from torchcodec.decoders import VideoDecoder

    annotated = VideoDecoder(str(out / "shapes_clip_detections.mp4"))
    assert len(annotated) == NUM_FRAMES and annotated[0].shape == (3, 300, 300)
    original = VideoDecoder(str(clip["path"]))
    assert (annotated[0].float() - original[0].float()).abs().max() > 100


@needs_ffmpeg
def test_every_and_max_frames_and_annotated_frames(clip, tmp_path, capsys):
    out = tmp_path / "out"
    status, printed, _ = _run(
        [
            str(clip["path"]),
            "--checkpoint",
            str(BOOK_MODEL),
            "--output",
            str(out),
            "--every",
            "2",
            "--max-frames",
            "2",
            "--annotate",
            "frames",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert status == 0
    report = json.loads((out / "shapes_clip.json").read_text())
    assert [f["frame"] for f in report["frames"]] == [0, 2]
    assert sorted(p.name for p in (out / "shapes_clip_frames").iterdir()) == [
        "000000.png",
        "000002.png",
    ]
    assert "2 frames" in printed


@needs_ffmpeg
def test_json_detections_equal_the_predictor_on_decoded_frames(clip, tmp_path, capsys):
    from ssd_tutorial.detect import load_stored_detector
    from ssd_tutorial.inference import Predictor

    out = tmp_path / "out"
    assert (
        _run(
            [
                str(clip["path"]),
                "--checkpoint",
                str(BOOK_MODEL),
                "--output",
                str(out),
                "--annotate",
                "none",
                "--score-threshold",
                "0.2",
                "--device",
                "cpu",
            ],
            capsys,
        )[0]
        == 0
    )
    report = json.loads((out / "shapes_clip.json").read_text())
    decoder, _ = open_video(clip["path"])
    model = load_stored_detector(BOOK_MODEL).model
    expected = Predictor(model, score_threshold=0.2)(
        [decoder[i] for i in range(NUM_FRAMES)]
    )
    for frame, det in zip(report["frames"], expected):
        assert [d["label_id"] for d in frame["detections"]] == det["labels"].tolist()
        got = torch.tensor([d["box_xyxy_px"] for d in frame["detections"]]).reshape(
            -1, 4
        )
        # JSON rounds to 0.1 px
        torch.testing.assert_close(got, det["boxes"], rtol=0, atol=0.051)


def test_videos_are_recognised_by_suffix():
    assert is_video("a/clip.MP4") and is_video("x.mkv") and not is_video("photo.jpg")


def test_mixing_videos_and_images_is_refused(tmp_path, capsys):
    status, _, err = _run(
        [
            str(tmp_path / "clip.mp4"),
            str(tmp_path / "a.jpg"),
            "--checkpoint",
            str(BOOK_MODEL),
        ],
        capsys,
    )
    assert status == 2 and "separate runs" in err


def test_missing_video_is_named(tmp_path, capsys):
    status, _, err = _run(
        [str(tmp_path / "nope.mp4"), "--checkpoint", str(BOOK_MODEL)], capsys
    )
    assert status == 2 and "nope.mp4" in err


def test_without_torchcodec_the_error_says_what_to_install(
    tmp_path, monkeypatch, capsys
):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    # import fails, as without FFmpeg
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(RuntimeError, match="FFmpeg"):
        open_video(video)
    status, _, err = _run([str(video), "--checkpoint", str(BOOK_MODEL)], capsys)
    assert status == 2 and "TorchCodec does not load here" in err


@needs_ffmpeg
def test_without_a_video_encoder_the_frames_are_written(
    clip, tmp_path, monkeypatch, capsys
):
    from torchcodec.encoders import Encoder

    def no_encoder(self, *args, **kwargs):
        raise RuntimeError("avcodec_open2 failed")

    monkeypatch.setattr(Encoder, "open_file", no_encoder)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="writing annotated PNG frames instead"):
        status, _, _ = _run(
            [
                str(clip["path"]),
                "--checkpoint",
                str(BOOK_MODEL),
                "--output",
                str(out),
                "--max-frames",
                "1",
                "--device",
                "cpu",
            ],
            capsys,
        )
    assert status == 0
    assert json.loads((out / "shapes_clip.json").read_text())["annotated"] == str(
        out / "shapes_clip_frames"
    )
    assert [p.name for p in (out / "shapes_clip_frames").iterdir()] == ["000000.png"]
