"""Training loops for the single-agent algorithms: online Dreamer and Offline DV2.

Units of ``steps``: agent (environment) steps for online Dreamer, gradient
updates for the offline algorithms. Every loop body is ordered
[act/update -> evaluate -> log -> checkpoint], and a checkpoint is written at
the end of a loop iteration, so a resumed run continues exactly where the saved
one would have; evaluation runs on its own RNG stream and never changes training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coworld import envs
from coworld.data.replay import Replay
from coworld.run.diagnostics import offline_diagnostics
from coworld.run.openloop import openloop_strip
from coworld.run.plots import plot_run
from coworld.errors import UserError
from coworld.run.driver import Collector, evaluate
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
    """Gradient updates to make after agent step ``step`` of online training (SPEC 4, 8).

    None until ``ready`` (prefill done and a finished episode in the replay); then a burst of
    ``pretrain`` updates on the first training call; then one every ``train_every`` steps.
    Returns (updates, pretrained).
    """
    if not ready:
        return 0, pretrained
    if not pretrained:
        return train_cfg.pretrain, True
    return int(step % train_cfg.train_every == 0), True


class Periodic:
    """Fires when a counter crosses a multiple of ``every`` (0 = never); stateless, so resume-safe."""

    def __init__(self, every: int):
        self.every = every

    def __call__(self, before: int, after: int) -> bool:
        return self.every > 0 and after // self.every > before // self.every


def run_evaluation(session: Session, agent, env, step: int, tag: str = "eval", index: int = 1) -> dict:
    """Evaluate, log, and write a GIF on every ``video_every``-th evaluation (``index`` counts them)."""
    cfg = session.cfg
    video = cfg.train.video_every > 0 and index % cfg.train.video_every == 0
    result = evaluate(agent, env, episodes=cfg.train.eval_episodes, seed=cfg.seed + 10_000 + step, video=video,
                      gamma=cfg.behaviour.gamma, value_steps=cfg.train.value_steps)
    stats = summarize(result["returns"])
    metrics = {"return": stats["mean"], "return_std": stats["std"],
               "value_estimate": float(np.mean(result["value_estimate"])),
               "true_return": float(np.mean(result["true_return"]))}
    metrics["overestimation"] = metrics["value_estimate"] - metrics["true_return"]
    if "successes" in result:
        metrics["success"] = float(np.mean(result["successes"]))
    session.logger.scalars(step, metrics, prefix=f"{tag}/")
    session.logger.record(step, {f"{tag}/returns": result["returns"],
                                 f"{tag}/episodes": cfg.train.eval_episodes})
    if video and "frames" in result:
        session.logger.video(step, f"{tag}_policy", result["frames"])
    session.logger.write(f"[{tag} @ {step}] return {stats['mean']:.1f} +- {stats['std']:.1f} "
                         f"over {cfg.train.eval_episodes} episodes; value {metrics['value_estimate']:.1f} "
                         f"vs true {metrics['true_return']:.1f}")
    return metrics


def log_openloop(session: Session, agent, replay, step: int, prefix: str = "") -> None:
    """Diagnostics that need no simulator, on a batch drawn with its own generator (training RNG
    untouched): real vs open-loop imagined frames (``{prefix}openloop``) and the reward head's
    fit and the critic's values on the data (``{prefix}offline/``, :func:`offline_diagnostics`)."""
    cfg = session.cfg
    batch = replay.sample(cfg.train.batch, cfg.train.length, device=session.device,
                          rng=np.random.default_rng([cfg.seed, step]))
    context = max(1, min(5, cfg.train.length // 3))
    session.logger.image(step, f"{prefix}openloop", openloop_strip(agent, batch, context=context))
    session.logger.scalars(step, offline_diagnostics(agent, batch, cfg.behaviour.gamma), prefix=f"{prefix}offline/")


def finish(session: Session, components: dict, counters: dict) -> int:
    code = session.finish(components, counters)
    plot = plot_run(session.dir)
    print(f"plots: {plot}")
    return code


def log_train(session: Session, step: int, metrics: dict, extra: dict) -> None:
    values = session.logger.scalars(step, {**metrics, **extra}, prefix="train/")
    session.logger.progress(step, **{k: values[f"train/{k}"] for k in ("return",) if f"train/{k}" in values})


def train_dreamer(session: Session, agent, env_id: str) -> int:
    """Online DreamerV2 (SPEC 4, 8): prefill, train every k steps, first-call burst, replay on disk."""
    cfg = session.cfg
    env = make_env(cfg, env_id)
    eval_env = make_env(cfg, env_id)
    replay = Replay(session.dir / "replay", seed=cfg.seed, readonly=False)
    collector = Collector(env, replay, seed=cfg.seed, action_dim=agent.action_dim)
    components = {"agent": agent, "replay": replay, "collector": collector}
    counters = {"pretrained": False}
    counters.update(session.restore(components))
    logger = session.start(collector.steps)
    if not session.resuming:  # from now on a killed run always has a checkpoint to resume from
        session.save(components, counters)
    do_eval, do_log = Periodic(cfg.train.eval_every), Periodic(cfg.train.log_every)
    do_ckpt = Periodic(cfg.train.checkpoint_every)
    metrics: dict = {}
    logger.rate("env", collector.steps)
    logger.rate("updates", agent.updates)
    while collector.steps < session.total and not session.stopping:
        before = collector.steps
        episode = collector.step(agent if before >= cfg.train.prefill else None, noise=cfg.train.expl_noise)
        if episode:
            logger.scalars(collector.steps, episode, prefix="episode/")
        ready = collector.steps >= cfg.train.prefill and replay.num_episodes > 0
        n, counters["pretrained"] = updates_due(cfg.train, collector.steps, ready, counters["pretrained"])
        for _ in range(n):
            metrics = agent.update(replay.sample(cfg.train.batch, cfg.train.length, device=session.device,
                                                 mode=cfg.train.sampling))
            session.watch(metrics)
        if n:
            session.check_updates()  # the flag is read before the updated policy acts
        after = collector.steps
        if do_eval(before, after):
            run_evaluation(session, agent, eval_env, after, index=after // cfg.train.eval_every)
            log_openloop(session, agent, replay, after)
        if do_log(before, after) and metrics:
            extra = {"env_steps_per_s": logger.rate("env", after), "updates_per_s": logger.rate("updates", agent.updates),
                     "updates": agent.updates, "replay_steps": replay.num_steps}
            if collector.last_episode:
                extra["return"] = collector.last_episode["return"]
            log_train(session, after, metrics, {k: v for k, v in extra.items() if v is not None})
        logger.progress(after)
        if do_ckpt(before, after):
            session.save(components, counters, metrics)
    if not session.stopping:
        run_evaluation(session, agent, eval_env, collector.steps)
    return finish(session, components, counters)


def train_offline(session: Session, agent, dataset: str | Path, env_id: str | None) -> int:
    """Offline training on a fixed dataset (Offline DV2, or plain DV2 with penalty 0).

    The environment, when given, is used only for evaluation.
    """
    cfg = session.cfg
    replay = Replay(dataset, seed=cfg.seed)
    eval_env = make_env(cfg, env_id) if env_id else None
    components = {"agent": agent, "replay": replay}
    session.restore(components)
    logger = session.start(agent.updates)
    if not session.resuming:
        session.save(components, {})
    do_eval, do_log = Periodic(cfg.train.eval_every), Periodic(cfg.train.log_every)
    do_ckpt = Periodic(cfg.train.checkpoint_every)
    metrics: dict = {}
    logger.rate("updates", agent.updates)
    while agent.updates < session.total and not session.stopping:
        before = agent.updates
        metrics = agent.update(replay.sample(cfg.train.batch, cfg.train.length, device=session.device, mode=cfg.train.sampling))
        session.watch(metrics)
        after = agent.updates
        if do_eval(before, after):  # without an env: the offline diagnostics alone
            session.check_updates()
            if eval_env is not None:
                run_evaluation(session, agent, eval_env, after, index=after // cfg.train.eval_every)
            log_openloop(session, agent, replay, after)
        if do_log(before, after):
            log_train(session, after, metrics, {"updates_per_s": logger.rate("updates", after) or 0.0})
        logger.progress(after)
        if do_ckpt(before, after):
            session.save(components, {}, metrics)
    if eval_env is not None and not session.stopping:
        session.check_updates()
        run_evaluation(session, agent, eval_env, agent.updates)
    return finish(session, components, {})
