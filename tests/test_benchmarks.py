"""The benchmark scripts run in their tiny ``--smoke`` mode on the CPU, so they cannot
rot.

The numbers of a smoke run mean nothing (tiny models, one iteration); what is checked is
that every code path runs, writes its files and produces positive rates and ratios.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_gpu():
    return _load("bench_gpu")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_gpu_smoke_runs_every_stage(bench_gpu, tmp_path):
    results = bench_gpu.main(["--out", str(tmp_path), "--smoke"])
    written = json.loads((tmp_path / "gpu_cpu.json").read_text())
    assert (tmp_path / "gpu_cpu.png").stat().st_size > 0
    assert written["errors"] == {} and results["errors"] == {}
    for key in ("device", "torch", "torchvision", "mfu", "ratios", "bf16_peak_tflops"):
        assert key in written
    for key in (
        "ssd_tutorial",
        "torchvision",
        "ssd_tutorial_real_data",
        "bare_network",
        "ssd_tutorial_eager_b2",
        "torchvision_eager_b2",
        "ssd_tutorial_compiled_step_b2",
        "real_data_gpu_nvjpeg_b2",
        "real_data_cpu_workers_b2",
        "bare_network_compiled_b2",
    ):
        assert _positive(written["train_img_s"][key]), key
    for key in ("ssd_tutorial", "torchvision", "ssd_tutorial_b1", "torchvision_b1"):
        assert _positive(written["inference_img_s"][key]), key
    for key in (
        "train_vs_torchvision",
        "train_vs_bare_compiled",
        "inference_vs_torchvision_b2",
        "real_data_vs_synthetic",
    ):
        assert _positive(written["ratios"][key]), key
    assert written["padding_is_exact"] is True
    # tiny SSD300 at 300x300: a few GFLOPs per image
    assert written["flops_per_image_fwd_bwd"] > 1e9


def test_pad_objects_hand_case(bench_gpu):
    boxes = [torch.tensor([[0.1, 0.1, 0.5, 0.5]]), torch.rand(3, 4)]
    labels = [torch.tensor([4]), torch.tensor([1, 2, 3])]
    padded_boxes, padded_labels, dropped = bench_gpu.pad_objects(boxes, labels, fixed=2)
    assert dropped == 1  # the second image had 3 objects for 2 places
    assert torch.equal(
        padded_boxes[0], torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    )
    assert torch.equal(padded_boxes[1], boxes[1][:2])
    assert padded_labels[0].tolist() == [4, 0]
    assert padded_labels[1].tolist() == [1, 2]


def test_bf16_peak_table(bench_gpu):
    assert bench_gpu.bf16_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_gpu.bf16_peak("NVIDIA H100 PCIe") == 756.0
    assert bench_gpu.bf16_peak("NVIDIA H200") == 989.0
    assert bench_gpu.bf16_peak("Some Future GPU") is None


def test_bench_cpu_smoke(tmp_path):
    """Every row of the CPU comparison runs (tiny models, batch 1 detect, one round) and
    is written."""
    bench_cpu = _load("bench_cpu")
    results = bench_cpu.main(["--out", str(tmp_path), "--smoke"])
    written = json.loads((tmp_path / "cpu.json").read_text())
    assert written == json.loads(json.dumps(results))
    expected = {
        "train_full",
        "train_tiny",
        "forward_b1",
        "forward_b1_auto",
        "detect_b1_dense",
        "detect_b1_peaky",
        "build_targets_b4",
        "end_to_end_b1",
    }
    assert set(written["rows"]) == expected
    for row in written["rows"].values():
        assert (
            _positive(row["ssd_tutorial_s"])
            and _positive(row["torchvision_s"])
            and _positive(row["ratio"])
        )
    assert written["min_ratio"] == min(r["ratio"] for r in written["rows"].values())
    table = bench_cpu.markdown_table(written)
    assert (
        len(table.splitlines()) == 2 + len(expected)
        and "| detect, batch 1, dense scores |" in table
    )


def test_readme_cpu_table_is_the_recorded_run():
    """The README's CPU table is generated from benchmarks/results/cpu.json (--table),
    not typed."""
    bench_cpu = _load("bench_cpu")
    recorded = json.loads((BENCHMARKS / "results" / "cpu.json").read_text())
    readme = (BENCHMARKS.parent / "README.md").read_text()
    assert bench_cpu.markdown_table(recorded) in readme
    assert not recorded["smoke"] and recorded["settings"]["rounds"] >= 3


def test_bench_loader_compares_with_a_baseline_revision(tmp_path):
    """The loader benchmark on a small shapes folder, against HEAD as the baseline
    revision (a git worktree): both runs produce rates, and the report holds their
    ratio."""
    import subprocess

    from ssd_tutorial.data import SHAPES_CLASSES, ShapesDataset, write_voc_split

    repo = BENCHMARKS.parent
    if (
        subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("not a git checkout")
    data = tmp_path / "shapes"
    write_voc_split(
        ShapesDataset(8, image_size=120, seed=5), data, "trainval", SHAPES_CLASSES
    )
    bench_loader = _load("bench_loader")
    out = tmp_path / "out"
    args = [
        "--data",
        str(data),
        "--classes",
        "shapes",
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--batches",
        "2",
        "--rounds",
        "1",
        "--baseline",
        "HEAD",
        "--out",
        str(out),
    ]
    assert bench_loader.main(args) == 0
    report = json.loads((out / "loader_cpu_0workers.json").read_text())
    assert _positive(report["median_img_s"]["this checkout"])
    assert _positive(report["median_img_s"]["baseline HEAD"])
    assert _positive(report["ratio_this_over_baseline"])
    assert report["uint8_out"]["this checkout"] is True
