"""Multi-Task DV2's trainer (docs/algorithms.md#multi-task-dv2): CoWorld's schedule and budget, one
shared world model.

:class:`MultiTaskTrainer` is a :class:`~coworld.run.cotrain.CoWorldTrainer` with one agent in place
of two: the schedule (``build_schedule`` with one source, scaled to ``--steps`` source environment
steps), the phase bookkeeping, the evaluations before target blocks and the checkpointed counters
are CoWorld's, so for the same ``--steps`` it takes the same source steps and makes the same
number of updates in the same places. What differs is the work of an update:

- a source-phase update (one per ``train_every`` source steps, the burst first) and a target-phase
  update (world-model warm-up rounds included) are the same joint update: the shared world model on
  ``B // 2`` source + ``B - B // 2`` target windows, then both actor-critics;
- the source replay is filled by the source actor (random actions during the prefill), as CoWorld's.
"""

from __future__ import annotations

from pathlib import Path

from coworld import envs
from coworld.algos.multitask import MultiTaskAgent, split_batch
from coworld.config import Config
from coworld.data.replay import Replay
from coworld.errors import UserError
from coworld.run.cotrain import CoWorldTrainer, build_schedule, source_config, state_source
from coworld.run.driver import Collector
from coworld.run.session import Session
from coworld.run.train import check_dataset, log_openloop, make_env, run_evaluation


class SourceSimulator:
    """The source simulator (made with ``coworld.source_options``), its replay and collector; acts with
    the shared agent's source policy. Same seeds as CoWorld's first source (``SourceWorker``), so both
    collect the same prefill."""

    def __init__(self, env_id: str, cfg: Config, run_dir: Path, agent: MultiTaskAgent):
        self.env_id = env_id
        self.env = make_env(source_config(cfg), env_id)
        self.action_dim = envs.spec(env_id).action_dim
        self.agent, self.policy = agent, agent.source  # agent.updates: what the schedule counts
        self.replay = Replay(run_dir / "replay-source0", seed=cfg.seed + 101, readonly=False)
        self.collector = Collector(self.env, self.replay, seed=cfg.seed + 1000, action_dim=self.action_dim)
        self.episode_steps = cfg.env.time_limit or envs.spec(env_id).time_limit

    def components(self, i: int) -> dict:
        return {f"source{i}_replay": self.replay, f"source{i}_collector": self.collector}


class ModelActions:
    """A replay whose samples carry the target's actions in the shared model's action space, for
    the open-loop strips and offline diagnostics of the target (they feed ``action`` to the model)."""

    def __init__(self, replay: Replay, behaviour):
        self.replay, self.behaviour = replay, behaviour

    def sample(self, *args, **kwargs) -> dict:
        batch = self.replay.sample(*args, **kwargs)
        return {**batch, "action": self.behaviour.model_action(batch["action"].float())}


class MultiTaskTrainer(CoWorldTrainer):
    """Multi-Task DV2 on CoWorld's schedule (see the module docstring)."""

    def __init__(self, session: Session, source_ids: list[str], target_dataset: str, target_env: str | None):
        if len(source_ids) != 1:
            raise UserError("--algo multitask-dv2 takes exactly one --source")
        if state_source(session.cfg):
            raise UserError("Multi-Task DV2 has one image world model for both domains, so it cannot read a "
                            "state-input source (the paper reports that setting only for CoWorld); drop "
                            "coworld.source_options.obs=state")
        # the part of CoWorldTrainer's setup that differs: one joint agent, no EWC, notes or state source
        self.session, self.finetune, self.notes, self.ewc = session, False, [], None
        cfg = self.cfg = session.cfg
        self.rows = split_batch(cfg.train.batch)
        self.target_replay = Replay(target_dataset, seed=cfg.seed + 17)
        self.target_dim = check_dataset(self.target_replay, cfg, target_env)
        self.agent = MultiTaskAgent(cfg, envs.spec(source_ids[0]).action_dim, self.target_dim, device=session.device)
        self.target = self.policy = self.agent
        self.sources = [SourceSimulator(source_ids[0], cfg, session.dir, self.agent)]
        self.schedule = build_schedule(cfg, session.total, 1, self.min_prefill())
        self.finish_setup(target_env)

    def checkpointed(self) -> dict:
        return {"target_replay": self.target_replay, **self.sources[0].components(0), "multitask_agent": self.agent}

    def joint_update(self) -> dict:
        """Target windows first, then source windows (each replay has its own generator)."""
        t, device = self.cfg.train, self.session.device
        n_source, n_target = self.rows
        target = self.target_replay.sample(n_target, t.length, device=device, mode=t.sampling)
        source = self.sources[0].replay.sample(n_source, t.length, device=device, mode=t.sampling)
        return self.agent.update(source, target)

    def source_update(self, src, align: bool) -> dict:
        return self.joint_update()

    def target_update(self, wm_only: bool) -> dict:
        # world-model warm-up updates of CoWorld's schedule are full joint updates here (as in DV2 Finetune)
        self.counters["target_updates"] += 1
        return self.joint_update()

    def evaluate_target(self) -> None:
        step = self.counters["target_updates"]
        self.counters["evals"] += 1
        if self.eval_env is not None:
            run_evaluation(self.session, self.policy, self.eval_env, step, tag="target_eval",
                           index=self.counters["evals"])
        log_openloop(self.session, self.agent.target, ModelActions(self.target_replay, self.agent.target), step,
                     prefix="target_")

    def log(self, position: int, metrics: dict) -> None:
        """The shared model and the target behaviour under ``target/``, the source's under ``source0/``."""
        if not self.step_metrics:
            return
        out = {"target/phase": self.counters["phase"]}
        for key, value in self.step_metrics.items():
            if key.startswith("source/"):
                out["source0/" + key[len("source/"):]] = value
            else:
                out[key if key.startswith("target/") else "target/" + key] = value
        self.session.logger.scalars(position, out)


def train_multitask(session: Session, source_ids: list[str], target_dataset: str, target_env: str | None) -> int:
    return MultiTaskTrainer(session, source_ids, target_dataset, target_env).run()


def evaluation_agent(run_args: dict, cfg: Config, state: dict):
    """(the target policy, target env id) of a saved Multi-Task DV2 run."""
    saved = state["multitask_agent"]
    agent = MultiTaskAgent(cfg, saved["source_dim"], saved["target_dim"])
    agent.load_checkpoint_state(saved)
    return agent, run_args.get("target_env")
