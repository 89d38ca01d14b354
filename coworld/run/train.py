"""The single-agent trainers (online Dreamer, offline training) over the one loop of
:mod:`coworld.run.loop`, and what every trainer shares: envs for a run, input checks, evaluation
and diagnostics logging.

Units of ``steps``: agent (environment) steps for online Dreamer, gradient updates for the offline
algorithms. Evaluation runs on its own RNG stream and never changes training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coworld import envs
from coworld.data.replay import Replay
from coworld.errors import UserError
from coworld.run.checkpoint import forked_rng
from coworld.run.diagnostics import offline_diagnostics
from coworld.run.driver import Collector, evaluate
from coworld.run.loop import BaseTrainer, run_loop
from coworld.run.openloop import openloop_strip
from coworld.run.session import Session, track

MODEL_IMAGE = 64  # the world model's encoder and decoder take 64x64x3 images (coworld/nets/world_model.py)


def make_env(cfg, env_id: str, seed: int | None = None):
    """An environment for a run; closed when the command ends (``session.close_tracked``)."""
    opts = dict(cfg.env.options)
    if cfg.env.action_repeat:
        opts["action_repeat"] = cfg.env.action_repeat
    if cfg.env.time_limit:
        opts["time_limit"] = cfg.env.time_limit
    return track(envs.make(env_id, image_size=cfg.env.image_size, seed=seed, **opts))


def make_eval_envs(cfg, env_id: str, episodes: int | None = None) -> list:
    """The environments an evaluation steps in lockstep: ``train.eval_envs`` of them, no more than
    the episodes of one evaluation (``episodes``, default ``train.eval_episodes``)."""
    n = max(1, min(cfg.train.eval_envs, episodes or cfg.train.eval_episodes))
    return [make_env(cfg, env_id) for _ in range(n)]


def check_image_size(cfg) -> None:
    if cfg.env.image_size != MODEL_IMAGE:
        raise UserError(f"env.image_size is {cfg.env.image_size} but the world model takes "
                        f"{MODEL_IMAGE}x{MODEL_IMAGE} images; leave env.image_size at {MODEL_IMAGE}")


def check_dataset(data, cfg, env_id: str | None = None) -> int:
    """Refuse, before any training step, a dataset the model or the env cannot use.

    ``data`` is a dataset directory or an opened Replay. Checks the image size against the model
    (and ``cfg.env.image_size``) and, with ``env_id``, the action dimension against that env's.
    Returns the dataset's action dimension.
    """
    from coworld.data.episodes import list_episode_files, load_episode

    check_image_size(cfg)
    if isinstance(data, (str, Path)):
        if not Path(data).is_dir():
            raise UserError(f"dataset directory {data} does not exist")
        files = list_episode_files(data)
        if not files:
            raise UserError(f"no episode .npz files in {data}; make one with `coworld data make`")
        name, first = str(data), load_episode(files[0])
    else:
        name, first = str(data.directory), next(iter(data.episodes()), None)
        if first is None:
            raise UserError(f"dataset {name} holds no episodes")
    shape = tuple(first["image"].shape[1:])
    action_dim = int(first["action"].shape[-1])
    want = (MODEL_IMAGE, MODEL_IMAGE, 3)
    if shape != want:
        size = "x".join(str(n) for n in shape)
        raise UserError(
            f"dataset {name} has {size} images but the model takes {'x'.join(map(str, want))} "
            f"(env.image_size={cfg.env.image_size}); convert it to {MODEL_IMAGE}x{MODEL_IMAGE}, e.g. "
            f"re-import it with `coworld data import --format vd4rl-hdf5 ... --resize {MODEL_IMAGE}`"
        )
    if env_id:
        env_dim = envs.spec(env_id).action_dim
        if env_dim != action_dim:
            raise UserError(
                f"dataset {name} has {action_dim}-D actions but env {env_id} has {env_dim}-D actions; "
                "pass the env the dataset was recorded in (see `coworld envs`)"
            )
    return action_dim


def summarize(values) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max())}


def updates_due(train_cfg, step: int, ready: bool, pretrained: bool) -> tuple[int, bool]:
    """Gradient updates to make after agent step ``step`` of online training (docs/algorithms.md#behaviour-learning).

    None until ``ready`` (prefill done and a finished episode in the replay); then a burst of
    ``pretrain`` updates on the first training call; then one every ``train_every`` steps.
    Returns (updates, pretrained).
    """
    if not ready:
        return 0, pretrained
    if not pretrained:
        return train_cfg.pretrain, True
    return int(step % train_cfg.train_every == 0), True


def value_discount(agent, cfg) -> float:
    """The discount of the agent's critic: its ``value_gamma`` where it has one (the model-free baselines'
    ``modelfree.gamma``, LOMPO's ``lompo.gamma``), else DreamerV2's ``behaviour.gamma``. The overestimation
    measure and the offline diagnostics discount the obtained rewards with it, as the critic does."""
    gamma = getattr(agent, "value_gamma", None)
    return cfg.behaviour.gamma if gamma is None else float(gamma)


def run_evaluation(session: Session, agent, env, step: int, tag: str = "eval", index: int = 1) -> dict:
    """Evaluate, log, and write a GIF on every ``video_every``-th evaluation (``index`` counts them)."""
    cfg = session.cfg
    video = cfg.train.video_every > 0 and index % cfg.train.video_every == 0
    result = evaluate(agent, env, episodes=cfg.train.eval_episodes, seed=cfg.seed + 10_000 + step, video=video,
                      gamma=value_discount(agent, cfg) if hasattr(agent, "policy_value") else None,
                      value_steps=cfg.train.value_steps)
    stats = summarize(result["returns"])
    metrics = {"return": stats["mean"], "return_std": stats["std"]}
    value_text = ""
    if "value_estimate" in result:  # agents with a critic: the Fig. 5b measure
        metrics["value_estimate"] = float(np.mean(result["value_estimate"]))
        metrics["true_return"] = float(np.mean(result["true_return"]))
        metrics["overestimation"] = metrics["value_estimate"] - metrics["true_return"]
        value_text = f"; value {metrics['value_estimate']:.1f} vs true {metrics['true_return']:.1f}"
    if "successes" in result:
        metrics["success"] = float(np.mean(result["successes"]))
    session.logger.scalars(step, metrics, prefix=f"{tag}/")
    session.logger.record(step, {f"{tag}/returns": result["returns"],
                                 f"{tag}/episodes": cfg.train.eval_episodes})
    if video and "frames" in result:
        session.logger.video(step, f"{tag}_policy", result["frames"])
    session.logger.write(f"[{tag} @ {step}] return {stats['mean']:.1f} +- {stats['std']:.1f} "
                         f"over {cfg.train.eval_episodes} episodes{value_text}")
    return metrics


def log_openloop(session: Session, agent, replay, step: int, prefix: str = "") -> None:
    """Diagnostics that need no simulator: real vs open-loop imagined frames (``{prefix}openloop``) and
    the reward head's fit and the critic's values on the data (``{prefix}offline/``,
    :func:`offline_diagnostics`). The batch comes from its own generator and the posterior's draws from
    a forked torch generator, so training goes on as if they had not been taken (how often a run
    evaluates does not change what it learns)."""
    cfg = session.cfg
    batch = replay.sample(cfg.train.batch, cfg.train.length, device=session.device,
                          rng=np.random.default_rng([cfg.seed, step]))
    context = max(1, min(5, cfg.train.length // 3))
    with forked_rng(session.device):
        strip = openloop_strip(agent, batch, context=context)
        scalars = offline_diagnostics(agent, batch, value_discount(agent, cfg))
    session.logger.image(step, f"{prefix}openloop", strip)
    session.logger.scalars(step, scalars, prefix=f"{prefix}offline/")


def log_train(session: Session, step: int, metrics: dict, extra: dict) -> None:
    values = session.logger.scalars(step, {**metrics, **extra}, prefix="train/")
    session.logger.progress(step, **{k: values[f"train/{k}"] for k in ("return",) if f"train/{k}" in values})


class OnlineTrainer(BaseTrainer):
    """Online DreamerV2 (docs/algorithms.md#behaviour-learning): random prefill, one update every
    ``train_every`` agent steps after a first-call burst of ``pretrain``, the replay on disk.
    Position: agent (environment) steps."""

    def __init__(self, session: Session, agent, env_id: str):
        cfg = self.cfg = session.cfg
        self.session, self.agent = session, agent
        self.env, self.eval_env = make_env(cfg, env_id), make_eval_envs(cfg, env_id)
        self.replay = Replay(session.dir / "replay", seed=cfg.seed, readonly=False)
        self.collector = Collector(self.env, self.replay, seed=cfg.seed, action_dim=agent.action_dim)
        self.components = {"agent": agent, "replay": self.replay, "collector": self.collector}
        self.counters = {"pretrained": False}

    def position(self) -> int:
        return self.collector.steps

    def begin(self) -> None:
        self.session.logger.rate("env", self.collector.steps)
        self.session.logger.rate("updates", self.agent.updates)

    def step(self) -> dict | None:
        cfg, session, collector = self.cfg, self.session, self.collector
        policy = self.agent if collector.steps >= cfg.train.prefill else None
        episode = collector.step(policy, noise=cfg.train.expl_noise)
        if episode:
            session.logger.scalars(collector.steps, episode, prefix="episode/")
        ready = collector.steps >= cfg.train.prefill and self.replay.num_episodes > 0
        n, self.counters["pretrained"] = updates_due(cfg.train, collector.steps, ready, self.counters["pretrained"])
        metrics = None
        for _ in range(n):
            metrics = self.agent.update(self.replay.sample(cfg.train.batch, cfg.train.length, device=session.device,
                                                           mode=cfg.train.sampling))
            session.watch(metrics)
        if n:
            session.check_updates()  # the flag is read before the updated policy acts
        return metrics

    def evaluate(self, position: int) -> None:
        run_evaluation(self.session, self.agent, self.eval_env, position, index=position // self.cfg.train.eval_every)
        log_openloop(self.session, self.agent, self.replay, position)

    def log(self, position: int, metrics: dict) -> None:
        if not metrics:
            return
        logger = self.session.logger
        extra = {"env_steps_per_s": logger.rate("env", position), "updates_per_s": logger.rate("updates", self.agent.updates),
                 "updates": self.agent.updates, "replay_steps": self.replay.num_steps}
        if self.collector.last_episode:
            extra["return"] = self.collector.last_episode["return"]
        log_train(self.session, position, metrics, {k: v for k, v in extra.items() if v is not None})

    def final(self) -> None:
        run_evaluation(self.session, self.agent, self.eval_env, self.collector.steps)


class OfflineTrainer(BaseTrainer):
    """Training on a fixed dataset (Offline DV2, or any agent with ``update(batch)``). The env, when
    given, is used only for evaluation; agents with a world model also get the offline diagnostics.
    Position: gradient updates."""

    def __init__(self, session: Session, agent, dataset: str | Path, env_id: str | None):
        cfg = self.cfg = session.cfg
        self.session, self.agent = session, agent
        self.replay = Replay(dataset, seed=cfg.seed)
        self.eval_env = make_eval_envs(cfg, env_id) if env_id else None
        self.components = {"agent": agent, "replay": self.replay}
        self.counters: dict = {}

    def position(self) -> int:
        return self.agent.updates

    def begin(self) -> None:
        self.session.logger.rate("updates", self.agent.updates)

    def step(self) -> dict:
        t = self.cfg.train
        metrics = self.agent.update(self.replay.sample(t.batch, t.length, device=self.session.device, mode=t.sampling))
        self.session.watch(metrics)
        return metrics

    def evaluate(self, position: int) -> None:  # without an env: the offline diagnostics alone
        if self.eval_env is not None:
            run_evaluation(self.session, self.agent, self.eval_env, position, index=position // self.cfg.train.eval_every)
        if hasattr(self.agent, "wm"):
            log_openloop(self.session, self.agent, self.replay, position)

    def log(self, position: int, metrics: dict) -> None:
        log_train(self.session, position, metrics, {"updates_per_s": self.session.logger.rate("updates", position) or 0.0})

    def final(self) -> None:
        if self.eval_env is not None:
            run_evaluation(self.session, self.agent, self.eval_env, self.agent.updates)


def train_dreamer(session: Session, agent, env_id: str) -> int:
    return run_loop(session, OnlineTrainer(session, agent, env_id), eval_every=session.cfg.train.eval_every)


def train_offline(session: Session, agent, dataset: str | Path, env_id: str | None) -> int:
    return run_loop(session, OfflineTrainer(session, agent, dataset, env_id), eval_every=session.cfg.train.eval_every)
