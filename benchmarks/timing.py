"""Helpers the micro-benchmarks share: a device's name and a median wall-clock timer.

Imported by the scripts in this folder (run as ``python benchmarks/NAME.py``, so this
folder is on ``sys.path``).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's kind and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} ({torch.get_num_threads()} threads)"


def timed(
    fn: Callable[[], Any], device: torch.device, repeats: int
) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call, and that
    call's result.

    On CUDA the clock reads are fenced with ``synchronize`` so they time the kernels,
    not the launches.
    """
    result = fn()  # warm-up (and the result to compare)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def report(
    result: dict[str, Any], summary: str, out_dir: str | Path, file_name: str
) -> Path:
    """Print ``result`` (as JSON) and a one-line ``summary``, and write the JSON to
    ``out_dir/file_name``."""
    print(json.dumps(result, indent=2))
    print(summary)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / file_name
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
