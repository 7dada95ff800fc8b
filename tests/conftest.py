"""Hypothesis profiles: reproducible in CI, exploring on a developer's machine.

``CI=true`` (set by .ci/run) selects the ``ci`` profile: examples derived from each
test's source, not from fresh randomness, and no example database written, so a clean
clone gets the same verdict every time.  Elsewhere the ``dev`` profile draws new
examples on every run (that is how flaky assertions are found) and remembers failures in
``.hypothesis/``.  Pick one by hand with ``pytest --hypothesis-profile=ci``;
``--hypothesis-seed=N`` replays one set of draws.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(
    "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"
)


@pytest.fixture(autouse=True)
def _seeded_global_rngs() -> None:
    """Tests that draw from torch's or numpy's global generator get the same numbers
    whichever tests ran before them (with -k, -x or another order), so none passes or
    fails by position."""
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def data_script():
    """``data_script("make_shapes")``: a script of data_scripts/ imported as a module
    (the folder is not a package, and the README's test command does not put the
    repository on sys.path)."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "data_scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load
