"""A trained SSD as ONNX, optionally with its decoding and NMS, checked with onnxruntime
(the command line is :mod:`ssd_tutorial.export`).

The ONNX model's input is the network's: ``images`` float ``[B, 3, S, S]`` (S = 300, or
512 for SSD512), RGB resized to S x S and normalized with the ImageNet mean and std, as
:func:`ssd_tutorial.inference.preprocess` makes it.  The batch size is dynamic.
Outputs:

* always ``loc [B, P, 4]`` (offsets) and ``conf_logits [B, P, C]`` (class 0 =
  background);
* with ``--with-postprocess`` also the detections of
  :func:`ssd_tutorial.inference.detect`, padded to ``top_k`` per image: ``boxes [B,
  top_k, 4]`` normalized xyxy (multiply by the image's width and height for pixels),
  ``scores [B, top_k]``, ``labels [B, top_k]`` int64 (1-based; 0 in the padding), and
  ``num_detections [B]`` int64 -- the first ``num_detections[b]`` rows of image b are
  its detections, best first.

Decoding, the softmax, the per-class candidates (best ``candidates_per_class`` of each
class) and the final top-k are ordinary ONNX operators; the class-wise NMS is ONNX's own
``NonMaxSuppression`` operator, run on every (image, class) group at once.  The
thresholds are fixed at export time.  The model's metadata (``metadata_props``) holds
the class names, the input size, the normalization and the resize (uint8 or float).

Needs the ``export`` extra: ``pip install onnx onnxruntime onnxscript`` (onnxscript is
what ``torch.onnx.export`` uses to write the graph; onnxruntime only for
:func:`check_onnx`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from ssd_tutorial.inference import detect
from ssd_tutorial.matching import VARIANCES, decode
from ssd_tutorial.preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["group_nms", "ExportableSSD", "export_onnx", "run_onnx", "check_onnx"]

OUTPUTS = ("loc", "conf_logits")
POSTPROCESS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
DEFAULT_OPSET = 18


# --------------------------------------------------------------------------------------
# NMS as one operator: PyTorch's version for the traced model, ONNX's NonMaxSuppression
# in the file
# --------------------------------------------------------------------------------------
@torch.library.custom_op("ssd_tutorial::group_nms", mutates_args=())
def group_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float
) -> Tensor:
    """Greedy NMS in each of G groups at once: ``boxes [G, K, 4]`` xyxy, ``scores [G,
    K]`` -> keep ``[G, K]`` bool.

    A group's candidates are its boxes with ``score > score_threshold``; from the best
    down, a box is kept unless its IoU with a kept box of its group is ``>
    iou_threshold`` (``torchvision.ops.nms`` in float64, as
    :func:`ssd_tutorial.inference.detect`).  Exported as ONNX ``NonMaxSuppression`` with
    the groups as its batch axis (see :func:`_group_nms_onnx`).
    """
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)  # [G, K]
    for g in range(scores.shape[0]):
        candidates = (scores[g] > score_threshold).nonzero().squeeze(1)  # [n]
        kept = nms(
            boxes[g, candidates].double(), scores[g, candidates].double(), iou_threshold
        )
        keep[g, candidates[kept]] = True
    return keep


@group_nms.register_fake
def _(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float
) -> Tensor:
    return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)


def _group_nms_onnx(
    boxes: Any, scores: Any, iou_threshold: float, score_threshold: float
) -> Any:
    """``group_nms`` in ONNX: NonMaxSuppression(boxes [G, K, 4], scores [G, 1, K])
    selects ``[N, 3]`` (group, class 0, box) triples; they are scattered into a ``[G,
    K]`` mask.

    ONNX's operator: candidates ``score > score_threshold``, suppression
    ``IoU > iou_threshold``, boxes in score order, at most
    ``max_output_boxes_per_class`` (= K: no cap) kept per group; onnxruntime computes
    the IoU in float32 (ours: float64), which can only matter for an IoU within ~1e-7 of
    the threshold.
    """
    from onnx import TensorProto
    from onnxscript import opset18 as op

    k = op.Shape(scores, start=1, end=2)  # [1] int64: K
    # [N, 3] int64
    selected = op.NonMaxSuppression(
        boxes,
        op.Unsqueeze(scores, [1]),
        k,
        op.Constant(value_floats=[float(iou_threshold)]),
        op.Constant(value_floats=[float(score_threshold)]),
    )
    group = op.Gather(selected, op.Constant(value_int=0), axis=1)  # [N]
    box = op.Gather(selected, op.Constant(value_int=2), axis=1)  # [N]
    flat = op.Add(op.Mul(group, k), box)  # [N]: position in the flat [G * K]
    total = op.Reshape(op.Size(scores), op.Constant(value_ints=[1]))  # [1]: G * K
    zeros = op.ConstantOfShape(total)  # [G * K] float 0
    ones = op.Expand(op.Constant(value_float=1.0), op.Shape(flat))  # [N]
    mask = op.ScatterND(zeros, op.Unsqueeze(flat, [1]), ones)  # [G * K]
    return op.Cast(op.Reshape(mask, op.Shape(scores)), to=TensorProto.BOOL)  # [G, K]


# --------------------------------------------------------------------------------------
# The exported module
# --------------------------------------------------------------------------------------
class ExportableSSD(nn.Module):
    """``model`` with its default boxes, and optionally
    :func:`ssd_tutorial.inference.detect`'s post-processing written with fixed-shape
    tensor operations (and :func:`group_nms`).

    ``forward(images [B, 3, S, S])`` -> ``(loc [B, P, 4], conf_logits [B, P, C])``, and
    with ``with_postprocess`` also ``boxes [B, N, 4]`` normalized xyxy, ``scores [B,
    N]``, ``labels [B, N]`` int64 and ``num_detections [B]`` int64, ``N = min(top_k,
    (C-1) * K)``, ``K = min(candidates_per_class, P)``; rows past ``num_detections`` are
    zeros.

    The steps are detect's (``nms="per_class"``): decode, clip to [0, 1], softmax
    without the background column; each (image, class): its best K scores, NMS over
    those above ``score_threshold``; each image: the kept boxes of all classes, best
    ``top_k`` first.
    """

    def __init__(
        self,
        model: nn.Module,
        priors: Tensor,
        with_postprocess: bool = False,
        *,
        score_threshold: float = 0.01,
        iou_threshold: float = 0.45,
        top_k: int = 200,
        candidates_per_class: int = 400,
        variances: Sequence[float] = VARIANCES,
        clip: bool = True,
    ) -> None:
        super().__init__()
        if priors.ndim != 2 or priors.shape[-1] != 4:
            raise ValueError(f"priors must have shape [P, 4], got {list(priors.shape)}")
        if top_k < 1 or candidates_per_class < 1:
            raise ValueError(
                f"top_k and candidates_per_class must be >= 1, got {top_k} and "
                f"{candidates_per_class}"
            )
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        self.model = model.eval()
        # [P, 4] cxcywh normalized
        self.register_buffer("priors", priors.detach().float().clone())
        self.with_postprocess = with_postprocess
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.top_k = int(top_k)
        self.candidates_per_class = int(candidates_per_class)
        self.variances = tuple(float(v) for v in variances)
        self.clip = clip

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        loc, conf_logits = self.model(images)  # [B, P, 4], [B, P, C]
        if not self.with_postprocess:
            return loc, conf_logits
        return (loc, conf_logits) + self.postprocess(loc, conf_logits)

    def postprocess(
        self, loc: Tensor, conf_logits: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``loc [B, P, 4]``, ``conf_logits [B, P, C]`` -> padded detections (see the
        class)."""
        batch, num_priors, num_classes = conf_logits.shape
        num_fg = num_classes - 1
        k = min(self.candidates_per_class, num_priors)
        boxes = decode(loc, self.priors, self.variances)  # [B, P, 4] normalized xyxy
        if self.clip:
            boxes = boxes.clamp(0.0, 1.0)
        scores = conf_logits.softmax(dim=-1)[..., 1:]  # [B, P, C-1]
        # ONNX TopK and torch.topk on CPU: equal values in index order, like detect's
        # stable sort
        top_scores, top_idx = scores.transpose(1, 2).topk(k, dim=-1)  # [B, C-1, K] each
        # [B, (C-1)*K, 4]
        cand = boxes.gather(1, top_idx.reshape(batch, num_fg * k, 1).expand(-1, -1, 4))
        keep = group_nms(
            cand.reshape(batch * num_fg, k, 4),
            top_scores.reshape(batch * num_fg, k),
            self.iou_threshold,
            self.score_threshold,
        ).reshape(batch, num_fg * k)  # [B, (C-1)*K]
        # [B, (C-1)*K]; scores > 0
        flat = torch.where(keep, top_scores.reshape(batch, num_fg * k), -1.0)
        n = min(self.top_k, num_fg * k)
        best, where = flat.topk(n, dim=-1)  # [B, n]: ties by class, then rank
        count = keep.sum(dim=1).clamp(max=n)  # [B]
        valid = torch.arange(n, device=loc.device)[None, :] < count[:, None]  # [B, n]
        # [B, n] 1-based
        labels = torch.where(valid, torch.div(where, k, rounding_mode="floor") + 1, 0)
        out_boxes = cand.gather(1, where[..., None].expand(-1, -1, 4))  # [B, n, 4]
        out_boxes = torch.where(valid[..., None], out_boxes, 0.0)
        out_scores = torch.where(valid, best, 0.0)
        return out_boxes, out_scores, labels, count


# --------------------------------------------------------------------------------------
# Export and check
# --------------------------------------------------------------------------------------
def _require(module: str) -> Any:
    """Import ``module`` of the ``export`` extra, or raise ImportError saying how to
    install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs {module!r}, which is not installed: pip install onnx "
            "onnxruntime onnxscript (or pip install -e '.[export]')"
        ) from err


def export_onnx(
    model: nn.Module,
    out: str | Path,
    priors: Tensor | None = None,
    *,
    with_postprocess: bool = False,
    image_size: int | None = None,
    class_names: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    **postprocess: Any,
) -> Path:
    """Write ``model`` (an :class:`~ssd_tutorial.model.SSD300` / ``SSD512``) to ``out``
    as ONNX.

    ``priors [P, 4]`` default to the model's own (``model.default_boxes()``);
    ``image_size`` to ``model.image_size``; ``postprocess`` goes to
    :class:`ExportableSSD` (thresholds, ``top_k``, ``candidates_per_class``).  The batch
    axis is dynamic.  One file (weights inside, no external data).
    """
    _require("onnxscript")
    onnx = _require("onnx")
    size = int(image_size if image_size is not None else model.image_size)
    if priors is None:
        priors = model.default_boxes()  # [P, 4] cxcywh: the model's own layout
    wrapper = ExportableSSD(
        model.cpu().float().eval(), priors.cpu(), with_postprocess, **postprocess
    ).eval()
    names = list(OUTPUTS) + (list(POSTPROCESS_OUTPUTS) if with_postprocess else [])
    example = torch.zeros(2, 3, size, size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        wrapper,
        (example,),
        None,
        input_names=["images"],
        output_names=names,
        opset_version=opset,
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
        dynamo=True,
        external_data=False,
        custom_translation_table={
            torch.ops.ssd_tutorial.group_nms.default: _group_nms_onnx
        },
        verbose=False,
    )
    proto = program.model_proto
    meta = {
        "image_size": str(size),
        "input": "RGB resized to image_size x image_size, (x / 255 - mean) / std",
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        # "uint8": resized on whole grey levels (ours); "float": on the float image
        "resize": model.input_transform.resize,
        "num_priors": str(int(priors.shape[0])),
        "boxes": "normalized xyxy (x1, y1, x2, y2 in 0..1 of the image)",
    }
    if class_names is not None:
        # label k is class_names[k - 1]
        meta["class_names"] = json.dumps(list(class_names))
    if with_postprocess:
        meta["postprocess"] = json.dumps(
            {
                "score_threshold": wrapper.score_threshold,
                "iou_threshold": wrapper.iou_threshold,
                "top_k": wrapper.top_k,
                "candidates_per_class": wrapper.candidates_per_class,
                "clip": wrapper.clip,
            }
        )
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(out))
    return out


def run_onnx(path: str | Path, images: Tensor) -> dict[str, Tensor]:
    """Run the ONNX file ``path`` with onnxruntime on CPU: ``images [B, 3, S, S]`` ->
    outputs by name."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": images.detach().cpu().float().numpy()})
    return {o.name: torch.from_numpy(v) for o, v in zip(session.get_outputs(), outputs)}


def check_onnx(
    path: str | Path,
    model: nn.Module,
    priors: Tensor | None = None,
    batch: int = 2,
    seed: int = 0,
    **postprocess: Any,
) -> dict[str, Any]:
    """Run ``path`` (onnxruntime, CPU) and ``model`` (PyTorch) on the same random batch.

    Returns ``{"batch", "max_abs_diff_loc", "max_abs_diff_conf"}`` and, when the file
    has the post-processing, ``"detections_identical"`` (labels and count equal, boxes
    and scores within 1e-4 of :func:`ssd_tutorial.inference.detect` on PyTorch's own
    outputs), ``"num_detections"`` and ``"max_abs_diff_boxes"`` /
    ``"max_abs_diff_scores"``.  ``postprocess``: the thresholds the file was exported
    with (defaults: detect's).
    """
    size = int(model.image_size)
    if priors is None:
        priors = model.default_boxes()
    images = torch.randn(
        batch, 3, size, size, generator=torch.Generator().manual_seed(seed)
    )
    model = model.cpu().float().eval()
    with torch.no_grad():
        loc, conf = model(images)
    got = run_onnx(path, images)
    report: dict[str, Any] = {
        "batch": batch,
        "max_abs_diff_loc": float((got["loc"] - loc).abs().max()),
        "max_abs_diff_conf": float((got["conf_logits"] - conf).abs().max()),
    }
    if "num_detections" in got:
        expected = detect(loc, conf, priors, **postprocess)
        identical, diff_boxes, diff_scores, counts = True, 0.0, 0.0, []
        for b, det in enumerate(expected):
            n = int(got["num_detections"][b])
            counts.append(n)
            if n != len(det["scores"]) or not torch.equal(
                got["labels"][b, :n], det["labels"]
            ):
                identical = False
                continue
            if n:
                diff_boxes = max(
                    diff_boxes, float((got["boxes"][b, :n] - det["boxes"]).abs().max())
                )
                diff_scores = max(
                    diff_scores,
                    float((got["scores"][b, :n] - det["scores"]).abs().max()),
                )
        identical = identical and diff_boxes <= 1e-4 and diff_scores <= 1e-4
        report.update(
            detections_identical=identical,
            num_detections=counts,
            max_abs_diff_boxes=diff_boxes,
            max_abs_diff_scores=diff_scores,
        )
    return report


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
