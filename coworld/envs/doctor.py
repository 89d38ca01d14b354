"""``coworld doctor``: check that MuJoCo rendering and each benchmark suite work on this machine.

For every OpenGL backend it renders one frame in a fresh process (the backend is fixed per
process); for every suite it imports the simulator, builds one task, renders a frame and times
a few steps. Anything missing is reported with the exact apt package or pip extra to install.
Exit code 0 when everything installed works, 1 when an installed component fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import time

from coworld.envs import rendering
from coworld.errors import UserError

# Pinned versions known to work together (see docs/benchmarks.md for what breaks otherwise).
PINNED = {"mujoco": "3.3.0", "dm_control": "1.0.28", "metaworld": "3.1.1"}
SUITES = {
    # suite: (pip extra, packages to import, task built for the check, raw steps to time)
    "dmc": ("dmc", ["mujoco", "dm_control"], "dmc:walker_walk", 20),
    "metaworld": ("metaworld", ["mujoco", "metaworld"], "metaworld:door-close", 10),
    "robodesk": ("robodesk", ["mujoco", "dm_control", "PIL"], "robodesk:push_green", 3),
}
PIP_NAMES = {"PIL": "Pillow"}

# Renders one 64x64 frame of a one-geom model with the backend named in MUJOCO_GL.
_RENDER_PROBE = """
import mujoco
model = mujoco.MjModel.from_xml_string(
    '<mujoco><worldbody><light pos="0 0 2"/><geom type="sphere" size=".2" rgba="1 0 0 1"/></worldbody></mujoco>')
data = mujoco.MjData(model)
mujoco.mj_forward(model, data)
renderer = mujoco.Renderer(model, 64, 64)
renderer.update_scene(data)
frame = renderer.render()
assert frame.shape == (64, 64, 3) and frame.max() > 0, "blank frame"
renderer.close()
"""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(PIP_NAMES.get(package, package))
    except importlib.metadata.PackageNotFoundError:
        return None


def check_backend(backend: str, timeout: float = 60.0) -> tuple[str, str]:
    """Render one frame with ``backend`` in a subprocess -> (status, message)."""
    if importlib.util.find_spec("mujoco") is None:
        return "skipped", "mujoco is not installed (pip install 'coworld[dmc]' or any MuJoCo extra)"
    if backend == "glfw" and not os.environ.get("DISPLAY"):
        return "skipped", "needs a display ($DISPLAY is not set); headless machines use egl or osmesa"
    if not rendering.backend_available(backend):
        lib = rendering.BACKEND_LIBRARIES[backend]
        return "missing", f"lib{lib} not found: sudo apt-get install {rendering.APT_PACKAGES[backend]}"
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    if backend == "glfw":
        env.pop("PYOPENGL_PLATFORM")
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RENDER_PROBE], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "failed", f"rendering did not finish within {timeout:.0f} s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        return "failed", f"{last} (packages: {rendering.APT_PACKAGES[backend]})"
    return "ok", f"rendered a 64x64 frame ({time.perf_counter() - start:.1f} s incl. start-up)"


def check_suite(suite: str, fast_render: bool = False) -> tuple[str, str]:
    """Import, build one task, render and time a few raw steps -> (status, message)."""
    import numpy as np

    from coworld.envs.registry import make

    extra, packages, env_id, steps = SUITES[suite]
    absent = [PIP_NAMES.get(p, p) for p in packages if importlib.util.find_spec(p) is None]
    if absent:
        return "missing", f"{', '.join(absent)} not installed: pip install 'coworld[{extra}]'"
    versions = ", ".join(f"{p} {_version(p)}" for p in packages if p in PINNED)
    off_pin = [f"{p} {_version(p)} (tested: {PINNED[p]})" for p in packages if p in PINNED and _version(p) != PINNED[p]]
    try:
        env = make(env_id, seed=0, action_repeat=1, fast_render=fast_render)
        obs, _ = env.reset()
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(steps):
            obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        speed = steps / (time.perf_counter() - start)
        env.close()
    except Exception as exc:  # report, do not crash: the point is to diagnose
        hint = f"; try the tested versions: pip install 'coworld[{extra}]'" if off_pin else ""
        return "failed", f"{env_id}: {type(exc).__name__}: {exc}{hint}"
    if obs["image"].shape != (64, 64, 3) or not obs["image"].any():
        return "failed", f"{env_id}: rendered frame is blank or has shape {obs['image'].shape}"
    message = f"{versions}; {env_id} built, 64x64 frame, {speed:.1f} steps/s"
    if off_pin:
        message += f"; WARNING untested versions: {', '.join(off_pin)}"
    return "ok", message


def run_doctor(args) -> int:
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        raise UserError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    chosen = os.environ.get("MUJOCO_GL")
    print(f"coworld doctor  (python {platform.python_version()}, {platform.system()} {platform.machine()})")
    versions = ", ".join(f"{p} {_version(p) or 'not installed'}" for p in ("torch", "numpy", "gymnasium"))
    print(f"  {versions}")
    default = next((b for b in ("egl", "osmesa") if rendering.backend_available(b)), "glfw")
    print(f"  MUJOCO_GL={chosen}" if chosen else f"  MUJOCO_GL not set: coworld will use {default}")
    failed = False
    print("OpenGL backends")
    for backend in ("egl", "osmesa", "glfw"):
        status, message = check_backend(backend)
        print(f"  {backend:<10}{status:<9}{message}")
    if not args.skip_benchmarks:
        rendering.setup_gl()
        print("Benchmarks" + (" (fast_render)" if args.fast_render else ""))
        for suite in args.suites or list(SUITES):
            status, message = check_suite(suite, args.fast_render)
            failed |= status == "failed"
            print(f"  {suite:<10}{status:<9}{message}")
    return 1 if failed else 0


def register(subparsers, groups=None) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check MuJoCo rendering and the benchmark suites; says what to install",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("suites", nargs="*", metavar="SUITE", help=f"suites to check (default: all of {', '.join(SUITES)})")
    p.add_argument("--skip-benchmarks", action="store_true", help="only check the OpenGL backends")
    p.add_argument("--fast-render", action="store_true", help="time the steps with fast_render=True")
    p.set_defaults(func=run_doctor)
