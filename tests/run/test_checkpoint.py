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


def test_cuda_generators_are_saved_once_cuda_is_in_use_and_restored(tmp_path, monkeypatch):
    """A GPU run draws from the CUDA generators: their states travel with the checkpoint (faked here)."""
    saved = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert [t.tolist() for t in restored] == [[1, 2], [3]]
    # a process that never used CUDA saves none (and does not initialise it); old checkpoints lack the key
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert rng_state()["cuda"] == []
    state = rng_state()
    del state["cuda"]
    restored.clear()
    set_rng_state(state)
    assert restored == []


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



def test_forked_rng_restores_the_cpu_generator_and_forks_a_cuda_device(monkeypatch):
    from coworld.run.checkpoint import forked_rng

    before = torch.get_rng_state()
    with forked_rng("cpu"):
        torch.rand(5)
    assert torch.equal(before, torch.get_rng_state())
    seen = []
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices: seen.append(devices))
    forked_rng(torch.device("cpu")), forked_rng("cuda:1")
    assert seen == [[], [torch.device("cuda:1")]]
