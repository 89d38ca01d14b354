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
    from coworld.run.loop import Periodic

    every3 = Periodic(3)
    assert [every3(s, s + 1) for s in range(7)] == [False, False, True, False, False, True, False]
    assert every3(2, 7) and not every3(3, 5) and not Periodic(0)(0, 100)


def test_value_overestimation_reads_zero_for_the_true_discounted_value():
    """Paper Fig. 5b. Constant reward 1 forever (an episode cut at T = 100 by its time limit), gamma 0.9:
    the true discounted value is 1 / (1 - 0.9) = 10 in every state. A critic that predicts it reads 0;
    the return-to-go truncated at the episode end would have read it as an overestimation."""
    from coworld.run.driver import discounted_to_go, value_overestimation

    values, rewards = np.full(100, 10.0), np.ones(100)
    estimate, truth = value_overestimation(values, rewards, 0.9, steps=50, bootstrap=10.0)
    assert estimate == 10.0 and abs(truth - 10.0) < 1e-9
    truncated = discounted_to_go(rewards, 0.9)[:50].mean()  # without the time-limit bootstrap
    assert 10.0 - truncated > 1e-4
    # an over-estimating critic (+3 everywhere, bootstrap included) reads +3 (1 - 0.9^(100 - t)) per state
    est, tru = value_overestimation(values + 3, rewards, 0.9, steps=2, bootstrap=13.0)
    assert abs(est - tru - np.mean([3 * (1 - 0.9 ** (100 - t)) for t in range(2)])) < 1e-9


def test_value_overestimation_hand_example_terminated_episode():
    from coworld.run.driver import value_overestimation

    # rewards 1, 0, 2 then termination, gamma 0.5: G = 1.5, 1, 2; first N = 2 states
    est, tru = value_overestimation([3.0, 1.0, 0.0], [1.0, 0.0, 2.0], 0.5, steps=2)
    assert (est, tru) == (2.0, 1.25)
    # N larger than the episode: every state
    assert value_overestimation([3.0, 1.0, 0.0], [1.0, 0.0, 2.0], 0.5, steps=10) == (4 / 3, 1.5)


def test_overestimation_and_diagnostics_discount_with_the_critics_own_gamma(monkeypatch):
    """The Fig. 5b measure compares a critic's values with rewards discounted as that critic discounts
    them: modelfree.gamma for the pixel baselines, lompo.gamma for LOMPO (also behind LOMPO Finetune's
    ActionSlice), behaviour.gamma for DreamerV2 critics."""
    from types import SimpleNamespace

    from coworld.algos.dreamer import DreamerAgent
    from coworld.algos.lompo import LompoAgent
    from coworld.algos.model_free import DrQBCAgent
    from coworld.config import load_config
    from coworld.run import train
    from coworld.run.cotrain import ActionSlice

    cfg = load_config("tiny", ["behaviour.gamma=0.9", "modelfree.gamma=0.5", "lompo.gamma=0.7", "model.ensemble=2"])
    seen = []

    def fake_evaluate(agent, env, *, gamma=None, **kwargs):
        seen.append(gamma)
        return {"returns": [0.0], "lengths": [1], "value_estimate": [0.0], "true_return": [0.0]}

    monkeypatch.setattr(train, "evaluate", fake_evaluate)
    monkeypatch.setattr(train, "openloop_strip", lambda *a, **k: None)
    monkeypatch.setattr(train, "offline_diagnostics", lambda agent, batch, gamma: seen.append(gamma) or {})
    quiet = SimpleNamespace(scalars=lambda *a, **k: {}, record=lambda *a, **k: None, write=lambda *a, **k: None,
                            image=lambda *a, **k: None, video=lambda *a, **k: None)
    session = SimpleNamespace(cfg=cfg, logger=quiet, device="cpu")
    lompo = LompoAgent(cfg, 2)
    for agent in (DrQBCAgent(cfg, 2), lompo, ActionSlice(lompo, 1), DreamerAgent(cfg, 2)):
        train.run_evaluation(session, agent, env=None, step=0)
    assert seen == [0.5, 0.7, 0.7, 0.9]
    replay = SimpleNamespace(sample=lambda *a, **k: {})
    train.log_openloop(session, lompo, replay, 0)
    assert seen[-1] == 0.7
