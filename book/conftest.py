"""Run the chapters under the settings book/execute_notebooks.py executed them with.

nbval starts one kernel per notebook after collection; the kernel inherits this
environment.
"""

from execute_notebooks import apply_deterministic_env

apply_deterministic_env()
