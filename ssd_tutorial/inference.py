"""Inference: from 8732 x C scores to a few detections.

The model answers every default box at once: ``loc [B, 8732, 4]`` offsets and
``conf_logits [B, 8732, C]`` class scores (class 0 is background).  :func:`detect` turns
that into a short list of boxes per image in four steps, for the whole batch at once:

1. **decode** the offsets against the default boxes (``matching.decode``) -> normalized
   xyxy;
2. **softmax** over the C classes, and drop the background column;
3. **score threshold**: keep each (box, class) pair whose probability is above
   ``score_threshold`` -- one box may stay as a candidate for several classes;
4. **class-aware non-maximum suppression**: among the (at most 400, as in Caffe SSD)
   best candidates of one class in one image, a box that overlaps a higher-scoring one
   by IoU > ``iou_threshold`` is dropped; then each image keeps its ``top_k`` best
   detections over all classes.  Three implementations give the same detections
   (``detect(..., nms=...)``): a ``torchvision.ops.nms`` call per (image, class) on the
   candidates that can still make the top ``top_k`` (``"per_class"``, the CPU default),
   one ``torchvision.ops.batched_nms`` call (``"batched"``), or an exact greedy NMS run
   for all (image, class) groups at once on padded overlap matrices (``"padded"``, the
   GPU default); they live in :mod:`ssd_tutorial.nms`.

Paper p.6 (testing): "we use a confidence threshold of 0.01 ... then apply nms with
jaccard overlap of 0.45 per class and keep the top 200 detections per image".

:class:`Predictor` wraps a model for raw images of any size and returns boxes in their
pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssd_tutorial.boxes import check_boxes
from ssd_tutorial.default_boxes import default_boxes
from ssd_tutorial.matching import VARIANCES, decode

# the three forms of NMS; the appendix imports _padded_greedy_nms from here
from ssd_tutorial.nms import (
    Detection,
    _batched_nms_detect,
    _padded_greedy_nms,
    _per_class_nms_detect,
)
from ssd_tutorial.preprocessing import InputTransform

__all__ = [
    "detect",
    "Predictor",
    "predict",
    "preprocess",
    "cpu_has_native_bf16",
    "pick_precision",
]

NMS_CHOICES = ("auto", "per_class", "batched", "padded")


def detect(
    loc: Tensor,
    conf_logits: Tensor,
    priors: Tensor,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    top_k: int = 200,
    candidates_per_class: int | None = 400,
    variances: Sequence[float] = VARIANCES,
    clip: bool = True,
    *,
    nms: str = "auto",
) -> list[Detection]:
    """Detections for a whole batch: decode, softmax, score threshold, class-aware NMS,
    top-k.

    * ``loc [B, P, 4]`` -- predicted offsets (``P = 8732`` for SSD300);
    * ``conf_logits [B, P, C]`` -- class logits, class 0 = background;
    * ``priors [P, 4]`` -- default boxes, normalized cxcywh.

    Returns one dict per image: ``"boxes" [N, 4]`` normalized xyxy, ``"scores" [N]``,
    ``"labels" [N]`` long in ``1..C-1``, sorted by descending score, ``N <= top_k``.

    ``candidates_per_class``: only the best this many candidates of each class and image
    go to NMS (``None``: all); not in the paper -- Caffe SSD's ``nms_param.top_k`` =
    400, as torchvision's ``topk_candidates``.  ``clip``: clip decoded boxes to the
    image (Caffe SSD does not, torchvision does).  ``nms`` picks how the class-aware NMS
    is computed, all with the same detections and the same tie order (within a class by
    box index; across classes by class, then box): ``"per_class"`` (a
    ``torchvision.ops.nms`` call per image and class, on the candidates that can still
    reach ``top_k``), ``"batched"`` (one ``batched_nms`` call), ``"padded"`` (all
    groups' greedy passes side by side, K steps whatever B and C); ``"auto"`` takes
    ``"per_class"`` on a CPU and ``"padded"`` on CUDA (``"batched"`` without a cap).
    Chapter 08 teaches the rule; the appendix explains the three forms and their speed.
    """
    if loc.ndim != 3 or loc.shape[-1] != 4:
        raise ValueError(f"loc must have shape [B, P, 4], got {list(loc.shape)}")
    if conf_logits.ndim != 3 or conf_logits.shape[:2] != loc.shape[:2]:
        raise ValueError(
            "conf_logits must have shape [B, P, C] with B, P as loc "
            f"{list(loc.shape[:2])}, got {list(conf_logits.shape)}"
        )
    if conf_logits.shape[-1] < 2:
        raise ValueError(
            "conf_logits need at least 2 classes (background + 1), got "
            f"{conf_logits.shape[-1]}"
        )
    check_boxes(priors, "priors")
    if priors.ndim != 2 or priors.shape[0] != loc.shape[1]:
        raise ValueError(
            f"priors must have shape [P, 4] with P = {loc.shape[1]}, got "
            f"{list(priors.shape)}"
        )
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if candidates_per_class is not None and candidates_per_class < 1:
        raise ValueError(
            f"candidates_per_class must be >= 1 or None, got {candidates_per_class}"
        )
    if nms not in NMS_CHOICES:
        raise ValueError(f"nms must be one of {NMS_CHOICES}, got {nms!r}")
    if nms == "auto":
        if loc.device.type != "cuda":
            nms = "per_class"
        else:
            nms = "padded" if candidates_per_class is not None else "batched"

    boxes = decode(loc, priors.to(loc), variances)  # [B, P, 4] normalized xyxy
    if clip:
        boxes = boxes.clamp(0.0, 1.0)
    probs = conf_logits.softmax(dim=-1)  # [B, P, C]
    if nms == "per_class":
        return _per_class_nms_detect(
            boxes, probs, score_threshold, iou_threshold, top_k, candidates_per_class
        )
    scores = probs[..., 1:]  # [B, P, C - 1]; background column dropped
    if nms == "padded":
        return _padded_greedy_nms(
            boxes, scores, score_threshold, iou_threshold, top_k, candidates_per_class
        )
    return _batched_nms_detect(
        boxes, scores, score_threshold, iou_threshold, top_k, candidates_per_class
    )


def preprocess(image: Tensor, size: int = 300, resize: str = "uint8") -> Tensor:
    """One raw image -> the model's input: uint8 ``[3, H, W]`` (or ``[1, H, W]`` grey)
    -> float ``[3, size, size]``, resized bilinearly and normalized with the ImageNet
    mean and std.

    The same steps as ``augmentation.SSDAugmentation(train=False)``; ``resize`` as in
    :class:`~ssd_tutorial.augmentation.InputTransform`, which does the work.
    """
    return InputTransform(size, resize)(image)


PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16),
    as torch's CPU feature probe reports it; False where it cannot tell (another
    architecture, another torch)."""
    try:
        features = torch._C._cpu._get_cpu_capability()  # {"avx512_bf16": True, ...}
    except (AttributeError, RuntimeError):
        return False
    return bool(features.get("avx512_bf16") or features.get("amx_bf16"))


def pick_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16"`` on a CPU with native bfloat16
    (:func:`cpu_has_native_bf16`), else ``"fp32"`` (other CPUs, where bf16 is emulated
    and slower, and CUDA); ``"bf16"``/``"fp32"`` as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return (
        "bf16"
        if torch.device(device).type == "cpu" and cpu_has_native_bf16()
        else "fp32"
    )


class Predictor:
    """A trained model made easy to call: raw uint8 images of any size in, boxes in
    their pixels out.

    ``Predictor(model)(images)`` with ``images`` a list of uint8 ``[3, H, W]`` tensors
    returns one dict per image, ``"boxes" [N, 4]`` xyxy **pixels of that image**,
    ``"scores" [N]``, ``"labels" [N]`` (1-based).  ``priors`` default to the model's own
    (``model.default_boxes()``), the input transform (resize and normalization) to
    ``model.input_transform``; ``size`` (the square input side) replaces the
    transform's; ``device`` defaults to the model's.  The thresholds are passed on to
    :func:`detect`.

    Speed (what it picks is in ``self.precision`` and ``self.channels_last``):

    * ``precision="auto"`` (default): the network runs under bfloat16 autocast on a CPU
      that has native bf16 (AVX512-BF16 / AMX, :func:`cpu_has_native_bf16`), in float32
      everywhere else (CUDA included); ``benchmarks/results/`` holds what it saves on
      the machines measured.  bf16 moves the logits by ~1e-2, so low scores and
      near-ties can change: detections above score 0.3 stay within 0.05 in score and IoU
      0.9 in box of float32's (``tests/test_inference.py`` on the book's model).
      ``"fp32"`` forces float32 (exact, the same on every machine: evaluation uses it);
      ``"bf16"`` forces bf16.
      The boxes and scores that :func:`detect` sees are float32 either way.
    * ``channels_last`` (default: on a CPU): the model's weights and the input batch in
      NHWC memory order, which the CPU convolutions run faster in.  The model is
      converted in place (as it is moved to ``device`` and put in eval mode); its values
      do not change.
    """

    def __init__(
        self,
        model: nn.Module,
        priors: Tensor | None = None,
        size: int | None = None,
        device: torch.device | str | None = None,
        *,
        score_threshold: float = 0.01,
        iou_threshold: float = 0.45,
        top_k: int = 200,
        batch_size: int = 16,
        precision: str = "auto",
        channels_last: bool | None = None,
    ) -> None:
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.precision = pick_precision(precision, self.device)
        self.channels_last = (
            self.device.type == "cpu" if channels_last is None else channels_last
        )
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # the model's own layout (SSD300's, SSD512's or a custom one)
        if priors is None:
            priors = (
                model.default_boxes()
                if hasattr(model, "default_boxes")
                else default_boxes()
            )
        self.priors = priors.to(self.device)  # [P, 4] cxcywh
        transform = getattr(model, "input_transform", None) or InputTransform(300)
        if size is not None:
            transform = InputTransform(size, transform.resize)
        self.transform = transform  # uint8 [3, H, W] -> float [3, S, S]
        self.size = transform.size
        self.detect_kwargs: dict[str, Any] = {
            "score_threshold": score_threshold,
            "iou_threshold": iou_threshold,
            "top_k": top_k,
        }
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: Sequence[Tensor]) -> list[Detection]:
        if isinstance(images, Tensor) and images.ndim == 3:
            raise TypeError(
                "Predictor takes a list of images; wrap a single image as [image]"
            )
        memory_format = (
            torch.channels_last if self.channels_last else torch.contiguous_format
        )
        results: list[Detection] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            # [b, 3, S, S]
            x = torch.stack([self.transform(im) for im in chunk]).to(self.device)
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast(
                self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
            ):
                loc, conf_logits = self.model(x)  # [b, P, 4], [b, P, C]
            # bf16 -> float32 before softmax and NMS
            loc, conf_logits = (
                loc.float(),
                conf_logits.float(),
            )
            for image, det in zip(
                chunk, detect(loc, conf_logits, self.priors, **self.detect_kwargs)
            ):
                height, width = image.shape[-2:]
                scale = torch.tensor(
                    [width, height, width, height],
                    dtype=det["boxes"].dtype,
                    device=self.device,
                )
                # normalized -> pixels
                results.append({**det, "boxes": det["boxes"] * scale})
        return results


def predict(
    model: nn.Module, images: Sequence[Tensor], **kwargs: Any
) -> list[Detection]:
    """``Predictor(model, **kwargs)(images)``: detections in each image's pixels."""
    return Predictor(model, **kwargs)(images)
