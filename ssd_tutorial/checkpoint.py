"""Checkpoints that survive a crash and load safely.

* Written atomically: to a temporary file in the same folder, flushed to disk, then renamed over
  the target with ``os.replace`` -- a process killed mid-write leaves the previous checkpoint
  intact and, at worst, a stray ``*.tmp`` file that is never read.
* Only plain data inside (tensors, numbers, strings, lists, dicts), so ``torch.load(path,
  weights_only=True)`` reads it and a checkpoint carrying a pickled object is refused.
* They hold everything needed to continue exactly: model, optimizer, scheduler, grad scaler,
  iteration, and the random states of torch, CUDA, numpy and Python.
"""
from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_PATTERN",
    "LAST",
    "checkpoint_name",
    "save_atomic",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "latest_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

LAST = "last.pt"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d{7})\.pt$")


def checkpoint_name(iteration: int) -> str:
    """``checkpoint_0001234.pt`` for iteration 1234."""
    return f"checkpoint_{iteration:07d}.pt"


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (temp file in the same folder + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; clear errors for missing or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # what weights_only=True raises for a pickled object
        raise RuntimeError(
            f"refusing to load {path}: it is not a plain-data checkpoint readable with "
            f"weights_only=True ({_first_line(error)})"
        ) from error
    except Exception as error:  # a truncated copy, or a file that is no torch.save output at all
        raise RuntimeError(
            f"cannot read {path} as a checkpoint: truncated or not written by torch.save ({_first_line(error)})"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def rng_state() -> dict[str, Any]:
    """The random states of torch (CPU and every CUDA device), numpy and Python, as plain data."""
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def latest_checkpoint(folder: str | Path) -> Path | None:
    """``last.pt`` in ``folder`` if present, else the highest-numbered ``checkpoint_*.pt``, else None."""
    folder = Path(folder)
    if (folder / LAST).is_file():
        return folder / LAST
    numbered = sorted(p for p in folder.glob("checkpoint_*.pt") if CHECKPOINT_PATTERN.match(p.name))
    return numbered[-1] if numbered else None


def prune_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` highest-numbered checkpoints (``last.pt`` is never deleted)."""
    numbered = sorted(p for p in Path(folder).glob("checkpoint_*.pt") if CHECKPOINT_PATTERN.match(p.name))
    removed = numbered[: max(0, len(numbered) - max(keep, 1))]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def save_checkpoint(obj: dict[str, Any], folder: str | Path, iteration: int, keep: int = 3) -> Path:
    """Write ``checkpoint_XXXXXXX.pt`` atomically, point ``last.pt`` at it (atomically), prune old ones.

    ``last.pt`` is a hard link to the numbered file when the file system allows it (no second
    copy on disk), else a second atomic write.
    """
    folder = Path(folder)
    path = save_atomic(obj, folder / checkpoint_name(iteration))
    tmp_link = folder / f".{LAST}.{os.getpid()}.tmp"
    try:
        tmp_link.unlink(missing_ok=True)
        os.link(path, tmp_link)
        os.replace(tmp_link, folder / LAST)
    except OSError:
        tmp_link.unlink(missing_ok=True)
        save_atomic(obj, folder / LAST)
    prune_checkpoints(folder, keep)
    return path
