import numpy as np


def test_discounted_return_to_go_hand_example():
    from coworld.run.driver import discounted_to_go

    g = discounted_to_go(np.array([1.0, 0.0, 2.0]), 0.5)
    # G_2 = 2; G_1 = 0 + 0.5 * 2 = 1; G_0 = 1 + 0.5 * 1 = 1.5
    assert np.allclose(g, [1.5, 1.0, 2.0])
