"""Headless MuJoCo rendering: choosing the OpenGL backend and cheaper render settings.

MuJoCo reads the ``MUJOCO_GL`` environment variable once, when ``mujoco`` (or
``dm_control``) is first imported. :func:`setup_gl` therefore has to run before
that import; every MuJoCo entry point in ``coworld.envs`` calls it first.

Backends, in the order tried when ``MUJOCO_GL`` is not set:

- ``egl``: GPU or Mesa software EGL, no display needed (Debian/Ubuntu packages
  ``libegl1`` and ``libegl-mesa0``; ``libgl1-mesa-dri`` for software rendering).
- ``osmesa``: pure software rendering (package ``libosmesa6``), slower.
- ``glfw``: needs a display (a desktop session or ``xvfb-run``).

On CPU-only machines rendering dominates the step time; ``fast_render`` lowers the
shadow-map resolution and turns multisampling off (see :func:`apply_fast_render`).
"""

from __future__ import annotations

import ctypes.util
import os

# Shared libraries each headless backend loads, and the apt packages that provide them.
BACKEND_LIBRARIES = {"egl": "EGL", "osmesa": "OSMesa"}
APT_PACKAGES = {
    "egl": "libegl1 libegl-mesa0 libgl1-mesa-dri",
    "osmesa": "libosmesa6",
    "glfw": "libglfw3 (and a display, e.g. run under xvfb-run)",
}

# Settings used by fast_render=True. MuJoCo's defaults are shadowsize 4096 and
# offsamples 4; at 64x64 pixels neither is visible, but both cost CPU time.
FAST_SHADOWSIZE = 1024
FAST_OFFSAMPLES = 0


def backend_available(backend: str) -> bool:
    """Whether the shared library a headless backend needs can be found (glfw: always True)."""
    library = BACKEND_LIBRARIES.get(backend)
    return library is None or ctypes.util.find_library(library) is not None


def setup_gl() -> str:
    """Pick the OpenGL backend for MuJoCo and export it; returns the backend name.

    Respects ``MUJOCO_GL`` when the user has set it. Otherwise tries EGL, then
    OSMesa, then falls back to GLFW (which needs a display). Call it before
    ``mujoco`` / ``dm_control`` are imported: dm_control fixes its backend at import.
    (gymnasium's MuJoCo renderer, used by Meta-World, reads the variable at its first
    render, so setting it late still works there.)
    """
    chosen = os.environ.get("MUJOCO_GL")
    if not chosen:
        chosen = next((b for b in ("egl", "osmesa") if backend_available(b)), "glfw")
        os.environ["MUJOCO_GL"] = chosen
    # PyOpenGL (used by dm_control) must load the same platform library.
    if chosen in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
    return chosen


def apply_fast_render(model) -> None:
    """Lower shadow resolution and disable multisampling on an ``mujoco.MjModel``.

    Takes effect for render contexts created afterwards, so call it right after the
    model is built and before the first frame is rendered.
    """
    model.vis.quality.shadowsize = FAST_SHADOWSIZE
    model.vis.quality.offsamples = FAST_OFFSAMPLES


def make_dm_control_context_current(physics) -> None:
    """Make a dm_control ``Physics``' OpenGL context current, even where dm_control believes it
    already is (a gymnasium renderer may have switched contexts since; mujoco_base ``_draw``)."""
    gl = physics.contexts.gl
    with gl.make_current() as ctx:
        ctx.call(gl._platform_make_current)
