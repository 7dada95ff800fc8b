"""ONNX export parity: onnxruntime (CPU) against PyTorch, for the README's numbers.

    python benchmarks/export_parity.py --out benchmarks/results

1. The book's trained tiny SSD300 (``book/results/shapes_tiny.pt``), exported with the
   post-processing, on 32 held-out ShapesDataset images and on random inputs: max |diff|
   of loc and conf logits, the same against a float64 run of the network, and whether
   the detections are the same as ``inference.detect`` on PyTorch's outputs.
2. The full-width SSD300 and SSD512 with random weights (seed 0), network only: max
   |diff| of loc and conf on random inputs and, where ``../shared/data/raccoon`` exists,
   on 4 real photos.

Writes ``export_parity_cpu.json`` (numbers, versions, the command).  One CPU thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args(argv)

    import onnxruntime

    from ssd_tutorial.data import ShapesDataset, read_image
    from ssd_tutorial.default_boxes import default_boxes
    from ssd_tutorial.detect import load_stored_detector
    from ssd_tutorial.export import check_onnx, export_onnx, run_onnx
    from ssd_tutorial.inference import detect, preprocess
    from ssd_tutorial.model import SSD300, SSD512

    torch.set_num_threads(1)
    results: dict = {
        "command": "python benchmarks/export_parity.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    work = Path(tempfile.mkdtemp())

    # 1. the trained tiny model, with the post-processing
    model = load_stored_detector(ROOT / "book" / "results" / "shapes_tiny.pt").model
    path = export_onnx(model, work / "tiny.onnx", with_postprocess=True)
    data = ShapesDataset(args.images, seed=777)
    x = torch.stack([preprocess(data[i][0], 300) for i in range(args.images)])
    got = run_onnx(path, x)
    with torch.no_grad():
        loc, conf = model(x)
        loc64, conf64 = copy.deepcopy(model).double()(x.double())
    expected = detect(loc, conf, default_boxes())
    same = all(
        int(got["num_detections"][b]) == len(d["scores"])
        and torch.equal(got["labels"][b, : len(d["scores"])], d["labels"])
        for b, d in enumerate(expected)
    )
    shown = [(b, d) for b, d in enumerate(expected) if len(d["scores"])]
    results["tiny_trained_shapes"] = {
        "images": args.images,
        "loc_onnxruntime_vs_torch": _max_diff(got["loc"], loc),
        "conf_onnxruntime_vs_torch": _max_diff(got["conf_logits"], conf),
        "largest_conf_logit": float(conf.abs().max()),
        "loc_torch_vs_float64": _max_diff(loc, loc64),
        "loc_onnxruntime_vs_float64": _max_diff(got["loc"], loc64),
        "conf_torch_vs_float64": _max_diff(conf, conf64),
        "conf_onnxruntime_vs_float64": _max_diff(got["conf_logits"], conf64),
        "detections": sum(len(d["scores"]) for d in expected),
        "labels_and_counts_identical": same,
        "boxes": max(
            _max_diff(got["boxes"][b, : len(d["scores"])], d["boxes"]) for b, d in shown
        ),
        "scores": max(
            _max_diff(got["scores"][b, : len(d["scores"])], d["scores"])
            for b, d in shown
        ),
    }
    results["tiny_trained_random_inputs"] = check_onnx(path, model, batch=4)
    print(json.dumps(results["tiny_trained_shapes"]), flush=True)

    # 2. full-width networks, random weights
    photos = sorted((ROOT.parent / "shared" / "data" / "raccoon").rglob("*.jpg"))[:4]
    for name, cls in (("ssd300_full_random", SSD300), ("ssd512_full_random", SSD512)):
        torch.manual_seed(0)
        net = cls(num_classes=21).eval()
        start = time.perf_counter()
        path = export_onnx(net, work / f"{name}.onnx")
        entry = check_onnx(path, net, batch=2)
        entry["export_seconds"] = round(time.perf_counter() - start, 1)
        if photos:
            xs = torch.stack(
                [preprocess(read_image(f), net.image_size) for f in photos]
            )
            out = run_onnx(path, xs)
            with torch.no_grad():
                l, c = net(xs)
            entry["real_photos"] = {
                "n": len(photos),
                "loc": _max_diff(out["loc"], l),
                "conf": _max_diff(out["conf_logits"], c),
            }
        results[name] = entry
        print(name, json.dumps(entry), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_parity_cpu.json").write_text(
        json.dumps(results, indent=1) + "\n"
    )
    return results


if __name__ == "__main__":
    main()
