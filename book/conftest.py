"""Run the chapters under the settings book/execute_notebooks.py executed them with.

nbval starts one kernel per notebook after collection; the kernel inherits this environment.
"""
import os

from execute_notebooks import DETERMINISTIC_ENV

os.environ.update(DETERMINISTIC_ENV)
