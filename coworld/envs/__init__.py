"""Environments: a registry of ids, one common wrapper, and the suites.

``make(id, **options)`` builds any registered environment; ``list_specs()`` / ``spec(id)`` give
their metadata without building them. The built-in suite is pure NumPy and always available; the
MuJoCo suites register their ids here too but import their simulator only inside ``make``.
"""

import importlib
import importlib.util

from coworld.envs.registry import EnvSpec, list_specs, make, register, spec
from coworld.envs.scripted import scripted_policy

from coworld.envs import builtin  # noqa: E402,F401  (registers the built-in suite)

for _name in ("dmc", "metaworld", "robodesk"):
    if importlib.util.find_spec(f"coworld.envs.{_name}") is not None:
        importlib.import_module(f"coworld.envs.{_name}")

__all__ = ["EnvSpec", "list_specs", "make", "register", "spec", "scripted_policy"]
