"""The run folder: which files a run owns, the guard against mixing two runs, and its
logs.

A run writes its checkpoints (:mod:`ssd_tutorial.checkpoint`), ``config.json``,
``metrics.jsonl`` (one JSON object per line) and, when asked, TensorBoard event files
into one folder.  Starting afresh in a folder that holds another run is refused
(:func:`check_new_run`): the old checkpoints beside the new ones would make a later
resume continue a mixture.  Progress bars (tqdm) and TensorBoard are optional: without
them training goes on, unlogged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ssd_tutorial.checkpoint import CHECKPOINT_PATTERN, LAST

__all__ = [
    "MetricsWriter",
    "check_new_run",
    "progress_bar",
    "run_files",
    "start_run_dir",
    "tensorboard_writer",
]


def run_files(folder: Path) -> list[Path]:
    """The files a run writes in ``folder``: checkpoints (and their temp files),
    ``metrics.jsonl``, ``config.json`` and TensorBoard's event files.  What
    ``overwrite`` deletes; nothing else is."""
    files = [folder / name for name in (LAST, "metrics.jsonl", "config.json")]
    files += [
        p for p in folder.glob("checkpoint_*.pt") if CHECKPOINT_PATTERN.match(p.name)
    ]
    files += list(folder.glob(".checkpoint_*.tmp")) + list(
        folder.glob(f".{LAST}.*.tmp")
    )
    files += list((folder / "tensorboard").glob("events.out.tfevents.*"))
    return sorted(p for p in files if p.is_file())


def check_new_run(folder: Path, overwrite: bool) -> None:
    """Refuse to start a run in a folder holding another one's records, unless
    ``overwrite``.

    A run is a checkpoint or a non-empty ``metrics.jsonl`` (an empty one holds nothing
    to lose): starting afresh would truncate the metrics and replace ``last.pt``, and
    the old numbered checkpoints left beside the new ones would make a later resume
    continue a mixture.
    """
    held = [p.name for p in run_files(folder) if p.name.endswith(".pt")]
    metrics = folder / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        held.append(metrics.name)
    if held and not overwrite:
        raise FileExistsError(
            f"{folder} holds a run "
            f"({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}): continue it "
            "with --resume (resume=True), delete its checkpoints and metrics with "
            "--overwrite (overwrite=True), or choose another --output-dir"
        )


def start_run_dir(folder: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Create ``folder`` and write ``config.json`` (``config``: the run's settings as
    plain data); with ``overwrite`` first delete the :func:`run_files` of the run it
    held."""
    if overwrite:
        for path in run_files(folder):
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")


class MetricsWriter:
    """Append-only metrics file (one JSON object per line); on resume, later lines are
    dropped.

    ``resume_iteration``: None starts an empty file; else the lines of iterations after
    it go, and so does a line cut short by a kill mid-write (it no longer parses).
    """

    def __init__(self, path: Path, resume_iteration: int | None) -> None:
        self.path = path
        if resume_iteration is None:
            path.write_text("")
        elif path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("iteration", 0) <= resume_iteration:
                    kept.append(line)
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (JSON-serializable) as one line."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def tensorboard_writer(enabled: bool, folder: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``folder / "tensorboard"``, or None when not
    ``enabled`` or tensorboard is not installed (then said on stderr)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(
            "tensorboard is not installed: metrics go to metrics.jsonl only",
            file=sys.stderr,
        )
        return None
    return SummaryWriter(str(folder / "tensorboard"))


class _NoBar:
    """The part of tqdm's interface the trainer uses, doing nothing."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar over iterations ``initial .. total``; a do-nothing bar when not
    ``enabled`` or tqdm is not installed."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True)
