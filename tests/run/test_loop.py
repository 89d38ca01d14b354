"""The one training loop, driven by a stub trainer: how often it saves, evaluates and logs, and
that an interrupted run resumes where its last checkpoint left it and finishes with the same
counts as an uninterrupted one."""

import signal

import pytest

from coworld.config import load_config
from coworld.errors import UserError
from coworld.run.loop import BaseTrainer, run_loop
from coworld.run.session import RunFinished, Session


class Stub:
    """A checkpointed component: how many steps it has seen."""

    def __init__(self):
        self.seen = 0

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, d):
        self.seen = d["seen"]


class StubTrainer(BaseTrainer):
    def __init__(self, session, stop_at=None):
        self.session, self.stop_at = session, stop_at
        self.stub = Stub()
        self.components = {"stub": self.stub}
        self.counters = {"position": 0}
        self.calls = {"begin": 0, "evaluate": [], "log": [], "final": 0}

    def position(self):
        return self.counters["position"]

    def begin(self):
        self.calls["begin"] += 1

    def step(self):
        self.counters["position"] += 1
        self.stub.seen += 1
        if self.counters["position"] == self.stop_at:
            self.session.stop_signal = signal.SIGTERM  # as the SIGTERM handler does
        return {"loss": float(self.counters["position"])} if self.counters["position"] % 2 else None

    def evaluate(self, position):
        self.calls["evaluate"].append(position)

    def log(self, position, metrics):
        self.calls["log"].append((position, metrics["loss"]))

    def final(self):
        self.calls["final"] += 1


def session(logdir, total=10):
    cfg = load_config("tiny", ["train.log_every=3", "train.checkpoint_every=4"])
    return Session(logdir, run_args={"algo": "stub"}, cfg=cfg, total=total, unit="step", progress=False)


def counting_saves(s):
    saved = []
    save = s.save

    def counted(components, counters, metrics=None, finished=False):
        saved.append((counters["position"], finished))
        save(components, counters, metrics, finished)

    s.save = counted
    return saved


def test_loop_counts_saves_evaluations_and_logs(tmp_path):
    s = session(tmp_path / "run")
    saved, trainer = counting_saves(s), StubTrainer(s)
    assert run_loop(s, trainer, eval_every=5) == 0
    # a first save at 0, one per crossed multiple of 4, the finished one at the end
    assert saved == [(0, False), (4, False), (8, False), (10, True)]
    assert trainer.calls["evaluate"] == [5, 10] and trainer.calls["final"] == 1 and trainer.calls["begin"] == 1
    # logs at 3, 6, 9 with the metrics of the latest step that returned any (odd positions)
    assert trainer.calls["log"] == [(3, 3.0), (6, 5.0), (9, 9.0)]


def test_interrupted_loop_resumes_from_its_checkpoint(tmp_path):
    s = session(tmp_path / "run")
    saved, first = counting_saves(s), StubTrainer(s, stop_at=6)
    assert run_loop(s, first, eval_every=5) == 128 + signal.SIGTERM
    assert saved == [(0, False), (4, False), (6, False)]  # the stop saves where it stopped, unfinished
    assert first.calls["final"] == 0 and first.calls["evaluate"] == [5]

    with pytest.raises(UserError, match="already at step 6; --steps 5 would train nothing"):
        session(tmp_path / "run", total=5)
    s2 = session(tmp_path / "run")
    saved2, second = counting_saves(s2), StubTrainer(s2)
    assert s2.resuming
    assert run_loop(s2, second, eval_every=5) == 0
    assert second.stub.seen == 10 and second.counters["position"] == 10  # restored at 6, four more steps
    assert saved2 == [(8, False), (10, True)]
    assert second.calls["evaluate"] == [10] and second.calls["final"] == 1
    with pytest.raises(RunFinished):  # a finished run is left alone
        session(tmp_path / "run")
