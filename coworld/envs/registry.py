"""Environment registry: every environment the library knows, by id, and one way to build it.

A suite module describes each of its tasks with an :class:`EnvSpec` and calls :func:`register`
at import time. Registering is cheap: the simulator is imported only when :func:`make` calls the
spec's entry point, so listing environments never needs MuJoCo.

``make`` builds the raw environment (one raw step = one control step) and wraps it in
:class:`coworld.envs.wrappers.CommonWrapper`, which gives every environment the same contract
(docs/architecture.md, "Environment contract").
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field

import gymnasium

from coworld.errors import MissingDependency, UserError
from coworld.envs.wrappers import CommonWrapper


@dataclass(frozen=True)
class EnvSpec:
    id: str  # "suite:task", e.g. "builtin:reach", "dmc:walker_walk"
    suite: str
    description: str  # one line
    action_dim: int
    entry_point: str  # "module.path:function"; imported lazily at make() time
    image_shape: tuple = (64, 64, 3)
    action_repeat: int = 1  # default action repeat
    time_limit: int = 1000  # default episode length in AGENT steps (after action repeat)
    has_success: bool = False
    expert_score: float | None = None  # return of the scripted expert per episode, where known
    extra: str | None = None  # pip extra providing the simulator ("dmc", "metaworld", ...)
    kwargs: dict = field(default_factory=dict)  # default options passed to the entry point


_REGISTRY: dict[str, EnvSpec] = {}


def register(spec: EnvSpec) -> None:
    """Add ``spec`` to the registry. Registering the same spec twice is a no-op."""
    if spec.id != f"{spec.suite}:{spec.id.partition(':')[2]}" or not spec.id.partition(":")[2]:
        raise ValueError(f"env id {spec.id!r} must look like '{spec.suite}:<task>'")
    if ":" not in spec.entry_point:
        raise ValueError(f"entry point {spec.entry_point!r} of {spec.id} must look like 'module:function'")
    if spec.action_dim < 1 or spec.action_repeat < 1 or spec.time_limit < 1:
        raise ValueError(f"{spec.id}: action_dim, action_repeat and time_limit must be >= 1")
    old = _REGISTRY.get(spec.id)
    if old is not None and old != spec:
        raise ValueError(f"env id {spec.id!r} is already registered with a different spec")
    _REGISTRY[spec.id] = spec


def spec(id: str) -> EnvSpec:
    """The registered metadata of ``id``; an unknown id raises UserError with close matches."""
    try:
        return _REGISTRY[id]
    except KeyError:
        close = difflib.get_close_matches(id, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown environment '{id}'.{hint} Run `coworld envs` to list the registered ids."
        ) from None


def list_specs(suite: str | None = None) -> list[EnvSpec]:
    """All registered specs (of one suite if given), sorted by id."""
    return sorted(
        (s for s in _REGISTRY.values() if suite is None or s.suite == suite), key=lambda s: s.id
    )


def make(
    id: str,
    *,
    image_size: int = 64,
    action_repeat: int | None = None,
    time_limit: int | None = None,
    seed: int | None = None,
    **options,
) -> gymnasium.Env:
    """Build environment ``id`` with the common wrapper applied.

    ``action_repeat`` / ``time_limit`` of None or 0 mean the registered defaults; ``time_limit``
    counts agent steps (after action repeat). ``seed`` seeds the first ``reset()`` that is called
    without a seed. ``options`` override the spec's default keyword options of the entry point.
    """
    s = spec(id)
    action_repeat = action_repeat or s.action_repeat
    time_limit = time_limit or s.time_limit
    if image_size < 8 or action_repeat < 1 or time_limit < 1:
        raise UserError(
            f"{id}: image_size must be >= 8 and action_repeat, time_limit >= 1 "
            f"(got {image_size}, {action_repeat}, {time_limit})"
        )
    module_name, _, fn_name = s.entry_point.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
        _check_options(s, fn, options)
        env = fn(image_size=image_size, seed=seed, **{**s.kwargs, **options})
    except ImportError as exc:
        package = (exc.name or "").split(".")[0]
        if s.extra is None or package in ("", "coworld"):
            raise
        raise MissingDependency(package, s.extra, what=f"environment '{id}'") from exc
    return CommonWrapper(
        env,
        action_repeat=action_repeat,
        time_limit=time_limit,
        has_success=s.has_success,
        image_size=image_size,
        seed=seed,
    )


def _check_options(s: EnvSpec, fn, options: dict) -> None:
    """Reject options the entry point does not take (unless it takes **kwargs itself)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = sorted(set(params) | {"action_repeat", "time_limit"})
        raise UserError(
            f"unknown option(s) {', '.join(unknown)} for environment '{s.id}'; "
            f"valid options: {', '.join(valid)}"
        )
