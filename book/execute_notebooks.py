"""Execute the book's chapters in place so that every stored output comes from a real
run.

    python book/execute_notebooks.py                 # every chapter listed in _toc.yml
    python book/execute_notebooks.py book/03_matching.ipynb ...

Each chapter runs in a fresh kernel of the current Python under fixed settings (hash
seed, thread count, plot backend), the same ones book/conftest.py gives nbval, so the
tests compare like with like.  Before running, the first cell of each chapter is
(re)written as the Colab install cell, built from the repository URL in _config.yml: the
URL lives in one place.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DETERMINISTIC_ENV = {
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
}
COLAB_MARKER = "# Colab only"


def repository_url() -> str:
    """The repository URL from _config.yml (read with a regex: no YAML dependency
    needed)."""
    text = (ROOT / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", text, flags=re.M)
    if not match:
        raise SystemExit("_config.yml has no repository.url")
    return match.group(1)


def colab_cell_source() -> str:
    """The first cell of every chapter.  In Colab it clones the repository (the chapters
    read results/ and figures beside them), installs the package and moves into book/;
    elsewhere it does nothing."""
    return (
        f"{COLAB_MARKER}: fetch ssd_tutorial (code and results) and install it. Does "
        "nothing elsewhere.\n"
        "import importlib, os, subprocess, sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        '    checkout = "/content/ssd_tutorial"\n'
        "    if not os.path.exists(checkout):\n"
        '        subprocess.run(["git", "clone", "-q", "--depth", "1", '
        f'"{repository_url()}", checkout], check=True)\n'
        '        subprocess.run([sys.executable, "-m", "pip", "install", "-q", '
        "checkout], check=True)\n"
        "        importlib.invalidate_caches()\n"
        '    os.chdir(os.path.join(checkout, "book"))'
    )


def chapters_from_toc() -> list[Path]:
    names = re.findall(r"(?:root|file):\s*(book/\S+)", (ROOT / "_toc.yml").read_text())
    return [ROOT / f"{name}.ipynb" for name in names]


# A figure-only cell longer than this is folded in the rendered book ("Show code cell
# source").
LONG_PLOT_CELL_LINES = 20


def _set_tag(cell, tag: str, on: bool) -> None:
    tags = [t for t in cell.metadata.get("tags", []) if t != tag]
    cell.metadata["tags"] = tags + [tag] if on else tags
    if not cell.metadata["tags"]:
        del cell.metadata["tags"]


def prepare(nb) -> None:
    """Colab cell first (hidden in the rendered book: it is for Colab only), long
    plotting cells folded in the rendered book, and one kernel name for every
    chapter."""
    import nbformat

    colab = nbformat.v4.new_code_cell(colab_cell_source())
    if (
        nb.cells
        and nb.cells[0].cell_type == "code"
        and nb.cells[0].source.startswith(COLAB_MARKER)
    ):
        nb.cells[0].source = colab.source
    else:
        nb.cells.insert(0, colab)
    _set_tag(nb.cells[0], "remove-cell", True)
    for cell in nb.cells[1:]:
        if cell.cell_type == "code":
            source = cell.source.rstrip()
            long_plot = (
                source.endswith("plt.show()")
                and source.count("\n") + 1 > LONG_PLOT_CELL_LINES
            )
            _set_tag(cell, "hide-input", long_plot)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }


# Recorded in each notebook's metadata (``ssd_tutorial.executed_with``): the versions
# that made its stored outputs.  requirements.lock pins the whole environment.
RECORDED_PACKAGES = (
    "torch",
    "torchvision",
    "torchcodec",
    "numpy",
    "pillow",
    "matplotlib",
    "pycocotools",
)


def executed_with() -> dict[str, str]:
    """Python and the versions of the packages whose results a chapter's outputs
    show."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version(), "machine": platform.machine()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def execute(path: Path) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    prepare(nb)
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata["ssd_tutorial"] = {"executed_with": executed_with()}
    nbformat.write(nb, path)
    return elapsed


def apply_deterministic_env() -> None:
    """Set the fixed settings; leave the plot backend to the kernel (inline), whatever
    the shell says."""
    os.environ.update(DETERMINISTIC_ENV)
    os.environ.pop("MPLBACKEND", None)


def main(argv: list[str]) -> int:
    apply_deterministic_env()
    paths = [Path(a).resolve() for a in argv] or chapters_from_toc()
    missing = [p for p in paths if not p.exists()]
    for p in missing:
        print(f"skip (not written yet): {p.relative_to(ROOT)}")
    for path in (p for p in paths if p.exists()):
        elapsed = execute(path)
        print(f"{path.relative_to(ROOT)}: executed in {elapsed:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
