import numpy as np


def test_discounted_return_to_go_hand_example():
    from coworld.run.driver import discounted_to_go

    g = discounted_to_go(np.array([1.0, 0.0, 2.0]), 0.5)
    # G_2 = 2; G_1 = 0 + 0.5 * 2 = 1; G_0 = 1 + 0.5 * 1 = 1.5
    assert np.allclose(g, [1.5, 1.0, 2.0])


def test_updates_due_follows_prefill_burst_then_every_k():
    from types import SimpleNamespace

    from coworld.run.train import updates_due

    t = SimpleNamespace(pretrain=7, train_every=5)
    assert updates_due(t, 12, ready=False, pretrained=False) == (0, False)  # prefill / empty replay
    assert updates_due(t, 13, ready=True, pretrained=False) == (7, True)  # first call: the burst
    assert [updates_due(t, s, True, True)[0] for s in range(14, 21)] == [0, 1, 0, 0, 0, 0, 1]


def test_periodic_fires_once_per_multiple_crossed():
    from coworld.run.train import Periodic

    every3 = Periodic(3)
    assert [every3(s, s + 1) for s in range(7)] == [False, False, True, False, False, True, False]
    assert every3(2, 7) and not every3(3, 5) and not Periodic(0)(0, 100)
