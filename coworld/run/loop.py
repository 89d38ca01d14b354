"""The one training loop. Every algorithm's training (online Dreamer, offline training, CoWorld and
DV2 Finetune) runs through :func:`run_loop`, which owns the life cycle of a run directory:

    restore (or start fresh and save at once, so a killed run always has a checkpoint)
    -> repeat until ``position() >= total`` or a stop signal:
         step -> evaluate (every ``eval_every``) -> log (every ``train.log_every``)
              -> progress -> checkpoint (every ``train.checkpoint_every``)
    -> final evaluation (unless stopped) -> ``session.finish`` (last checkpoint, finished mark, plots).

A checkpoint is written at the end of an iteration, so a resumed run continues exactly where the
saved one would have. What an algorithm supplies is a :class:`Trainer`: the state to checkpoint,
its position (in the unit of ``--steps``) and one step; evaluation and logging are optional.
"""

from __future__ import annotations

from typing import Protocol

from coworld.run.session import Session


class Periodic:
    """Fires when a counter crosses a multiple of ``every`` (0 = never); stateless, so resume-safe."""

    def __init__(self, every: int):
        self.every = every

    def __call__(self, before: int, after: int) -> bool:
        return self.every > 0 and after // self.every > before // self.every


class Trainer(Protocol):
    components: dict  # name -> object with state_dict()/load_state_dict() or checkpoint_state(): checkpointed
    counters: dict  # plain values checkpointed with them (restored in place)

    def position(self) -> int:
        """Where the run stands, in the unit of ``--steps``."""

    def step(self) -> dict | None:
        """One iteration (an env step with its due updates, one update, ...); the metrics of the
        updates it made, or None when it made none."""

    def done(self) -> bool:
        """True when the run should end before ``total`` (e.g. a collection that reached its level)."""

    def begin(self) -> None:
        """Called once the logs are open, before the first step (e.g. to start rate meters)."""

    def evaluate(self, position: int) -> None:
        """A periodic evaluation (every ``eval_every`` units)."""

    def log(self, position: int, metrics: dict) -> None:
        """Scalars at a log boundary; ``metrics`` are those of the latest step that made updates."""

    def final(self) -> None:
        """The evaluation at the end of a run that was not stopped."""


def run_loop(session: Session, trainer: Trainer, eval_every: int = 0) -> int:
    """Run ``trainer`` in ``session`` (a :class:`Session`, or anything with its restore / start /
    save / finish / check_updates / stopping / total / cfg, such as a dataset collection's run)."""
    cfg = session.cfg
    trainer.counters.update(session.restore(trainer.components))
    logger = session.start(trainer.position())
    if not session.resuming:  # from now on a killed run always has a checkpoint to resume from
        session.save(trainer.components, trainer.counters)
    trainer.begin()
    do_eval, do_log = Periodic(eval_every), Periodic(cfg.train.log_every)
    do_ckpt = Periodic(cfg.train.checkpoint_every)
    metrics: dict = {}
    while trainer.position() < session.total and not session.stopping and not trainer.done():
        before = trainer.position()
        metrics = trainer.step() or metrics
        after = trainer.position()
        if do_eval(before, after):
            session.check_updates()  # a NaN found now stops the run before it is evaluated
            trainer.evaluate(after)
        if do_log(before, after):
            trainer.log(after, metrics)
        logger.progress(after)
        if do_ckpt(before, after):
            session.save(trainer.components, trainer.counters, metrics)
    if not session.stopping:
        session.check_updates()
        trainer.final()
    return session.finish(trainer.components, trainer.counters)


class BaseTrainer:
    """Defaults for the optional parts of :class:`Trainer`."""

    components: dict
    counters: dict

    def begin(self) -> None:
        pass

    def done(self) -> bool:
        return False

    def evaluate(self, position: int) -> None:
        pass

    def log(self, position: int, metrics: dict) -> None:
        pass

    def final(self) -> None:
        pass
