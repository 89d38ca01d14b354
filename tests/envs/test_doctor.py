"""`coworld doctor`, GL backend selection and the missing-simulator errors (no MuJoCo needed)."""

import os
import sys

import pytest

import coworld.envs as envs
from coworld import cli
from coworld.envs import doctor, rendering
from coworld.errors import MissingDependency


def test_doctor_command_registered():
    args = cli.build_parser().parse_args(["doctor", "dmc", "--skip-benchmarks"])
    assert args.func is doctor.run_doctor and args.suites == ["dmc"] and args.skip_benchmarks


def test_unknown_suite_is_a_user_error(capsys):
    assert cli.main(["doctor", "atari", "--skip-benchmarks"]) == 2
    assert "unknown suite(s) atari" in capsys.readouterr().err


def test_missing_package_names_the_extra(monkeypatch):
    real = doctor.importlib.util.find_spec
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda n: None if n == "metaworld" else real(n))
    status, message = doctor.check_suite("metaworld")
    assert status == "missing" and "pip install 'coworld[metaworld]'" in message


def test_missing_gl_library_names_the_apt_package(monkeypatch):
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda n: object())  # pretend mujoco is there
    monkeypatch.setattr(rendering, "backend_available", lambda b: False)
    status, message = doctor.check_backend("osmesa")
    assert status == "missing" and "apt-get install libosmesa6" in message


def test_setup_gl_respects_user_then_prefers_egl_then_osmesa(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert rendering.setup_gl() == "osmesa"
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.setattr(rendering, "backend_available", lambda b: b == "osmesa")
    assert rendering.setup_gl() == "osmesa"
    assert os.environ["MUJOCO_GL"] == "osmesa"
    assert os.environ["PYOPENGL_PLATFORM"] == "osmesa"
    monkeypatch.setenv("MUJOCO_GL", "")
    monkeypatch.setattr(rendering, "backend_available", lambda b: True)
    assert rendering.setup_gl() == "egl"


@pytest.mark.parametrize(
    "env_id,blocked,extra",
    [("dmc:walker_walk", "dm_control", "dmc"), ("metaworld:door-close", "metaworld", "metaworld"),
     ("robodesk:push_green", "dm_control", "robodesk")],
)
def test_make_without_simulator_raises_missing_dependency(monkeypatch, env_id, blocked, extra):
    for name in [n for n in sys.modules if n == blocked or n.startswith(blocked + ".")] + [blocked]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import <name>` fail
    with pytest.raises(MissingDependency) as info:
        envs.make(env_id)
    assert info.value.extra == extra and f"coworld[{extra}]" in str(info.value)


@pytest.mark.dmc
def test_egl_backend_renders_when_available():
    pytest.importorskip("mujoco", reason="mujoco not installed: pip install 'coworld[dmc]'")
    if not rendering.backend_available("egl"):
        pytest.skip("libEGL not installed")
    status, message = doctor.check_backend("egl")
    assert status == "ok", message
