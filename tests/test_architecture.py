"""The package's layering ("The house" in DESIGN.md), checked on the source text.

Every module of ``ssd_tutorial/`` is parsed with :mod:`ast` (never imported) and its
WHOLE syntax tree is walked: module-, class- and function-level imports, ``import x``,
``from x import y``, relative imports (``from . import y``, ``from .mod import y``), and
``from ssd_tutorial import model`` (which imports the module ``ssd_tutorial.model``).
``importlib.import_module("ssd_tutorial.x")`` / ``__import__(...)`` with a literal name
count too.

The rules (each test fails with ``path:line: module -> import`` for every violation):

a) every module file is placed in ``LAYERS`` and every module ``LAYERS`` names exists;
b) a module imports only package modules of its own layer or below (and ``__init__``
imports
   nothing of the package);
c) nothing imports a CLI module (L5): not the library, and not another CLI (CLIs are
leaves); d) the import graph among package modules has no cycle;
e) L0 modules import neither torch nor numpy;
f) imports inside functions: never of a package module, and of a third-party or
standard-library
   module only for the optional heavy dependencies in ``LAZY_ALLOWED``;
g) ``test_print_import_graph`` prints the graph layer by layer (``pytest -s``).

The analysis functions take ``{module_name: source_text}``, so the meta-tests at the
bottom can feed them tiny synthetic packages and show that each checker really fails.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "ssd_tutorial"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# module -> layer, from DESIGN.md "The house".  A module may import package modules of
# its own layer or below.  A new module must be placed here (test a), and a name that no
# longer exists must be removed (so the map cannot rot).
LAYERS: dict[str, int] = {
    # L0: no torch; cli.run_main is the one error policy.  __init__ imports nothing of
    # ours.
    "__init__": 0,
    "files": 0,
    "cli": 0,
    # L1: the teaching core, one chapter each.
    "boxes": 1,
    "default_boxes": 1,
    "matching": 1,
    "hard_negative_mining": 1,
    "loss": 1,
    "model": 1,
    "augmentation": 1,
    "photometric": 1,
    "preprocessing": 1,
    "inference": 1,
    "nms": 1,
    "evaluation": 1,
    "viz": 1,
    "backbone_weights": 1,
    # L2: images and datasets.
    "imageio": 2,
    "data": 2,
    "shapes": 2,
    "coco": 2,
    "own_data": 2,
    "gpu_augmentation": 2,
    # L3: weights and the one Detector.
    "checkpoint": 3,
    "published": 3,
    "pretrained": 3,
    "detector": 3,
    "onnx_export": 3,
    # L4: training and evaluation machinery.
    "config": 4,
    "sampling": 4,
    "optim": 4,
    "recipes": 4,
    "rundir": 4,
    "validate": 4,
    "train_setup": 4,
    "trainer": 4,
    "video": 4,
    # L5: the CLIs (argparse and outputs); leaves that nothing imports.
    "train": 5,
    "evaluate": 5,
    "detect": 5,
    "export": 5,
}
CLI_LAYER = 5
CLI_MODULES = frozenset(m for m, layer in LAYERS.items() if layer == CLI_LAYER)

# L0 must stay light (cli and files are imported by every entry point before any work
# starts). torchvision imports torch, so it is the same dependency under another name.
FORBIDDEN_IN_L0 = ("torch", "numpy", "torchvision")

# The only modules that may be imported inside a function.  Each is either an optional
# extra (not installed everywhere, so a module-level import would break the whole
# package) or slow to import and needed by one feature only.  Everything else -- package
# modules, the standard library, torch/torchvision/numpy/PIL/defusedxml (hard
# dependencies, already loaded with torch or cheap) -- is imported at module level,
# where a reader sees a module's dependencies at a glance.
LAZY_ALLOWED = (
    "onnx",  # `export` extra: ONNX export only
    "onnxruntime",  # `export` extra: checking an exported graph
    "onnxscript",  # `export` extra: torch.onnx.export's dynamo path
    "torchcodec",  # `codecs` extra: optional fast JPEG decode/encode (fallbacks exist)
    "pycocotools",  # COCO scoring only; heavy C extension, noisy at import
    "matplotlib",  # plotting only; ~0.3 s import and picks a GUI backend
    "tqdm",  # progress bars in the CLIs only
    "tensorboard",  # training logs only; slow import that pulls in protobuf
    "torch.utils.tensorboard",  # the same, through torch's wrapper
)


# --------------------------------------------------------------------------------------
# Analysis (pure: source text in, facts out)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    """One imported module, as found in ``module``'s source."""

    module: str  # the importing package module, e.g. "detect"
    line: int
    # the full dotted name of the imported module, e.g. "ssd_tutorial.model"
    target: str
    statement: str  # the source of the import statement, for messages
    in_function: bool  # inside a def/lambda (runs late) rather than at import time

    @property
    def package_module(self) -> str | None:
        """``"model"`` for ``ssd_tutorial.model``, ``"__init__"`` for
        ``ssd_tutorial``."""
        if self.target == PACKAGE:
            return "__init__"
        if self.target.startswith(PACKAGE + "."):
            return self.target[len(PACKAGE) + 1 :].split(".")[0]
        return None

    def where(self) -> str:
        scope = "function-level " if self.in_function else ""
        return (
            f"{PACKAGE}/{self.module}.py:{self.line}: {self.module} -> {self.target} "
            f"({scope}`{self.statement}`)"
        )


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {
        child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
    }


def _in_function(node: ast.AST, parents: Mapping[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def _resolve_from(
    module: str, node: ast.ImportFrom, modules: Iterable[str]
) -> list[str]:
    """Full names of the modules a ``from ... import ...`` statement imports."""
    if node.level:
        # The package is flat: the package of every module (and of __init__) is PACKAGE.
        # above the package: not ours (and an ImportError at runtime)
        if node.level > 1:
            return ["." * node.level + (node.module or "")]
        base = f"{PACKAGE}.{node.module}" if node.module else PACKAGE
    else:
        base = node.module or ""
    if base != PACKAGE:
        # `from ssd_tutorial.model import X` imports ssd_tutorial.model (the package is
        # flat); `from torch.utils import tensorboard` may import
        # torch.utils.tensorboard.
        if base.startswith(PACKAGE + "."):
            return [base]
        return [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
    # `from ssd_tutorial import model, VOC_CLASSES`: a module where it names one, else
    # __init__.
    known = set(modules) | set(LAYERS)
    targets = [f"{PACKAGE}.{a.name}" for a in node.names if a.name in known]
    if any(a.name not in known for a in node.names):
        targets.append(PACKAGE)
    return targets


def find_imports(module: str, source: str, modules: Iterable[str] = ()) -> list[Import]:
    """Every import anywhere in ``source`` (the text of package module ``module``)."""
    tree = ast.parse(source, filename=f"{PACKAGE}/{module}.py")
    parents = _parents(tree)
    modules = list(modules)
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            targets = _resolve_from(module, node, modules)
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (
                    isinstance(node.func, ast.Attribute)
                    and node.func.attr == "import_module"
                )
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            name = node.args[0].value
            if name.startswith("."):  # import_module(".model", "ssd_tutorial")
                name = PACKAGE + name
            targets = [name]
        else:
            continue
        statement = ast.get_source_segment(source, node) or ast.unparse(node)
        statement = " ".join(statement.split())
        in_function = _in_function(node, parents)
        found.extend(
            Import(module, node.lineno, t, statement, in_function) for t in targets
        )
    return sorted(found, key=lambda i: (i.line, i.target))


def package_imports(sources: Mapping[str, str]) -> dict[str, list[Import]]:
    """For each module, its imports of package modules (``Import.package_module``
    set)."""
    return {
        name: [
            i for i in find_imports(name, text, sources) if i.package_module is not None
        ]
        for name, text in sources.items()
    }


def _top_level(target: str) -> str:
    return target.split(".")[0]


def unplaced_modules(
    sources: Mapping[str, str], layers: Mapping[str, int]
) -> list[str]:
    """(a) Modules without a layer, and layer-map entries without a module."""
    out = [
        f"{PACKAGE}/{name}.py: module {name!r} is not in the layer map (place it in "
        "LAYERS)"
        for name in sorted(sources)
        if name not in layers
    ]
    out += [
        f"LAYERS names {name!r} (L{layer}), but {PACKAGE}/{name}.py does not exist "
        "(remove or rename the entry)"
        for name, layer in sorted(layers.items())
        if name not in sources
    ]
    return out


def upward_imports(sources: Mapping[str, str], layers: Mapping[str, int]) -> list[str]:
    """(b) Imports of a package module of a higher layer (or of one without a layer)."""
    out = []
    for name, imports in package_imports(sources).items():
        for imp in imports:
            target = imp.package_module
            if name == "__init__" and target != "__init__":
                out.append(
                    f"{imp.where()}: __init__ must import nothing of the package"
                )
            elif target not in layers or target not in sources:
                out.append(f"{imp.where()}: {target!r} is not a placed package module")
            elif name in layers and layers[target] > layers[name]:
                out.append(
                    f"{imp.where()}: L{layers[name]} {name} imports L{layers[target]} "
                    f"{target}"
                )
    return out


def cli_imports(sources: Mapping[str, str], layers: Mapping[str, int]) -> list[str]:
    """(c) Imports of a CLI module (layer ``CLI_LAYER``), from anywhere in the
    package."""
    return [
        f"{imp.where()}: {imp.package_module} is a CLI; CLIs are leaves that nothing "
        "imports"
        for imports in package_imports(sources).values()
        for imp in imports
        if layers.get(imp.package_module or "") == CLI_LAYER
        and imp.package_module != imp.module
    ]


def import_cycles(sources: Mapping[str, str]) -> list[str]:
    """(d) One path per strongly connected component of the package import graph."""
    edges: dict[str, dict[str, Import]] = {name: {} for name in sources}
    for name, imports in package_imports(sources).items():
        for imp in imports:
            target = imp.package_module
            if target in sources:
                edges[name].setdefault(target, imp)  # the first (lowest-line) import

    # Tarjan's strongly connected components, iteratively (no recursion limit to meet).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in edges[node]:
                        components.append(sorted(component))

    out = []
    for component in components:
        members = set(component)
        start = component[0]
        # Shortest path start -> ... -> start inside the component (breadth first).
        previous: dict[str, str] = {}
        frontier = [start]
        found = start in edges[start]
        if not found:
            seen = {start}
            while frontier and not found:
                next_frontier = []
                for node in frontier:
                    for child in sorted(edges[node]):
                        if child == start:
                            previous[start] = node
                            found = True
                            break
                        if child in members and child not in seen:
                            seen.add(child)
                            previous[child] = node
                            next_frontier.append(child)
                    if found:
                        break
                frontier = next_frontier
            path = [start]
            node = previous[start]
            while node != start:
                path.append(node)
                node = previous[node]
            path.append(start)
            path.reverse()
        else:
            path = [start, start]
        steps = "\n    ".join(edges[a][b].where() for a, b in itertools.pairwise(path))
        # Every edge inside the component: breaking the cycle means removing some of
        # these.
        inside = "\n    ".join(
            edges[a][b].where()
            for a in component
            for b in sorted(edges[a])
            if b in members
        )
        out.append(
            f"cycle {' -> '.join(path)}:\n"
            f"    {steps}\n"
            f"  all edges among {', '.join(component)}:\n"
            f"    {inside}"
        )
    return out


def heavy_imports_in_l0(
    sources: Mapping[str, str], layers: Mapping[str, int]
) -> list[str]:
    """(e) torch / numpy (anywhere in the tree) in an L0 module."""
    return [
        f"{imp.where()}: L0 module imports {_top_level(imp.target)}"
        for name, text in sources.items()
        if layers.get(name) == 0
        for imp in find_imports(name, text, sources)
        if _top_level(imp.target) in FORBIDDEN_IN_L0
    ]


def _lazy_allowed(target: str) -> bool:
    return any(target == a or target.startswith(a + ".") for a in LAZY_ALLOWED)


def function_level_imports(sources: Mapping[str, str]) -> list[str]:
    """(f) Imports inside functions: none of the package, others only from
    ``LAZY_ALLOWED``."""
    out = []
    for name, text in sources.items():
        imports = [i for i in find_imports(name, text, sources) if i.in_function]
        # `from torch.utils import tensorboard` yields torch.utils and
        # torch.utils.tensorboard:
        # the statement is allowed when any name it yields is.
        allowed_lines = {
            (i.line, i.statement) for i in imports if _lazy_allowed(i.target)
        }
        reported: set[tuple[int, str]] = set()
        for imp in imports:
            key = (imp.line, imp.statement)
            if imp.package_module is not None:
                out.append(
                    f"{imp.where()}: package modules are imported at module level"
                )
            elif key not in allowed_lines and key not in reported:
                reported.add(key)
                kind = (
                    "standard-library"
                    if _top_level(imp.target) in sys.stdlib_module_names
                    else "third-party"
                )
                out.append(
                    f"{imp.where()}: {kind} {_top_level(imp.target)!r} is not an "
                    "optional heavy dependency (LAZY_ALLOWED); import it at module "
                    "level"
                )
    return out


def import_graph(sources: Mapping[str, str], layers: Mapping[str, int]) -> str:
    """The package import graph, layer by layer: ``module: imported modules``.

    An import made only inside functions is marked ``(fn)``."""
    lines = []
    graph = package_imports(sources)
    by_layer: dict[int | None, list[str]] = {}
    for name in sources:
        by_layer.setdefault(layers.get(name), []).append(name)
    for layer in sorted(by_layer, key=lambda x: (x is None, x if x is not None else 0)):
        lines.append(f"L{layer}" if layer is not None else "unplaced")
        for name in sorted(by_layer[layer]):
            targets: dict[str, bool] = {}
            for imp in graph[name]:
                target = imp.package_module or ""
                targets[target] = targets.get(target, True) and imp.in_function
            shown = [
                f"{t}(L{layers.get(t, '?')}){' (fn)' if fn else ''}"
                for t, fn in sorted(
                    targets.items(), key=lambda kv: (layers.get(kv[0], 99), kv[0])
                )
            ]
            lines.append(f"  {name}: {', '.join(shown) if shown else '-'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The package's files
# --------------------------------------------------------------------------------------
def package_sources() -> dict[str, str]:
    """``{module name: source}`` for every ``.py`` file under ``ssd_tutorial/``.

    Sub-packages (if any appear) are named by their dotted path, e.g. ``io.decoders``,
    so they show up as unplaced until the map says where they go."""
    sources = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(PACKAGE_DIR).with_suffix("")
        sources[".".join(rel.parts)] = path.read_text(encoding="utf-8")
    return sources


def _fail_if(violations: list[str], what: str) -> None:
    if violations:
        raise AssertionError(f"{len(violations)} {what}:\n" + "\n".join(violations))


def test_every_module_is_placed_and_every_placed_module_exists() -> None:
    _fail_if(unplaced_modules(package_sources(), LAYERS), "layer-map mismatches")


def test_imports_only_go_down_the_layers() -> None:
    _fail_if(upward_imports(package_sources(), LAYERS), "upward imports")


def test_nothing_imports_a_cli() -> None:
    _fail_if(cli_imports(package_sources(), LAYERS), "imports of a CLI module")


def test_no_import_cycles() -> None:
    _fail_if(import_cycles(package_sources()), "import cycles")


def test_l0_imports_neither_torch_nor_numpy() -> None:
    _fail_if(heavy_imports_in_l0(package_sources(), LAYERS), "heavy imports in L0")


def test_function_level_imports_only_for_optional_heavy_dependencies() -> None:
    _fail_if(function_level_imports(package_sources()), "function-level imports")


def test_print_import_graph() -> None:
    sources = package_sources()
    graph = import_graph(sources, LAYERS)
    print("\n" + graph)
    listed = {
        line.strip().split(":")[0]
        for line in graph.splitlines()
        if line.startswith("  ")
    }
    assert listed == set(sources)


# --------------------------------------------------------------------------------------
# Meta-tests: the checkers catch what they claim to, on tiny synthetic packages
# --------------------------------------------------------------------------------------
TOY_LAYERS = {"__init__": 0, "base": 0, "core": 1, "mid": 2, "app": 5, "tool": 5}


def test_checker_finds_every_import_form() -> None:
    source = (
        "import os\n"
        "import ssd_tutorial.core as c\n"
        "from ssd_tutorial import mid, VERSION\n"
        "from . import base\n"
        "from .core import thing\n"
        "class K:\n"
        "    from ssd_tutorial.app import x\n"
        "def f():\n"
        "    if True:\n"
        "        import importlib\n"
        "        importlib.import_module('ssd_tutorial.tool')\n"
    )
    modules = ["__init__", "base", "core", "mid", "app", "tool"]
    found = [
        (i.line, i.target, i.in_function) for i in find_imports("mid", source, modules)
    ]
    assert found == [
        (1, "os", False),
        (2, "ssd_tutorial.core", False),
        (3, "ssd_tutorial", False),
        (3, "ssd_tutorial.mid", False),
        (4, "ssd_tutorial.base", False),
        (5, "ssd_tutorial.core", False),
        (7, "ssd_tutorial.app", False),
        (10, "importlib", True),
        (11, "ssd_tutorial.tool", True),
    ]


def test_checker_catches_a_cycle() -> None:
    toy = {
        "__init__": "",
        "base": "",
        "core": "def f():\n    from ssd_tutorial import mid\n",
        "mid": "from ssd_tutorial.core import f\n",
        "app": "",
        "tool": "",
    }
    (cycle,) = import_cycles(toy)
    assert cycle.startswith("cycle core -> mid -> core")
    assert "ssd_tutorial/core.py:2" in cycle and "ssd_tutorial/mid.py:1" in cycle
    assert import_cycles({**toy, "core": ""}) == []
    (self_loop,) = import_cycles({**toy, "core": "from . import core\n"})
    assert self_loop.startswith("cycle core -> core")


def test_checker_catches_an_upward_import() -> None:
    toy = {
        "__init__": "",
        "base": "",
        "core": "import ssd_tutorial.mid\n",
        "mid": "from ssd_tutorial.core import x\nfrom ssd_tutorial.base import y\n",
        "app": "",
        "tool": "",
    }
    (violation,) = upward_imports(toy, TOY_LAYERS)
    assert "ssd_tutorial/core.py:1: core -> ssd_tutorial.mid" in violation
    assert "L1 core imports L2 mid" in violation
    (init,) = upward_imports(
        {**toy, "core": "", "__init__": "from .base import y\n"}, TOY_LAYERS
    )
    assert "__init__ must import nothing" in init


def test_checker_catches_a_cli_import() -> None:
    toy = {
        "__init__": "",
        "base": "",
        "core": "",
        "mid": "def f():\n    from ssd_tutorial.app import main\n",
        "app": "",
        "tool": "from .app import main\n",  # CLI -> CLI: same layer, still a violation
    }
    violations = cli_imports(toy, TOY_LAYERS)
    assert len(violations) == 2
    assert "ssd_tutorial/mid.py:2: mid -> ssd_tutorial.app" in violations[0]
    assert "ssd_tutorial/tool.py:1: tool -> ssd_tutorial.app" in violations[1]


def test_checker_catches_unplaced_and_missing_modules() -> None:
    toy = {"__init__": "", "base": "", "core": "", "mid": "", "app": "", "new": ""}
    violations = unplaced_modules(toy, TOY_LAYERS)
    assert len(violations) == 2
    assert "'new' is not in the layer map" in violations[0]
    assert "LAYERS names 'tool'" in violations[1]


def test_checker_catches_torch_in_l0_and_lazy_imports() -> None:
    toy = {
        "base": "def f():\n    import numpy as np\n",
        "core": (
            "import torch\n"
            "def f():\n"
            "    import json\n"
            "    from ssd_tutorial import base\n"
            "    from torch.utils import tensorboard\n"
            "    import matplotlib.pyplot as plt\n"
        ),
    }
    (l0,) = heavy_imports_in_l0(toy, TOY_LAYERS)
    assert "ssd_tutorial/base.py:2: base -> numpy" in l0
    lazy = function_level_imports(toy)
    assert len(lazy) == 3
    assert "base.py:2" in lazy[0] and "third-party 'numpy'" in lazy[0]
    assert "core.py:3" in lazy[1] and "standard-library 'json'" in lazy[1]
    assert (
        "core.py:4" in lazy[2]
        and "package modules are imported at module level" in lazy[2]
    )
