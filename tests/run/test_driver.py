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


class _CountEnv:
    """Episode length 3 + seed % 5; even seeds terminate, odd ones are cut by a time limit. The frame
    holds the step count; reward = action + step; success once the step count reaches 4."""

    def reset(self, seed):
        self.t, self.end, self.terminal = 0, 3 + seed % 5, seed % 2 == 0
        return self._obs(), {}

    def _obs(self):
        return {"image": np.full((2, 2, 1), self.t, np.uint8)}

    def step(self, action):
        self.t += 1
        done = self.t >= self.end
        info = {"success": self.t >= 4}
        return self._obs(), float(action[0]) + self.t, done and self.terminal, done and not self.terminal, info


class _SumAgent:
    """Deterministic: acts with frame / 10, carries the sum of the frames seen since the first, values it twice."""

    def initial_policy_state(self, n):
        return np.zeros(n)

    def act(self, obs, state, is_first, explore):
        frame = obs["image"].reshape(len(state), -1)[:, 0].astype(np.float64)
        state = np.where(is_first, 0.0, state) + frame
        return (frame[:, None] / 10).astype(np.float32), state

    def policy_value(self, state):
        return 2.0 * state


def test_lockstep_evaluation_equals_one_episode_after_another():
    """K environments in lockstep give each episode its own seed, return, length, success, video frames
    and Fig. 5b values (bootstrap of time-limit cuts included) exactly as one env does, for a number of
    episodes that K does not divide and episodes of different lengths."""
    from coworld.run.driver import episode_seed, evaluate

    kw = dict(episodes=7, seed=3, video=True, gamma=0.5, value_steps=2)
    one = evaluate(_SumAgent(), _CountEnv(), **kw)
    three = evaluate(_SumAgent(), [_CountEnv() for _ in range(3)], **kw)
    lengths = [3 + episode_seed(3, 1_000_000 + i) % 5 for i in range(7)]
    assert one["lengths"] == lengths and len(set(lengths)) > 1
    for key in ("returns", "lengths", "successes", "value_estimate", "true_return"):
        assert np.allclose(one[key], three[key]), key
    assert np.array_equal(one["frames"], three["frames"]) and len(one["frames"]) == lengths[0] + 1
    # by hand: actions t / 10 at frames t = 0 .. T - 1, rewards t / 10 + (t + 1); values 2 * (0 + ... + t);
    # a time-limit cut (odd seed) bootstraps with the value of the final state, 2 * (0 + ... + T)
    for i, T in enumerate(lengths):
        rewards = [t / 10 + t + 1 for t in range(T)]
        assert np.isclose(one["returns"][i], sum(rewards)) and one["successes"][i] == float(T >= 4)
        g, acc = [], (2.0 * sum(range(T + 1)) if episode_seed(3, 1_000_000 + i) % 2 else 0.0)
        for r in reversed(rewards):
            acc = r + 0.5 * acc
            g.insert(0, acc)
        assert np.isclose(one["value_estimate"][i], 1.0)  # mean of 2 * 0 and 2 * (0 + 1)
        assert np.isclose(one["true_return"][i], np.mean(g[:2]))
