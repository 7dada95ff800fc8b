"""Checks over the book: every chapter in _toc.yml is a notebook that follows the style
brief.

Chapters not written yet are skipped with a reason; once a chapter exists every check
applies. nbval (``pytest --nbval book/``) re-runs the chapters; these checks look at the
stored notebooks.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_execute_notebooks():
    spec = importlib.util.spec_from_file_location(
        "book_execute_notebooks", ROOT / "book" / "execute_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXECUTE = _load_execute_notebooks()
CHAPTERS = EXECUTE.chapters_from_toc()


def test_toc_lists_the_chapters_in_order():
    names = [p.name for p in CHAPTERS]
    assert names[0] == "00_introduction.ipynb"
    # numbered chapters 00, 01, ... first; then appendices appendix_a_...,
    # appendix_b_..., in order
    chapters = [n for n in names if n[:2].isdigit()]
    appendices = names[len(chapters) :]
    numbers = [int(n[:2]) for n in chapters]
    assert numbers == list(range(len(chapters))), (
        f"chapters out of order or missing a number: {names}"
    )
    letters = [re.match(r"appendix_([a-z])_\w+\.ipynb$", n) for n in appendices]
    assert all(letters), (
        f"after the numbered chapters only appendix_<letter>_<name> files: {appendices}"
    )
    assert [m.group(1) for m in letters] == [
        chr(ord("a") + i) for i in range(len(appendices))
    ], appendices


@pytest.fixture(params=CHAPTERS, ids=[p.stem for p in CHAPTERS])
def notebook(request) -> nbformat.NotebookNode:
    path: Path = request.param
    if not path.exists():
        pytest.skip(
            f"{path.relative_to(ROOT)} is listed in _toc.yml but not written yet"
        )
    nb = nbformat.read(path, as_version=4)
    nb.metadata["_path"] = str(path.relative_to(ROOT))
    return nb


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _headings(nb) -> list[tuple[int, str]]:
    """(level, text) of every markdown heading, skipping fenced code blocks."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        in_fence = False
        for line in cell.source.splitlines():
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
            elif not in_fence and (m := re.match(r"^(#{1,6})\s+(.*\S)", line)):
                found.append((len(m.group(1)), m.group(2)))
    return found


def test_first_cell_is_the_colab_install_cell(notebook):
    first = notebook.cells[0]
    assert first.cell_type == "code", (
        f"{notebook.metadata['_path']}: first cell must be the Colab cell"
    )
    assert first.source == EXECUTE.colab_cell_source(), (
        f"{notebook.metadata['_path']}: first cell differs from the Colab cell; run "
        "python book/execute_notebooks.py on it"
    )


def test_every_code_cell_was_executed_in_order(notebook):
    counts = [c.execution_count for c in _code_cells(notebook)]
    assert None not in counts, f"{notebook.metadata['_path']}: unexecuted code cells"
    # one fresh run from top to bottom numbers the cells 1, 2, 3, ...
    assert counts == list(range(1, len(counts) + 1)), (
        f"{notebook.metadata['_path']}: counts {counts}"
    )


def test_no_error_outputs(notebook):
    for i, cell in enumerate(_code_cells(notebook)):
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        assert not errors, (
            f"{notebook.metadata['_path']} code cell {i}: {errors[0].ename}: "
            f"{errors[0].evalue}"
        )
        stderr = [
            o
            for o in cell.get("outputs", [])
            if o.output_type == "stream" and o.name == "stderr"
        ]
        assert not any("Traceback" in o.text for o in stderr), (
            f"{notebook.metadata['_path']} code cell {i}"
        )


def test_no_absolute_paths_of_this_machine_in_outputs(notebook):
    root = str(ROOT)
    for i, cell in enumerate(_code_cells(notebook)):
        for output in cell.get("outputs", []):
            text = output.get("text", "") + str(
                output.get("data", {}).get("text/plain", "")
            )
            assert root not in text, (
                f"{notebook.metadata['_path']} code cell {i} prints a local path"
            )


def test_one_title_then_sections_without_level_jumps(notebook):
    headings = _headings(notebook)
    path = notebook.metadata["_path"]
    assert headings and headings[0][0] == 1, f"{path}: must open with a '#' title"
    assert [level for level, _ in headings].count(1) == 1, (
        f"{path}: exactly one '#' title"
    )
    for (prev, _), (level, text) in zip(headings, headings[1:]):
        assert level <= prev + 1, (
            f"{path}: heading '{text}' jumps from level {prev} to {level}"
        )


def test_ends_with_summary_and_exercises(notebook):
    sections = [text for level, text in _headings(notebook) if level == 2]
    path = notebook.metadata["_path"]
    assert sections[-2:] == ["Summary", "Exercises"], (
        f"{path}: last sections are {sections[-2:]}"
    )


def test_imports_from_the_package_without_star_imports(notebook):
    code = "\n".join(c.source for c in _code_cells(notebook))
    assert not re.search(r"^\s*from\s+\S+\s+import\s+\*", code, flags=re.M), (
        notebook.metadata["_path"]
    )
    assert "from ssd_tutorial" in code, (
        f"{notebook.metadata['_path']}: uses nothing from the package"
    )


# The book's text column is about 700 px wide: 88 characters of code font.  Cells
# removed from the page (the Colab cell) are not checked; hidden inputs are (the reader
# can unfold them).
COLUMN = 88


def _long_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > COLUMN]


def test_code_and_printed_text_fit_the_column(notebook):
    path = notebook.metadata["_path"]
    too_long = []
    for i, cell in enumerate(_code_cells(notebook)):
        tags = cell.metadata.get("tags", [])
        if "remove-cell" in tags:
            continue
        if "remove-input" not in tags:
            too_long += [
                f"cell {i} source: {line}" for line in _long_lines(cell.source)
            ]
        if "remove-output" in tags:
            continue
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                too_long += [
                    f"cell {i} prints: {line}" for line in _long_lines(output.text)
                ]
            elif "text/plain" in output.get("data", {}) and len(output.data) == 1:
                # a figure's or a Markdown output's text/plain repr is not shown on the
                # page
                too_long += [
                    f"cell {i} shows: {line}"
                    for line in _long_lines(output.data["text/plain"])
                ]
    assert not too_long, (
        f"{path}: {len(too_long)} lines over {COLUMN} characters:\n"
        + "\n".join(too_long)
    )


def test_math_is_typeset_by_a_mathjax_copy_shipped_with_the_book():
    """The built pages load MathJax from _static (sphinx-mathjax-offline), not from a
    CDN."""
    import importlib

    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]
    mathjax_path = config["sphinx"]["config"]["mathjax_path"]
    assert "//" not in mathjax_path, (
        f"_config.yml: mathjax_path {mathjax_path!r} points off the book"
    )
    extension = importlib.import_module("sphinx-mathjax-offline")
    # the extension copies its static/mathjax folder to _build/html/_static/mathjax
    shipped = Path(extension.__file__).parent / "static" / mathjax_path
    assert shipped.is_file(), f"sphinx-mathjax-offline ships no {mathjax_path}"


_HIDDEN_TAGS = {"hide-input", "remove-input", "remove-cell"}


def _names(source: str) -> tuple[set[str], set[str]]:
    """(names a cell binds, names it reads) -- by the syntax tree, ignoring scopes."""
    import ast

    tree = ast.parse(source)
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, (ast.Store, ast.Del)) else read).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    return bound, read


def test_no_visible_cell_relies_on_a_name_only_a_hidden_cell_defines(notebook):
    """A reader must see every definition the visible code uses: hidden cells only draw.

    The first cell (the Colab cell, removed from the page) is exempt: it binds nothing a
    chapter uses, and checking it would only flag its own imports.
    """
    path = notebook.metadata["_path"]
    last_defined_hidden: dict[
        str, int
    ] = {}  # name -> index of the hidden cell that bound it
    problems = []
    for i, cell in enumerate(_code_cells(notebook)):
        if i == 0:
            continue
        bound, read = _names(cell.source)
        hidden = bool(_HIDDEN_TAGS & set(cell.metadata.get("tags", [])))
        if not hidden:
            problems += [
                f"code cell {i} uses {name!r}, defined only in hidden code cell "
                f"{last_defined_hidden[name]}"
                for name in sorted(read - bound)
                if name in last_defined_hidden
            ]
        for name in bound:
            if hidden:
                last_defined_hidden[name] = i
            else:
                last_defined_hidden.pop(name, None)
    assert not problems, f"{path}:\n" + "\n".join(problems)
