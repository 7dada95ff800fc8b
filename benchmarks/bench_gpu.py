"""GPU speed of ssd_tutorial against torchvision's SSD300, in one run (< 4 minutes on an
H100).

    python benchmarks/bench_gpu.py --out OUT_DIR [--jpeg-root VOC_FOLDER] [--budget 200]
    python benchmarks/bench_gpu.py --out OUT_DIR --smoke  # tiny CPU dry run (the tests)

Measures, each against a baseline measured in the same run:

* training images/s at batch 32 and 64 (bf16 autocast, channels_last): the package's own
  training step (``Trainer.train_step``: model + ``build_targets`` + ``multibox_loss`` +
  fused SGD), eager and with ``cfg.compile`` (the model compiled), plus the whole step
  compiled (model + targets + loss captured by ``torch.compile``, objects padded to a
  fixed count); torchvision's ``ssd300_vgg16`` (its own matching and loss) eager; the
  bare network forward + backward (mean of the outputs as loss, same fused SGD), eager
  and compiled -- the ceiling;
* MFU: FLOPs of one forward + backward counted by
  ``torch.utils.flop_counter.FlopCounterMode``, times images/s, over the card's dense
  bf16 peak;
* inference images/s with decoding and NMS at batch 1 and 64 (``model`` +
  ``inference.detect``, whose default NMS on CUDA is the padded all-groups-at-once one,
  against torchvision's eval forward with its postprocess), random weights for both;
  ``detect(nms="batched")`` at batch 64 too, and the fraction of images on which the two
  NMS paths agree;
* training images/s on real JPEGs (``--jpeg-root``, a VOC-layout folder, cycled): CPU
  DataLoader workers (``VOCDataset`` + ``SSDAugmentation``, the Trainer's own loader)
  and the GPU path (nvjpeg batched ``decode_jpeg`` +
  ``gpu_augmentation.gpu_ssd_augment``), against synthetic input.

Stages run in order of importance; a stage that would overrun ``--budget`` seconds is
skipped and listed under ``skipped``.  A failing stage is recorded under ``errors`` and
the run goes on.
Writes ``OUT_DIR/gpu_<card>.json`` and ``OUT_DIR/gpu_<card>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from ssd_tutorial.config import get_config  # noqa: E402
from ssd_tutorial.data import decode_jpegs  # noqa: E402
from ssd_tutorial.default_boxes import default_boxes  # noqa: E402
from ssd_tutorial.gpu_augmentation import gpu_ssd_augment  # noqa: E402
from ssd_tutorial.inference import detect  # noqa: E402
from ssd_tutorial.model import TINY_WIDTH  # noqa: E402
from ssd_tutorial.trainer import Trainer, compute_loss  # noqa: E402

# Dense bf16 peak (TFLOP/s) by card name, from NVIDIA's data sheets (no sparsity).
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)
FIXED_OBJECTS = 32  # objects per image after padding, for the compiled whole step


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def card_name(device: torch.device) -> tuple[str, str]:
    """(full device name, short card id for file names, e.g. "h100")."""
    if device.type != "cuda":
        return "cpu", "cpu"
    name = torch.cuda.get_device_name(device)
    for short in ("H200", "H100", "A100", "L40S", "L4", "A10G"):
        if short in name:
            return name, short.lower()
    return name, "".join(c for c in name.lower() if c.isalnum())[:20] or "gpu"


def bf16_peak(name: str) -> float | None:
    """Dense bf16 TFLOP/s of the card, or None when unknown."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any],
    device: torch.device,
    warmup: int,
    iters: int,
    max_seconds: float,
) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times, then time up to ``iters`` calls (stopping after
    ``max_seconds``)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    n = 0
    while n < iters:
        fn()
        n += 1
        if time.perf_counter() - t0 > max_seconds:
            break
    sync(device)
    seconds = time.perf_counter() - t0
    return {"iters": n, "seconds": round(seconds, 4), "seconds_per_iter": seconds / n}


def synthetic_batch(
    batch: int, num_classes: int, device: torch.device, seed: int
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Random normalized images ``[B, 3, 300, 300]`` (channels_last) and 1-4 random
    boxes per image.

    Boxes: normalized xyxy, sides 0.1-0.6; labels 1..num_classes-1.
    """
    g = torch.Generator().manual_seed(seed)
    images = (
        torch.randn(batch, 3, 300, 300, generator=g)
        .to(device)
        .contiguous(memory_format=torch.channels_last)
    )
    boxes, labels = [], []
    for _ in range(batch):
        k = int(torch.randint(1, 5, (), generator=g))
        xy = torch.rand(k, 2, generator=g) * 0.5
        wh = 0.1 + 0.5 * torch.rand(k, 2, generator=g)
        # [k, 4]
        boxes.append(torch.cat((xy, (xy + wh).clamp(max=1.0)), dim=1).to(device))
        # [k]
        labels.append(torch.randint(1, num_classes, (k,), generator=g).to(device))
    return images, boxes, labels


def pad_objects(
    boxes: list[Tensor], labels: list[Tensor], fixed: int
) -> tuple[list[Tensor], list[Tensor], int]:
    """Pad every image to ``fixed`` objects with zero-area boxes of label 0 (truncating
    extras).

    A zero-area box has IoU 0 with every default box, so it claims no default box and is
    never matched: ``build_targets`` gives exactly the targets of the unpadded lists
    (the smoke run checks it).  Fixed shapes let ``torch.compile`` capture the step
    once.  Returns the padded lists and how many objects had to be dropped (0 unless an
    image has more than ``fixed``).
    """
    out_b, out_l, dropped = [], [], 0
    for b, lab in zip(boxes, labels):
        n = min(int(b.shape[0]), fixed)
        dropped += int(b.shape[0]) - n
        pb = b.new_zeros((fixed, 4))
        pl = lab.new_zeros((fixed,))
        pb[:n], pl[:n] = b[:n], lab[:n]
        out_b.append(pb)
        out_l.append(pl)
    return out_b, out_l, dropped


class TinyBackbone(nn.Module):
    """Smoke runs only: six small feature maps (38, 19, 10, 5, 3, 1) for torchvision's
    SSD class."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        c = channels
        # 300 -> 38
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 2, 1),
            nn.ReLU(),
        )
        # 38 -> 19 -> 10 -> 5 -> 3 -> 1
        self.downs = nn.ModuleList(
            [nn.Conv2d(c, c, 3, 2, 1) for _ in range(4)] + [nn.Conv2d(c, c, 3, 1, 0)]
        )

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        x = self.stem(x)
        maps = OrderedDict([("0", x)])
        for i, down in enumerate(self.downs):
            x = torch.relu(down(x))
            maps[str(i + 1)] = x
        return maps


def torchvision_ssd(num_classes: int, smoke: bool) -> nn.Module:
    """torchvision's ``ssd300_vgg16`` (random weights); in smoke runs its SSD class on a
    tiny backbone."""
    from torchvision.models.detection import ssd300_vgg16
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    if not smoke:
        return ssd300_vgg16(
            weights=None, weights_backbone=None, num_classes=num_classes
        )
    # the anchors of ssd300_vgg16
    anchors = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    return SSD(TinyBackbone(), anchors, (300, 300), num_classes)


class GpuJpegSource:
    """Real JPEGs for the GPU path: file bytes and annotations held in memory, decoded
    per batch.

    ``batch(i)`` -> (list of uint8 ``[3, H, W]`` on ``device``, boxes list ``[G, 4]``
    xyxy px, labels list ``[G]``), cycling through the images.  Decoding is nvjpeg's
    batched ``data.decode_jpegs(list, device="cuda")`` (the CPU decoder in smoke runs).
    """

    def __init__(
        self,
        items: list[tuple[Tensor, Tensor, Tensor]],
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.data = [d for d, _, _ in items]  # raw JPEG bytes, uint8 [N]
        self.boxes = [b.to(device) for _, b, _ in items]
        self.labels = [lab.to(device) for _, _, lab in items]
        self.batch_size = batch_size
        self.device = device

    def batch(self, i: int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        n = len(self.data)
        idx = [(i * self.batch_size + j) % n for j in range(self.batch_size)]
        data = [self.data[k] for k in idx]
        images = decode_jpegs(data, device=self.device)
        return images, [self.boxes[k] for k in idx], [self.labels[k] for k in idx]


def load_jpegs(
    root: Path | None, limit: int, smoke: bool
) -> tuple[list[tuple[Tensor, Tensor, Tensor]], str]:
    """(JPEG bytes, boxes px, labels) of a VOC-layout folder; without one, ShapesDataset
    images encoded to JPEG in memory.  Returns the items and a description of the
    source."""
    from ssd_tutorial.data import ShapesDataset, VOCDataset, encode_jpeg

    if root is not None:
        ds = VOCDataset(root, split="trainval")
        items = []
        for k in range(min(len(ds), limit)):
            ann = ds.annotation(k)
            data = torch.frombuffer(
                bytearray((ds.root / "JPEGImages" / f"{ds.ids[k]}.jpg").read_bytes()),
                dtype=torch.uint8,
            )
            items.append((data, ann["boxes"].float(), ann["labels"].long()))
        return items, f"VOC folder {root.name} ({len(items)} images)"
    shapes = ShapesDataset(min(limit, 8 if smoke else 256), seed=1)
    items = []
    for k in range(len(shapes)):
        image, target = shapes[k]
        items.append(
            (encode_jpeg(image, quality=90), target["boxes"], target["labels"])
        )
    return items, f"ShapesDataset encoded to JPEG in memory ({len(items)} images)"


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------
class Run:
    """Holds the settings, the clock and the results; ``stage`` runs one measurement
    safely."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.smoke = args.smoke or self.device.type != "cuda"
        if self.device.type != "cuda" and not args.smoke:
            print(
                "no CUDA device: running the smoke settings on the CPU", file=sys.stderr
            )
        self.t0 = time.perf_counter()
        self.budget = args.budget
        s = self.smoke
        self.batches = (2,) if s else (32, 64)
        self.big = self.batches[-1]
        self.warmup, self.iters, self.max_seconds = (1, 1, 30.0) if s else (3, 12, 4.0)
        self.width = TINY_WIDTH if s else 1.0
        self.amp = "none" if self.device.type != "cuda" else "bf16"
        self.name, self.card = card_name(self.device)
        self.results: dict[str, Any] = {
            "device": self.name,
            "card": self.card,
            "smoke": s,
            "torch": torch.__version__,
            "torchvision": __import__("torchvision").__version__,
            "settings": {
                "batches": list(self.batches),
                "warmup": self.warmup,
                "timed_iters": self.iters,
                "amp": self.amp,
                "channels_last": True,
                "width_mult": self.width,
                "fixed_objects_compiled_step": FIXED_OBJECTS,
            },
            "train_img_s": {},
            "inference_img_s": {},
            "ratios": {},
            "stage_seconds": {},
            "skipped": [],
            "errors": {},
            "notes": [],
        }
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.tmp = tempfile.TemporaryDirectory()
        root = Path(args.jpeg_root) if args.jpeg_root else None
        if (
            root is not None
            and not (root / "ImageSets" / "Main" / "trainval.txt").is_file()
        ):
            print(
                f"--jpeg-root {root}: no ImageSets/Main/trainval.txt, using synthetic "
                "JPEGs",
                file=sys.stderr,
            )
            root = None
        self.jpeg_root = root
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def stage(self, name: str, estimate: float, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless ``estimate`` seconds would overrun the budget; never
        raise."""
        if self.elapsed() + estimate > self.budget:
            self.results["skipped"].append(name)
            print(
                f"-- skip {name} (elapsed {self.elapsed():.0f} s, estimate "
                f"{estimate:.0f} s)",
                flush=True,
            )
            return None
        t = time.perf_counter()
        print(f"-- {name} (elapsed {self.elapsed():.0f} s)", flush=True)
        try:
            return fn()
        except Exception as error:  # a failing stage must not lose the others' numbers
            traceback.print_exc()
            self.results["errors"][name] = f"{type(error).__name__}: {error}"[:800]
            return None
        finally:
            self.results["stage_seconds"][name] = round(time.perf_counter() - t, 1)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.save()

    def save(self) -> Path:
        """Write the results so far (a run killed by an outer timeout keeps what it
        measured)."""
        suffix = "_real_data" if self.args.only_real_data else ""
        path = self.out / f"gpu_{self.card}{suffix}.json"
        path.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        return path

    # -- builders ----------------------------------------------------------------------
    def trainer(
        self, batch: int, compile_model: bool = False, real_data: bool = False
    ) -> Trainer:
        """The package's Trainer: VOC classes (21) when a JPEG folder is given, else
        shapes (6)."""
        overrides: dict[str, Any] = dict(
            batch_size=batch,
            compile=compile_model,
            width_mult=self.width,
            amp=self.amp,
            channels_last=True,
            grad_clip_norm=0.0,  # the paper's recipe (ssd300_voc0712): no clipping
            tensorboard=False,
            eval_every=0,
            checkpoint_every=0,
            augment=True,
            # the CPU-worker path: workers decode, augment and resize; the GPU path is
            # measured separately (nvjpeg + gpu_ssd_augment)
            augment_on_gpu=False,
            pin_memory=self.device.type == "cuda",
            num_workers=0 if self.smoke else min(16, os.cpu_count() or 1),
        )
        if self.jpeg_root is not None:
            overrides.update(
                dataset="voc",
                voc_roots=(str(self.jpeg_root),),
                val_root="",
                train_split="trainval",
            )
        else:
            overrides.update(
                dataset="shapes",
                shapes_train_images=max(batch * 4, 256),
                shapes_val_images=0,
            )
        cfg = get_config("shapes_gpu", **overrides)
        out = (
            Path(self.tmp.name)
            / f"run_{batch}_{int(compile_model)}_{int(real_data)}_{time.monotonic_ns()}"
        )
        return Trainer(cfg, out, device=self.device, progress=False)

    def autocast(self) -> Any:
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"
        )


# --------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------
def train_step_closure(
    trainer: Trainer, images: Tensor, boxes: list[Tensor], labels: list[Tensor]
) -> Callable[[], Any]:
    trainer.model.train()
    return lambda: trainer.train_step(images, boxes, labels)


def compiled_step(
    run: Run, trainer: Trainer, smoke_backend: str | None = None
) -> Callable[[Tensor, list[Tensor], list[Tensor]], Any]:
    """The whole step compiled: model + build_targets + multibox_loss in one
    ``torch.compile``d function (objects padded to FIXED_OBJECTS), then backward and the
    Trainer's fused SGD step."""

    def forward_loss(
        images: Tensor, boxes: list[Tensor], labels: list[Tensor]
    ) -> Tensor:
        with run.autocast():
            loc, conf_logits = trainer.model(images)  # [B, 8732, 4], [B, 8732, C]
        total, _, _ = compute_loss(trainer.loss_fn, loc, conf_logits, boxes, labels)
        return total

    compiled = (
        torch.compile(forward_loss, backend=smoke_backend)
        if smoke_backend
        else torch.compile(forward_loss)
    )

    def step(images: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        boxes, labels, dropped = pad_objects(boxes, labels, FIXED_OBJECTS)
        if dropped:
            run.results["notes"].append(
                f"compiled step: {dropped} objects beyond {FIXED_OBJECTS} dropped"
            )
        total = compiled(images, boxes, labels)
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        trainer._step_unless(~torch.isfinite(total.detach()))
        trainer.scheduler.step()
        return total.detach()

    trainer.model.train()
    return step


def bare_step(
    run: Run, trainer: Trainer, compile_it: bool, smoke_backend: str | None = None
) -> Callable[[Tensor], Any]:
    """The network alone: forward, mean of both outputs as the loss, backward, fused
    SGD."""

    def forward_loss(images: Tensor) -> Tensor:
        with run.autocast():
            loc, conf_logits = trainer.model(images)
        return loc.float().mean() + conf_logits.float().mean()

    fwd = forward_loss
    # smoke: the compiled whole step already exercises dynamo
    if compile_it and not run.smoke:
        fwd = (
            torch.compile(forward_loss, backend=smoke_backend)
            if smoke_backend
            else torch.compile(forward_loss)
        )

    def step(images: Tensor) -> None:
        loss = fwd(images)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()

    trainer.model.train()
    return step


def count_flops(run: Run, trainer: Trainer) -> float:
    """FLOPs of one image's forward + backward through the network (FlopCounterMode,
    batch 2 / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    images, _, _ = synthetic_batch(2, trainer.num_classes, run.device, seed=5)
    trainer.model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        with run.autocast():
            loc, conf_logits = trainer.model(images)
        (loc.float().mean() + conf_logits.float().mean()).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def torchvision_train(run: Run, batch: int, num_classes: int) -> float:
    model = (
        torchvision_ssd(num_classes, run.smoke)
        .to(run.device)
        .to(memory_format=torch.channels_last)
        .train()
    )
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        opt = torch.optim.SGD(
            params,
            lr=1e-3,
            momentum=0.9,
            weight_decay=5e-4,
            fused=run.device.type == "cuda",
        )
    except (TypeError, RuntimeError):
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    images, boxes, labels = synthetic_batch(batch, num_classes, run.device, seed=batch)
    # [3, 300, 300] in [0, 1]
    pictures = [(img * 0.25 + 0.5).clamp(0, 1).contiguous() for img in images]
    # pixels
    targets = [{"boxes": b * 300.0, "labels": lab} for b, lab in zip(boxes, labels)]

    def step() -> None:
        with run.autocast():
            losses = model(pictures, targets)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    timing = measure(step, run.device, run.warmup, run.iters, run.max_seconds)
    model = opt = None  # free its memory before the next row (the closure holds them)
    return batch / timing["seconds_per_iter"]


def _as_set(det: dict[str, Tensor]) -> list[tuple[float, ...]]:
    """Detections as sorted (score, label, box) tuples rounded to 1e-4: equal scores may
    come out in any order."""
    rows = torch.cat(
        (
            det["scores"][:, None].float(),
            det["labels"][:, None].float(),
            det["boxes"].float(),
        ),
        dim=1,
    )
    return sorted(tuple(round(v, 4) for v in row) for row in rows.tolist())


def inference_nms_agreement(run: Run, trainer: Trainer, batch: int) -> float:
    """Fraction of images whose detections (scores, labels, boxes rounded to 1e-4) from
    ``detect(nms="padded")`` equal those from ``detect(nms="batched")`` on the same
    outputs."""
    model = trainer.model.eval()
    priors = default_boxes().to(run.device)
    images, _, _ = synthetic_batch(
        batch, trainer.num_classes, run.device, seed=batch + 1
    )
    with torch.inference_mode():
        with run.autocast():
            loc, conf_logits = model(images)
        loc, conf_logits = loc.float(), conf_logits.float()
        batched = detect(
            loc, conf_logits, priors, candidates_per_class=400, nms="batched"
        )
        padded = detect(
            loc, conf_logits, priors, candidates_per_class=400, nms="padded"
        )
    model.train()
    return sum(_as_set(a) == _as_set(b) for a, b in zip(batched, padded)) / batch


def inference_ours(run: Run, trainer: Trainer, batch: int, nms: str) -> float:
    """Images/s of model + ``inference.detect`` with its ``nms`` path ("auto" = "padded"
    on CUDA)."""
    model = trainer.model.eval()
    priors = default_boxes().to(run.device)
    images, _, _ = synthetic_batch(
        batch, trainer.num_classes, run.device, seed=batch + 1
    )

    @torch.inference_mode()
    def infer() -> list[dict[str, Tensor]]:
        with run.autocast():
            loc, conf_logits = model(images)
        # Caffe SSD / torchvision: 400 candidates per class before NMS (torchvision's
        # topk_candidates)
        return detect(
            loc.float(), conf_logits.float(), priors, candidates_per_class=400, nms=nms
        )

    timing = measure(
        infer,
        run.device,
        run.warmup,
        run.iters if batch > 1 else 3 * run.iters,
        run.max_seconds,
    )
    model.train()
    return batch / timing["seconds_per_iter"]


def inference_torchvision(run: Run, batch: int, num_classes: int) -> float:
    model = (
        torchvision_ssd(num_classes, run.smoke)
        .to(run.device)
        .to(memory_format=torch.channels_last)
        .eval()
    )
    images, _, _ = synthetic_batch(batch, num_classes, run.device, seed=batch + 1)
    pictures = [(img * 0.25 + 0.5).clamp(0, 1).contiguous() for img in images]

    @torch.inference_mode()
    def infer() -> Any:
        with run.autocast():
            out = model(pictures)
        # the caller gets finished detections, as ours (which end in .tolist())
        sync(run.device)
        return out

    timing = measure(
        infer,
        run.device,
        run.warmup,
        run.iters if batch > 1 else 3 * run.iters,
        run.max_seconds,
    )
    model = None  # free its memory before the next row (the closure holds it)
    return batch / timing["seconds_per_iter"]


def real_data_cpu_workers(
    run: Run, trainer: Trainer, step: Callable[..., Any] | None
) -> float:
    """The Trainer's own loader (workers decode JPEG + SSDAugmentation) feeding
    ``step``.

    Each worker builds whole batches, so the first wave of ``num_workers`` batches
    arrives at once after start-up; the warmup consumes it and the timed part covers the
    next two waves, so it measures the steady rate of the workers, not a buffer.
    """
    workers = trainer.cfg.num_workers
    # Each worker keeps ``prefetch_factor`` batches ready: the warmup must drain that
    # whole buffer (and one more wave), or the timed part reads batches made before the
    # clock started.
    buffered = workers * (loader_prefetch_factor(trainer) or 0)
    warmup = max(run.warmup, buffered + workers + 1)
    iters = max(run.iters, 3 * workers)
    loader = trainer.data_loader(0, warmup + iters + 2)
    it = iter(loader)
    do = step or (lambda im, b, lab: trainer.train_step(im, b, lab))

    def one() -> None:
        images, boxes, labels = trainer._to_device(next(it))
        do(images, boxes, labels)

    timing = measure(one, run.device, warmup, iters, 60.0)
    it = loader = None  # stop the workers before the next row
    return trainer.cfg.batch_size / timing["seconds_per_iter"]


def loader_prefetch_factor(trainer: Trainer) -> int | None:
    """Batches each DataLoader worker of the Trainer keeps ready (None without
    workers)."""
    return trainer.data_loader(0, 1).prefetch_factor


def real_data_gpu(
    run: Run, source: GpuJpegSource, step: Callable[..., Any], prefetch: bool
) -> float:
    """nvjpeg batched decode + gpu_ssd_augment feeding ``step``; optionally one batch
    ahead in a background thread on its own CUDA stream (decode's CPU part and launches
    overlap the step)."""
    device = run.device
    generator = torch.Generator(device=device).manual_seed(0)
    counter = [0]

    def make_batch() -> tuple[Tensor, list[Tensor], list[Tensor]]:
        images, boxes, labels = source.batch(counter[0])
        counter[0] += 1
        out, b, lab = gpu_ssd_augment(images, boxes, labels, generator)
        return out.contiguous(memory_format=torch.channels_last), b, lab

    if not prefetch or device.type != "cuda":
        timing = measure(
            lambda: step(*make_batch()),
            device,
            run.warmup,
            run.iters,
            2 * run.max_seconds,
        )
        return source.batch_size / timing["seconds_per_iter"]

    side = torch.cuda.Stream(device)
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def producer() -> None:
        try:
            with torch.cuda.stream(side):
                while not stop.is_set():
                    batch = make_batch()
                    event = torch.cuda.Event()
                    event.record(side)
                    while not stop.is_set():
                        try:
                            ready.put((batch, event), timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except Exception as error:  # surfaced by the consumer
            ready.put((error, None))

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()

    def consume() -> None:
        batch, event = ready.get(timeout=60)
        if isinstance(batch, Exception):
            raise batch
        torch.cuda.current_stream(device).wait_event(event)
        images, boxes, labels = batch
        images.record_stream(torch.cuda.current_stream(device))
        for t in (*boxes, *labels):
            t.record_stream(torch.cuda.current_stream(device))
        step(images, boxes, labels)

    try:
        timing = measure(consume, device, run.warmup, run.iters, 2 * run.max_seconds)
    finally:
        stop.set()
        thread.join(timeout=30)
    return source.batch_size / timing["seconds_per_iter"]


def check_padding_is_exact(run: Run, trainer: Trainer) -> bool:
    """build_targets on padded lists gives the same targets as on the original lists."""
    from ssd_tutorial.matching import build_targets

    _, boxes, labels = synthetic_batch(4, trainer.num_classes, run.device, seed=11)
    pb, pl, _ = pad_objects(boxes, labels, FIXED_OBJECTS)
    a = build_targets(boxes, labels, trainer.priors)
    b = build_targets(pb, pl, trainer.priors)
    return bool(torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0]))


# --------------------------------------------------------------------------------------
def run_all(run: Run) -> dict[str, Any]:
    R = run.results
    train, inf, ratios = R["train_img_s"], R["inference_img_s"], R["ratios"]
    # smoke: trace with dynamo, no code generation
    smoke_backend = "eager" if run.smoke else None
    big = run.big

    base = run.trainer(big)
    num_classes = base.num_classes
    R["num_classes"] = num_classes
    R["padding_is_exact"] = run.stage(
        "padding check", 2, lambda: check_padding_is_exact(run, base)
    )
    flops = run.stage("flop count", 5, lambda: count_flops(run, base))
    R["flops_per_image_fwd_bwd"] = flops

    # 1. eager: the package's real step, torchvision, the bare network
    for batch in () if run.args.only_real_data else run.batches:
        trainer = base if batch == big else run.trainer(batch)
        images, boxes, labels = synthetic_batch(
            batch, num_classes, run.device, seed=batch
        )

        def ours(
            trainer: Trainer = trainer,
            images: Tensor = images,
            boxes: list = boxes,
            labels: list = labels,
        ) -> float:
            t = measure(
                train_step_closure(trainer, images, boxes, labels),
                run.device,
                run.warmup,
                run.iters,
                run.max_seconds,
            )
            return batch / t["seconds_per_iter"]

        train[f"ssd_tutorial_eager_b{batch}"] = run.stage(
            f"train ours eager b{batch}", 5, ours
        )
        train[f"torchvision_eager_b{batch}"] = run.stage(
            f"train torchvision eager b{batch}",
            8,
            lambda batch=batch: torchvision_train(run, batch, num_classes),
        )
        if batch != big:
            del trainer
    images, boxes, labels = synthetic_batch(big, num_classes, run.device, seed=big)

    def bare(compile_it: bool) -> float:
        step = bare_step(run, base, compile_it, smoke_backend)
        return (
            big
            / measure(
                lambda: step(images), run.device, run.warmup, run.iters, run.max_seconds
            )["seconds_per_iter"]
        )

    if run.args.only_real_data:
        return run_real_data_only(run, base, images, boxes, labels, smoke_backend)
    train[f"bare_network_eager_b{big}"] = run.stage(
        f"bare network eager b{big}", 4, lambda: bare(False)
    )

    # 2. inference with decode + NMS: detect's default ("auto" = "padded" on CUDA); the
    # smoke run (CPU, where "auto" would pick "batched") asks for "padded" so that its
    # code path runs
    nms = "padded" if run.smoke else "auto"
    R["inference_nms"] = (
        "padded" if run.smoke or run.device.type == "cuda" else "batched"
    )
    for batch in (1, big):
        inf[f"ssd_tutorial_b{batch}"] = run.stage(
            f"inference ours b{batch}",
            5,
            lambda batch=batch: inference_ours(run, base, batch, nms),
        )
        inf[f"torchvision_b{batch}"] = run.stage(
            f"inference torchvision b{batch}",
            8,
            lambda batch=batch: inference_torchvision(run, batch, num_classes),
        )
    inf[f"ssd_tutorial_batched_nms_b{big}"] = run.stage(
        f"inference ours nms=batched b{big}",
        5,
        lambda: inference_ours(run, base, big, "batched"),
    )
    R["nms_padded_agreement_with_batched"] = run.stage(
        f"inference nms padded vs batched b{big}",
        3,
        lambda: inference_nms_agreement(run, base, big),
    )

    # 3. compiled: the whole step (the fastest candidate), then the bare network, then
    # cfg.compile
    best_step: Callable[..., Any] | None = None

    def whole() -> float:
        nonlocal best_step
        step = compiled_step(run, base, smoke_backend)
        rate = (
            big
            / measure(
                lambda: step(images, boxes, labels),
                run.device,
                run.warmup,
                run.iters,
                run.max_seconds,
            )["seconds_per_iter"]
        )
        best_step = step
        return rate

    compile_estimate = 5 if run.smoke else 75
    train[f"ssd_tutorial_compiled_step_b{big}"] = run.stage(
        f"train ours whole step compiled b{big}", compile_estimate, whole
    )

    # 4. real data, fed to the best step available
    source_items, source_name = load_jpegs(run.jpeg_root, 512, run.smoke)
    R["jpeg_source"] = source_name
    source = GpuJpegSource(source_items, big, run.device)
    step_for_data = best_step or (lambda im, b, lab: base.train_step(im, b, lab))
    R["real_data_step"] = (
        "compiled whole step" if best_step else "Trainer.train_step eager"
    )
    synthetic_rate = (
        train.get(f"ssd_tutorial_compiled_step_b{big}")
        if best_step
        else train.get(f"ssd_tutorial_eager_b{big}")
    )
    R["synthetic_rate_for_real_data"] = synthetic_rate
    train[f"real_data_gpu_nvjpeg_b{big}"] = run.stage(
        f"real data GPU path b{big}",
        10,
        lambda: real_data_gpu(run, source, step_for_data, prefetch=False),
    )
    if run.device.type == "cuda":
        train[f"real_data_gpu_nvjpeg_prefetch_b{big}"] = run.stage(
            f"real data GPU path, prefetch thread b{big}",
            10,
            lambda: real_data_gpu(run, source, step_for_data, prefetch=True),
        )
    if run.jpeg_root is not None or run.smoke:
        loader_trainer = run.stage(
            "loader trainer", 3, lambda: run.trainer(big, real_data=True)
        )
        if loader_trainer is not None:
            train[f"real_data_cpu_workers_b{big}"] = run.stage(
                f"real data CPU workers b{big}",
                30,
                lambda: real_data_cpu_workers(run, loader_trainer, best_step),
            )
            del loader_trainer

    train[f"bare_network_compiled_b{big}"] = run.stage(
        f"bare network compiled b{big}", compile_estimate, lambda: bare(True)
    )

    def compiled_model() -> float:
        trainer = run.trainer(big, compile_model=True)
        t = measure(
            train_step_closure(trainer, images, boxes, labels),
            run.device,
            run.warmup,
            run.iters,
            run.max_seconds,
        )
        return big / t["seconds_per_iter"]

    # cfg.compile=True compiles the same network as the bare run: mostly cache hits
    # Trainer's cfg.compile uses inductor: minutes of C++ compilation on a CPU
    if run.smoke:
        R["skipped"].append(f"train ours cfg.compile b{big} (smoke)")
    else:
        train[f"ssd_tutorial_cfg_compile_b{big}"] = run.stage(
            f"train ours cfg.compile b{big}", 30, compiled_model
        )
    if len(run.batches) > 1:
        small = run.batches[0]
        si, sb, sl = synthetic_batch(small, num_classes, run.device, seed=small)

        def whole_small() -> float:
            step = compiled_step(run, base, smoke_backend)
            return (
                small
                / measure(
                    lambda: step(si, sb, sl),
                    run.device,
                    run.warmup,
                    run.iters,
                    run.max_seconds,
                )["seconds_per_iter"]
            )

        train[f"ssd_tutorial_compiled_step_b{small}"] = run.stage(
            f"train ours whole step compiled b{small}", compile_estimate, whole_small
        )

    try:  # graph breaks seen by dynamo in the compiled functions (0 = fully captured)
        from torch._dynamo.utils import counters

        R["dynamo_graph_breaks"] = {
            str(k): int(v) for k, v in counters["graph_break"].items()
        }
    except Exception:  # private API: informative only
        R["dynamo_graph_breaks"] = None

    # summary numbers and ratios
    def best(*keys: str) -> float | None:
        values = [train.get(k) for k in keys if train.get(k)]
        return max(values) if values else None

    ours_big = best(
        f"ssd_tutorial_compiled_step_b{big}",
        f"ssd_tutorial_cfg_compile_b{big}",
        f"ssd_tutorial_eager_b{big}",
    )
    tv_big = train.get(f"torchvision_eager_b{big}")
    bare_big = best(f"bare_network_compiled_b{big}", f"bare_network_eager_b{big}")
    real_big = best(
        f"real_data_gpu_nvjpeg_b{big}",
        f"real_data_gpu_nvjpeg_prefetch_b{big}",
        f"real_data_cpu_workers_b{big}",
    )
    train["ssd_tutorial"] = ours_big
    train["torchvision"] = tv_big
    train["bare_network"] = bare_big
    train["ssd_tutorial_real_data"] = real_big
    inf["ssd_tutorial"] = inf.get(f"ssd_tutorial_b{big}")
    inf["torchvision"] = inf.get(f"torchvision_b{big}")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    for batch in run.batches:
        ratios[f"train_eager_vs_torchvision_b{batch}"] = ratio(
            train.get(f"ssd_tutorial_eager_b{batch}"),
            train.get(f"torchvision_eager_b{batch}"),
        )
    ratios["train_vs_torchvision"] = ratio(ours_big, tv_big)  # goal >= 4
    # goal >= 0.9
    ratios["train_vs_bare_compiled"] = ratio(
        ours_big, train.get(f"bare_network_compiled_b{big}")
    )
    ratios["train_vs_bare_best"] = ratio(ours_big, bare_big)
    ratios["train_eager_vs_bare_eager"] = ratio(
        train.get(f"ssd_tutorial_eager_b{big}"), train.get(f"bare_network_eager_b{big}")
    )
    ratios["inference_vs_torchvision_b1"] = ratio(
        inf.get("ssd_tutorial_b1"), inf.get("torchvision_b1")
    )
    # goal >= 10
    ratios[f"inference_vs_torchvision_b{big}"] = ratio(
        inf.get(f"ssd_tutorial_b{big}"), inf.get(f"torchvision_b{big}")
    )
    ratios[f"inference_nms_default_vs_batched_b{big}"] = ratio(
        inf.get(f"ssd_tutorial_b{big}"), inf.get(f"ssd_tutorial_batched_nms_b{big}")
    )
    ratios["real_data_vs_synthetic"] = ratio(real_big, synthetic_rate)  # goal >= 0.9
    ratios["real_data_cpu_workers_vs_synthetic"] = ratio(
        train.get(f"real_data_cpu_workers_b{big}"), synthetic_rate
    )
    ratios["real_data_gpu_vs_synthetic"] = ratio(
        best(f"real_data_gpu_nvjpeg_b{big}", f"real_data_gpu_nvjpeg_prefetch_b{big}"),
        synthetic_rate,
    )
    R["goals"] = {
        "train_vs_torchvision >= 4": ratios["train_vs_torchvision"],
        "train_vs_bare_compiled >= 0.9": ratios["train_vs_bare_compiled"],
        f"inference_vs_torchvision_b{big} >= 10": ratios[
            f"inference_vs_torchvision_b{big}"
        ],
        "real_data_vs_synthetic >= 0.9": ratios["real_data_vs_synthetic"],
    }

    peak = bf16_peak(run.name)
    R["bf16_peak_tflops"] = peak
    R["mfu"] = {}
    if flops and peak:
        for key in (
            f"ssd_tutorial_compiled_step_b{big}",
            f"ssd_tutorial_eager_b{big}",
            f"bare_network_compiled_b{big}",
            f"bare_network_eager_b{big}",
        ):
            if train.get(key):
                R["mfu"][key] = round(flops * train[key] / (peak * 1e12), 4)
    R["total_seconds"] = round(run.elapsed(), 1)
    return R


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = {k: v for k, v in results["train_img_s"].items() if v and "_b" in k}
    inf = {k: v for k, v in results["inference_img_s"].items() if v and "_b" in k}
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(13, 5),
        gridspec_kw={"width_ratios": [max(len(train), 1), max(len(inf), 1)]},
    )
    for ax, data, title in (
        (axes[0], train, "training"),
        (axes[1], inf, "inference (decode + NMS)"),
    ):
        names = list(data)
        colours = [
            "tab:orange"
            if n.startswith("torchvision")
            else "tab:grey"
            if n.startswith("bare")
            else "tab:blue"
            for n in names
        ]
        ax.bar(range(len(names)), [data[n] for n in names], color=colours)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("images / s")
        ax.set_title(title)
        for i, n in enumerate(names):
            ax.text(i, data[n], f"{data[n]:.0f}", ha="center", va="bottom", fontsize=7)
    smoke = (
        " -- SMOKE RUN: tiny models, numbers meaningless" if results["smoke"] else ""
    )
    fig.suptitle(
        f"SSD300 on {results['device']} (torch {results['torch']}, "
        f"bf16={results['settings']['amp'] == 'bf16'}){smoke}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_real_data_only(
    run: Run,
    base: Trainer,
    images: Tensor,
    boxes: list,
    labels: list,
    backend: str | None,
) -> dict[str, Any]:
    """``--only-real-data``: the compiled step on synthetic input, then fed by the
    Trainer's CPU workers (decode + SSDAugmentation) -- the re-measurement of the data
    path alone."""
    R, train, big = run.results, run.results["train_img_s"], run.big
    step = compiled_step(run, base, backend)
    synthetic = run.stage(
        f"train ours whole step compiled b{big}",
        75,
        lambda: (
            big
            / measure(
                lambda: step(images, boxes, labels),
                run.device,
                run.warmup,
                run.iters,
                run.max_seconds,
            )["seconds_per_iter"]
        ),
    )
    train[f"ssd_tutorial_compiled_step_b{big}"] = synthetic
    loader_trainer = run.trainer(big, real_data=True)
    real = run.stage(
        f"real data CPU workers b{big}",
        30,
        lambda: real_data_cpu_workers(run, loader_trainer, step),
    )
    train[f"real_data_cpu_workers_b{big}"] = real
    R["real_data_step"] = "compiled whole step"
    if synthetic and real:
        R["ratios"]["real_data_cpu_workers_vs_synthetic"] = round(real / synthetic, 3)
    R["total_seconds"] = round(run.elapsed(), 1)
    R.setdefault("mfu", {})
    return R


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", required=True, help="folder for gpu_<card>.json and .png"
    )
    parser.add_argument(
        "--jpeg-root", default=None, help="VOC-layout folder of real JPEGs (cycled)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings (CPU dry run)"
    )
    parser.add_argument(
        "--only-real-data",
        action="store_true",
        help="measure only the compiled step fed by the CPU workers (writes "
        "gpu_<card>_real_data.json)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=190.0,
        help="seconds; later stages are skipped past it",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    run = Run(args)
    try:
        results = run_all(run)
    finally:
        run.tmp.cleanup()
    try:
        if not args.only_real_data:
            plot(results, run.out / f"gpu_{run.card}.png")
    except Exception as error:  # the numbers matter more than the chart
        results["errors"]["plot"] = repr(error)
    path = run.save()
    print(
        json.dumps(
            {
                "train_img_s": results["train_img_s"],
                "inference_img_s": results["inference_img_s"],
                "ratios": results["ratios"],
                "mfu": results["mfu"],
                "skipped": results["skipped"],
                "errors": results["errors"],
                "total_seconds": results["total_seconds"],
            },
            indent=1,
        )
    )
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
