"""Detection on a video file: frames decoded by TorchCodec, detections per frame, an
annotated copy.

    python -m ssd_tutorial.detect clip.mp4 --checkpoint runs/voc0712/last.pt \\
        --output out/
    python -m ssd_tutorial.detect clip.mp4 --weights torchvision-coco --output out/ \\
        --every 5

For each video ``<stem>.<ext>`` the output folder gets ``<stem>.json`` -- the video's
size and frame rate, then one entry per processed frame (its index, its time in seconds,
its detections in pixels, as for images) -- and an annotated copy:
``<stem>_detections.mp4`` (TorchCodec's encoder), or with ``--annotate frames`` one PNG
per processed frame in ``<stem>_frames/``.  ``--every N`` processes every Nth frame,
``--max-frames`` stops early.

TorchCodec decodes and encodes through FFmpeg's shared libraries (versions 4 to 7),
which it does not ship: without them :func:`open_video` raises a RuntimeError that says
so.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from ssd_tutorial.cli import ExternalError
from ssd_tutorial.detector import detection_records
from ssd_tutorial.viz import COLORS

__all__ = [
    "VIDEO_SUFFIXES",
    "is_video",
    "VideoInfo",
    "torchcodec_video_problem",
    "open_video",
    "video_frames",
    "draw_detections",
    "detect_video",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video(path: str | Path) -> bool:
    """Is ``path`` a video file by its suffix (:data:`VIDEO_SUFFIXES`, any case)?"""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What the decoder says of a video: frames, frame rate, size in pixels."""

    num_frames: int
    fps: float
    width: int
    height: int


def torchcodec_video_problem() -> str | None:
    """Why TorchCodec cannot decode or encode video here, or None when it can.

    TorchCodec imports without FFmpeg (its image codecs need none) and then reports
    ``ffmpeg_major_version = None``: its video code could not load any FFmpeg's
    libraries.
    """
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder  # noqa: F401
        from torchcodec.encoders import Encoder  # noqa: F401
    except (
        Exception
    ) as err:  # ImportError, or the OSError/RuntimeError of libraries that do not load
        first_line = str(err).splitlines()[0] if str(err) else "import failed"
        return f"{type(err).__name__}: {first_line}"
    if getattr(torchcodec, "ffmpeg_major_version", None) is None:
        return "no FFmpeg shared libraries (libavcodec, libavformat, ...) were found"
    return None


def open_video(path: str | Path) -> tuple[Any, VideoInfo]:
    """A TorchCodec ``VideoDecoder`` for ``path`` and its :class:`VideoInfo`.

    FileNotFoundError for a missing file; RuntimeError when TorchCodec cannot load (no
    FFmpeg libraries); ValueError naming the file when FFmpeg cannot read it as a video.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    problem = torchcodec_video_problem()
    if problem is not None:
        raise ExternalError(
            f"cannot decode {path}: TorchCodec does not load here ({problem}). "
            "TorchCodec decodes video through FFmpeg's shared libraries (FFmpeg 4 to "
            "7), which it does not ship: install them (apt install ffmpeg, conda "
            "install ffmpeg, brew install ffmpeg)."
        )
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(str(path))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: not a video FFmpeg can read ({err})") from err
    meta = decoder.metadata
    fps = float(meta.average_fps or 0.0)
    return decoder, VideoInfo(len(decoder), fps, int(meta.width), int(meta.height))


def video_frames(
    decoder: Any, every: int = 1, max_frames: int | None = None, chunk: int = 8
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """Frames ``0, every, 2 every, ...`` (at most ``max_frames``) in chunks of
    ``chunk``: ``(indices, frames uint8 [n, 3, H, W], pts_seconds float64 [n])``."""
    if every < 1 or chunk < 1:
        raise ValueError(f"every and chunk must be >= 1, got {every} and {chunk}")
    indices = list(range(0, len(decoder), every))
    if max_frames is not None:
        indices = indices[:max_frames]
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        batch = decoder.get_frames_at(part)
        yield part, batch.data, batch.pts_seconds


def draw_detections(
    frame: Tensor, detections: dict[str, Tensor], names: Sequence[str]
) -> Tensor:
    """``frame`` uint8 ``[3, H, W]`` with ``detections`` (pixel xyxy) drawn on it ->
    uint8 ``[3, H, W]``.

    torchvision's ``draw_bounding_boxes``; one colour per class (matplotlib's tab10, as
    the figures of :func:`ssd_tutorial.detect.save_detections_figure`).
    """
    labels = detections["labels"].tolist()
    if not labels:
        return frame
    colors = [tuple(int(255 * c) for c in COLORS[(l - 1) % 10][:3]) for l in labels]
    captions = [
        f"{names[l - 1]} {s:.2f}" for l, s in zip(labels, detections["scores"].tolist())
    ]
    return draw_bounding_boxes(
        frame, detections["boxes"], labels=captions, colors=colors, width=2
    )


def detect_video(
    path: str | Path,
    predictor: Any,
    names: Sequence[str],
    out_dir: str | Path,
    *,
    every: int = 1,
    max_frames: int | None = None,
    annotate: str = "video",
    records: Any = None,
    header: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``predictor`` (:class:`ssd_tutorial.inference.Predictor`) on the frames of
    ``path``.

    Writes ``out_dir/<stem>.json`` and, by ``annotate``: ``"video"`` --
    ``<stem>_detections.mp4`` encoded by TorchCodec as the frames come (frame rate: the
    video's divided by ``every``); ``"frames"`` -- ``<stem>_frames/<index>.png``;
    ``"none"``.  ``records(detections, names)`` turns one frame's detections into
    JSON-ready dicts (default: :func:`ssd_tutorial.detector.detection_records`, without
    COCO category ids); ``header`` entries (weights, classes, ...) go first in the JSON.
    Returns the JSON's content.
    """
    records = detection_records if records is None else records
    if annotate not in ("video", "frames", "none"):
        raise ValueError(
            f"annotate must be 'video', 'frames' or 'none', got {annotate!r}"
        )
    path, out_dir = Path(path), Path(out_dir)
    decoder, info = open_video(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames_out: list[dict[str, Any]] = []
    writer = _AnnotatedOutput(out_dir, path.stem, annotate, info, every)
    try:
        for indices, frames, pts in video_frames(
            decoder, every, max_frames, chunk=predictor.batch_size
        ):
            dets = predictor(list(frames))
            for index, frame, t, det in zip(indices, frames, pts.tolist(), dets):
                det = {k: det[k].cpu() for k in ("boxes", "scores", "labels")}
                frames_out.append(
                    {
                        "frame": index,
                        "time_s": round(t, 4),
                        "detections": records(det, names),
                    }
                )
                writer.add(
                    index,
                    draw_detections(frame, det, names) if annotate != "none" else None,
                )
    finally:
        writer.close()
    report = {
        **(header or {}),
        "video": str(path),
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "num_frames": info.num_frames,
        "every": every,
        "annotated": writer.output,
        "frames": frames_out,
    }
    (out_dir / f"{path.stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


class _AnnotatedOutput:
    """Where annotated frames go: a video encoded as they come, PNG files, or
    nowhere."""

    def __init__(
        self, out_dir: Path, stem: str, annotate: str, info: VideoInfo, every: int
    ) -> None:
        self.annotate, self.output = annotate, None
        self._encoder = self._stream = None
        if annotate == "video":
            from torchcodec.encoders import Encoder

            self.output = str(out_dir / f"{stem}_detections.mp4")
            # H.264 in yuv420p needs even sides; an odd last row/column is dropped (see
            # add)
            self._even = (info.height - info.height % 2, info.width - info.width % 2)
            fps = (info.fps or 25.0) / every  # the processed frames, at their own pace
            try:
                self._encoder = Encoder()
                self._stream = self._encoder.add_video(
                    height=self._even[0], width=self._even[1], frame_rate=fps
                )
                self._encoder.open_file(self.output)
            except (
                RuntimeError,
                ValueError,
            ) as err:  # an FFmpeg without an encoder for .mp4
                warnings.warn(
                    f"cannot encode {self.output} ({err}); writing annotated PNG "
                    "frames instead",
                    stacklevel=3,
                )
                self._encoder = self._stream = None
                annotate = self.annotate = "frames"
        if annotate == "frames":
            self.output = str(out_dir / f"{stem}_frames")
            Path(self.output).mkdir(parents=True, exist_ok=True)

    def add(self, index: int, frame: Tensor | None) -> None:
        if frame is None:
            return
        if self._stream is not None:
            h, w = self._even
            self._stream.add_frames(frame[None, :, :h, :w].contiguous())  # [1, 3, h, w]
        elif self.annotate == "frames":
            Image.fromarray(frame.permute(1, 2, 0).numpy()).save(
                Path(self.output) / f"{index:06d}.png"
            )

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
