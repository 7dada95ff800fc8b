"""Checkpoints that survive a crash and load safely.

* Written atomically: to a temporary file in the same folder, flushed to disk, read back
  and compared (SHA-256) with what was meant to be written, then renamed over the target
  with ``os.replace`` -- a process killed mid-write leaves the previous checkpoint
  intact and, at worst, a stray ``*.tmp`` file that is never read.
* ``last.pt`` is a copy of the newest numbered checkpoint, not a link to it: a file
  damaged in place (truncated, overwritten) leaves the other one intact, and
  ``--resume`` falls back to the newest checkpoint that still reads
  (:func:`load_latest_checkpoint`).
* Only plain data inside (tensors, numbers, strings, lists, dicts), so
  ``torch.load(path, weights_only=True)`` reads it and a checkpoint carrying a pickled
  object is refused.
* They hold everything needed to continue exactly: model, optimizer, scheduler, grad
  scaler, iteration, and the random states of torch, CUDA, numpy and Python.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssd_tutorial.default_boxes import SSD300_VOC, DefaultBoxConfig
from ssd_tutorial.files import file_digest

__all__ = [
    "CHECKPOINT_PATTERN",
    "LAST",
    "CheckpointError",
    "checkpoint_name",
    "save_atomic",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "latest_checkpoint",
    "checkpoint_candidates",
    "load_latest_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
    "stored_prior_config",
]

LAST = "last.pt"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d{7})\.pt$")
CHUNK = 1 << 24  # bytes per read when a written file is checked


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint file that cannot be used: truncated, not ``torch.save`` output, or
    unsafe.

    A ValueError (a bad input file: the command-line tools report it in one line) and,
    as this module raised before, a RuntimeError.
    """


def checkpoint_name(iteration: int) -> str:
    """``checkpoint_0001234.pt`` for iteration 1234."""
    return f"checkpoint_{iteration:07d}.pt"


def _serialize(obj: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _sha256_of_file(path: Path) -> bytes:
    return file_digest(path, "sha256", CHUNK).digest()


def _write_verified(data: bytes, path: Path) -> Path:
    """Write ``data`` to ``path`` atomically: temp file + fsync + read-back check +
    os.replace.

    The read-back compares SHA-256 digests, so a short or damaged write raises
    ``OSError`` and leaves the previous ``path`` in place instead of replacing it with a
    broken file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if _sha256_of_file(tmp) != hashlib.sha256(data).digest():
            raise OSError(
                f"{path}: the file read back differs from what was written (disk full "
                "or failing?)"
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (temp file in the same folder, fsync,
    read-back check, os.replace)."""
    return _write_verified(_serialize(obj), Path(path))


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    A missing file raises ``FileNotFoundError``; an unsafe (pickled objects), truncated
    or foreign one :class:`CheckpointError`; all name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (
        pickle.UnpicklingError
    ) as error:  # what weights_only=True raises for a pickled object
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain-data checkpoint readable with "
            f"weights_only=True ({_first_line(error)})"
        ) from error
    except (
        Exception
    ) as error:  # a truncated copy, or a file that is no torch.save output at all
        raise CheckpointError(
            f"cannot read {path} as a checkpoint: truncated or not written by "
            f"torch.save ({_first_line(error)})"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def rng_state() -> dict[str, Any]:
    """The random states of torch (CPU and every CUDA device), numpy and Python, as
    plain data."""
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
        (
            n["kind"],
            n["keys"].cpu().numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gauss"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _numbered(folder: Path) -> list[Path]:
    """The ``checkpoint_XXXXXXX.pt`` files of ``folder``, oldest first."""
    return sorted(
        p for p in folder.glob("checkpoint_*.pt") if CHECKPOINT_PATTERN.match(p.name)
    )


def latest_checkpoint(folder: str | Path) -> Path | None:
    """``last.pt`` in ``folder`` if present, else the highest-numbered
    ``checkpoint_*.pt``, else None."""
    candidates = checkpoint_candidates(folder)
    return candidates[0] if candidates else None


def checkpoint_candidates(folder: str | Path) -> list[Path]:
    """The checkpoints of ``folder`` in the order a resume tries them: ``last.pt``, then
    the numbered ones, newest first."""
    folder = Path(folder)
    last = [folder / LAST] if (folder / LAST).is_file() else []
    return last + _numbered(folder)[::-1]


def load_latest_checkpoint(
    folder: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]]:
    """``(path, state)`` of the newest checkpoint in ``folder`` that reads (see
    :func:`checkpoint_candidates`).

    A file that does not read (truncated, unsafe) is passed over with a warning that
    names it, says why and says which file is used instead.  ``FileNotFoundError`` when
    ``folder`` has no checkpoint; :class:`CheckpointError` listing every reason when
    none of them reads.
    """
    candidates = checkpoint_candidates(folder)
    if not candidates:
        raise FileNotFoundError(
            f"no checkpoint (last.pt or checkpoint_*.pt) in {folder}"
        )
    unreadable: list[str] = []
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as error:
            unreadable.append(str(error))
            continue
        if unreadable:
            passed_over = "; ".join(unreadable)
            warnings.warn(
                f"using {path}, the newest checkpoint that reads; passed over: "
                f"{passed_over}",
                stacklevel=2,
            )
        return path, state
    raise CheckpointError(
        f"no readable checkpoint in {folder}:\n  " + "\n  ".join(unreadable)
    )


def prune_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` highest-numbered checkpoints (``last.pt`` is never
    deleted)."""
    numbered = _numbered(Path(folder))
    removed = numbered[: max(0, len(numbered) - max(keep, 1))]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def save_checkpoint(
    obj: dict[str, Any], folder: str | Path, iteration: int, keep: int = 3
) -> Path:
    """Write ``checkpoint_XXXXXXX.pt`` and then ``last.pt`` (each atomically, each
    checked), prune old ones.

    ``last.pt`` is a second file with the same bytes, not a hard link: a link would
    share its storage, so damage to one (a copy truncated in place) would destroy both.
    """
    folder = Path(folder)
    data = _serialize(obj)  # once, for both files
    path = _write_verified(data, folder / checkpoint_name(iteration))
    _write_verified(data, folder / LAST)
    prune_checkpoints(folder, keep)
    return path


def stored_prior_config(state: dict[str, Any]) -> DefaultBoxConfig:
    """The default-box layout a training checkpoint's model was trained with: its
    ``"prior_config"`` entry (:meth:`DefaultBoxConfig.to_dict`), SSD300_VOC when it has
    none."""
    saved = state.get("prior_config")
    return DefaultBoxConfig.from_dict(saved) if saved else SSD300_VOC
