"""Fixtures of the MuJoCo suites: each skips its tests when the suite's packages are missing."""

import pytest

from tests.envs.helpers import import_suite


@pytest.fixture(scope="module")
def dmc():
    return import_suite("dmc", "dmc", "dm_control")


@pytest.fixture(scope="module")
def mw():
    return import_suite("metaworld", "metaworld", "metaworld")


@pytest.fixture(scope="module")
def rd():
    return import_suite("robodesk", "robodesk", "dm_control", "PIL")
