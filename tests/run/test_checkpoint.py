import random

import numpy as np
import pytest
import torch

from coworld.errors import UserError
from coworld.run.checkpoint import (
    generator_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_generator_state,
    set_rng_state,
)


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    save_checkpoint(tmp_path / "c.pt", {"rng": state})
    torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_numpy_generator_state_survives_weights_only(tmp_path):
    gen = np.random.default_rng(123)
    gen.random(7)
    save_checkpoint(tmp_path / "g.pt", {"g": generator_state(gen)})
    expected = gen.random(4)
    other = np.random.default_rng(0)
    set_generator_state(other, load_checkpoint(tmp_path / "g.pt")["g"])
    assert np.array_equal(other.random(4), expected)


def test_save_is_atomic_previous_survives_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"x": torch.ones(2)})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"x": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))


class Evil:
    pass


def test_load_refuses_pickled_objects(tmp_path):
    torch.save({"obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path)

