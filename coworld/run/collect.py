"""Dataset collection from the replay of an agent learning online (docs/algorithms.md#benchmarks-and-data; docs/collection.md).

The paper's DMC datasets are replays: every transition a DreamerV2 agent collected while it trained
online on the target task, kept until the agent first reached a level. ``collect_dataset`` does
exactly that. It evaluates the agent every ``eval_every`` agent steps (at the end of an episode,
``eval_episodes`` episodes with the actor's mean action) and stops at the first evaluation whose mean
return reaches the level's fraction of a reference score:

- ``medium-replay``: 0.5 of the reference (V-D4RL's "medium");
- ``medium-expert``: 0.9 of the reference (the replay until expert level).

The reference score is ``reference_score`` if given, else the env spec's ``expert_score`` (the scripted
expert of the built-in suite, measured again when ``time_limit`` / ``action_repeat`` change), else
:data:`REFERENCE_TABLE`. Two collectors:

- ``dreamer``: the paper's collector, the pixel DreamerV2 agent of ``coworld.algos.dreamer`` trained as
  in ``coworld.run.train.train_dreamer`` (days on a CPU; hours on a GPU);
- ``sac-state``: a small SAC (twin Q, tanh-Gaussian actor, learned entropy temperature; Haarnoja et al.
  2018) on the low-dimensional ``state`` observation, while the rendered 64x64 images are recorded into
  the episodes (as V-D4RL made its data with a state-based agent).

Every finished episode is written at once (``Replay`` online mode) into a hidden working directory
beside the output, ``.<name>.collecting``, which is renamed to the output when the collection stops
(level reached or ``max_steps``): the output directory never holds a half-made dataset. Re-running the
same command resumes from ``.collect/checkpoint.pt`` in that directory (agent, optimizers, RNGs,
collector position); episodes written after that checkpoint are removed and collected again. A larger
``--max-steps`` continues a stopped collection (it moves back to the working directory meanwhile). The sidecar's
``collection`` entry records the collector, level, reference score (and where it came from), every
evaluation and the status (``running``, ``complete`` or ``max-steps``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from coworld.algos.sac import SAC
from coworld.data.episodes import load_episode, publish, read_sidecar, space_info, update_sidecar
from coworld.data.replay import Replay
from coworld.errors import UserError
from coworld.run.checkpoint import generator_state, load_checkpoint, rng_state, save_checkpoint, set_generator_state, set_rng_state
from coworld.run.driver import Collector, evaluate
from coworld.run.loop import BaseTrainer, run_loop

COLLECT_LEVELS = ("medium-replay", "medium-expert")
COLLECTORS = ("sac-state", "dreamer")
LEVEL_FRACTION = {"medium-replay": 0.5, "medium-expert": 0.9}  # of the reference score
CHECKPOINT_DIR = ".collect"
WORK_SUFFIX = ".collecting"  # the hidden working directory of an unfinished collection

# Reference scores where the env spec has none: DMC rewards lie in [0, 1] per control (physics) step,
# so the best possible return is the number of control steps, 1000 for the standard episode of
# 500 agent steps x action repeat 2 (the 0-1000 scale of V-D4RL and the paper). Meta-World and
# RoboDesk have no agreed reference: pass --reference-score.
REFERENCE_TABLE = {"dmc": "control steps per episode (time_limit x action_repeat) x 1.0"}


def resolve_reference_score(env_id: str, env_options: dict, given: float | None = None) -> tuple[float, str]:
    """(score, how it was set) for ``env_id`` at ``env_options`` (time_limit, action_repeat, ...)."""
    import coworld.envs as envs

    if given is not None:
        if given <= 0:
            raise UserError(f"--reference-score must be positive (got {given})")
        return float(given), "--reference-score"
    spec = envs.spec(env_id)
    changed = "time_limit" in env_options or "action_repeat" in env_options
    if spec.expert_score is not None and not changed:
        return float(spec.expert_score), "env spec expert_score (scripted expert)"
    if spec.expert_score is not None:
        from coworld.data.make import mean_return

        env = envs.make(env_id, **env_options)
        seeds = [int(s) for s in np.random.SeedSequence(12345).generate_state(20)]
        score = mean_return(env, 1.0, seeds)
        env.close()
        return score, "scripted expert's mean return over 20 episodes at these env options"
    if spec.suite == "dmc":
        steps = (env_options.get("time_limit") or spec.time_limit) * (env_options.get("action_repeat") or spec.action_repeat)
        return float(steps), f"table: DMC, {REFERENCE_TABLE['dmc']}"
    raise UserError(
        f"{env_id} has no known reference score; pass --reference-score (the return that counts as "
        "expert, e.g. the best return of an agent trained on the task)"
    )


class TransitionBuffer:
    """(s, a, r, s', terminal) of finished episodes, in arrays grown by doubling; uniform sampling."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
        self.arrays: dict[str, np.ndarray] = {}
        self.size = 0

    def add_episode(self, ep: dict) -> None:
        if "state" not in ep:
            raise UserError("the sac-state collector needs a 'state' observation; this env gives none")
        rows = {"s": ep["state"][:-1], "a": ep["action"][1:], "r": ep["reward"][1:], "s2": ep["state"][1:],
                "terminal": ep["is_terminal"][1:].astype(np.float32)}
        n = len(rows["r"])
        if not self.arrays:
            self.arrays = {k: np.zeros((max(n, 1024), *v.shape[1:]), np.float32) for k, v in rows.items()}
        while self.size + n > len(self.arrays["r"]):
            self.arrays = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in self.arrays.items()}
        for key, value in rows.items():
            self.arrays[key][self.size:self.size + n] = value
        self.size += n

    def sample(self, batch: int) -> list[torch.Tensor]:
        idx = self.rng.integers(0, self.size, batch)
        return [torch.from_numpy(self.arrays[k][idx]) for k in ("s", "a", "r", "s2", "terminal")]


class SACLearner:
    """sac-state: one SAC update per agent step once ``prefill`` random steps are collected."""

    name = "sac-state"

    def __init__(self, env, replay: Replay, seed: int, prefill: int = 1000, batch: int = 256, **sac):
        state_dim = env.observation_space["state"].shape[0]
        self.agent = SAC(state_dim, env.action_space.shape[0], **sac)
        self.buffer = TransitionBuffer(seed)
        self.replay, self.prefill, self.batch = replay, prefill, batch
        self.settings = {"prefill": prefill, "batch": batch, "updates_per_step": 1, **sac}

    def add_episode(self, ep: dict) -> None:
        self.buffer.add_episode(ep)

    def train(self, steps: int) -> None:
        if steps >= self.prefill and self.buffer.size >= self.batch:
            self.agent.update(*self.buffer.sample(self.batch))

    def state_dict(self) -> dict:
        return {"agent": self.agent.checkpoint_state(), "buffer_rng": generator_state(self.buffer.rng)}

    def load_state_dict(self, d: dict, directory: Path) -> None:
        self.agent.load_checkpoint_state(d["agent"])
        for name in self.replay.names:  # the transitions are the episodes on disk
            self.buffer.add_episode(load_episode(directory / name))
        set_generator_state(self.buffer.rng, d["buffer_rng"])


class DreamerLearner:
    """dreamer: pixel DreamerV2 with train_dreamer's schedule (prefill, pretrain burst, train_every)."""

    name = "dreamer"

    def __init__(self, env, replay: Replay, seed: int, preset: str = "dv2-official", device: str = "auto",
                 overrides=()):
        from coworld.algos.dreamer import DreamerAgent
        from coworld.config import load_config

        self.cfg = load_config(preset, [*overrides, f"seed={seed}"])
        self.agent = DreamerAgent(self.cfg, env.action_space.shape[0], device=device)
        self.replay, self.prefill, self.pretrained = replay, self.cfg.train.prefill, False
        self.settings = {"preset": preset, "overrides": list(overrides), "prefill": self.prefill}

    def add_episode(self, ep: dict) -> None:
        pass  # the agent samples from the replay itself

    def train(self, steps: int) -> None:
        from coworld.run.train import updates_due

        t = self.cfg.train
        ready = steps >= self.prefill and self.replay.num_episodes > 0
        n, self.pretrained = updates_due(t, steps, ready, self.pretrained)
        for _ in range(n):
            self.agent.update(self.replay.sample(t.batch, t.length, device=self.agent.device, mode=t.sampling))

    def state_dict(self) -> dict:
        return {"agent": self.agent.checkpoint_state(), "pretrained": self.pretrained}

    def load_state_dict(self, d: dict, directory: Path) -> None:
        self.agent.load_checkpoint_state(d["agent"])
        self.pretrained = bool(d["pretrained"])


class _Sink:
    """What the Collector writes finished episodes to: the on-disk replay and the learner."""

    def __init__(self, replay: Replay, learner):
        self.replay, self.learner = replay, learner

    def add_episode(self, ep: dict) -> str:
        name = self.replay.add_episode(ep)
        self.learner.add_episode(ep)
        return name


# --------------------------------------------------------------------------------------------------
# The collection loop


def collect_dataset(
    env_id: str,
    level: str,
    out,
    *,
    collector: str = "sac-state",
    reference_score: float | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    eval_every: int | None = None,
    eval_episodes: int | None = None,
    checkpoint_every: int = 5000,
    progress: bool = False,
    preset: str = "dv2-official",
    device: str = "auto",
    overrides=(),
    learner_options: dict | None = None,
    **env_options,
) -> dict:
    """Collect the replay of a ``collector`` agent learning ``env_id`` until ``level`` into ``out``.

    The collection runs in a hidden sibling of ``out`` (:func:`working_dir`), renamed to ``out`` when
    it stops (level reached, or ``max_steps``): ``out`` never holds an unfinished collection. Re-running
    with the same settings resumes an interrupted collection from that directory, or continues a
    stopped one to a larger ``max_steps``. ``eval_every``
    defaults to 10 episodes' worth of agent steps; ``eval_episodes`` to 5 (sac-state) or the
    preset's ``train.eval_episodes`` (dreamer); ``learner_options`` go to the learner (SAC:
    ``prefill``, ``batch``, ``hidden``, ``lr``, ``gamma``, ``tau``; dreamer: ``overrides`` of the preset).
    Returns the sidecar written.
    """
    if level not in COLLECT_LEVELS:
        raise UserError(f"unknown collection level '{level}'; choose one of: {', '.join(COLLECT_LEVELS)}")
    if collector not in COLLECTORS:
        raise UserError(f"unknown collector '{collector}'; choose one of: {', '.join(COLLECTORS)}")
    final = Path(out)
    work = working_dir(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _collect_lock(final):
        if work.exists() and final.exists() and any(final.iterdir()):
            raise UserError(f"both {final} and an unfinished collection {work} exist; move one of them away and re-run")
        source = work if work.exists() else final
        settings = {"env": env_id, "level": level, "collector": collector, "seed": seed, "env_options": env_options}
        made = ((read_sidecar(source) if source.is_dir() else None) or {}).get("collection") or {}
        if made.get("method") == "online-replay":
            old = {k: made.get(k) for k in settings}
            if old != settings:
                raise UserError(f"{source} holds a collection made with {old}; use the same settings to resume, "
                                "or a new --out")
            done = made["status"] == "complete" or (
                made["status"] == "max-steps" and (not max_steps or made["steps"] >= max_steps))
            if done:  # nothing to collect (a stopped collection killed before its rename: finish that)
                if source == work:
                    publish(work, final)
                return read_sidecar(final)
            if not (source / CHECKPOINT_DIR / "checkpoint.pt").exists():
                raise UserError(f"{source}: the collection is unfinished but its checkpoint "
                                f"{CHECKPOINT_DIR}/checkpoint.pt is missing; start again in a new --out")
            if source == final:  # a stopped collection extended by a larger --max-steps: back to work
                os.replace(final, work)
        elif source.is_dir() and any(source.iterdir()):
            raise UserError(f"{source} exists and holds files not made by `data collect`; choose a new or empty "
                            "directory")
        side = _collect(env_id, level, work, settings, made, collector=collector, reference_score=reference_score,
                        seed=seed, max_steps=max_steps, eval_every=eval_every, eval_episodes=eval_episodes,
                        checkpoint_every=checkpoint_every, progress=progress, preset=preset, device=device,
                        overrides=overrides, learner_options=learner_options, env_options=env_options)
        publish(work, final)
        return side


def working_dir(out) -> Path:
    """Where a collection into ``out`` lives until it stops: the hidden sibling ``.<name>.collecting``."""
    out = Path(out)
    return out.parent / f".{out.name}{WORK_SUFFIX}"


@contextlib.contextmanager
def _collect_lock(out: Path):
    """One collection per ``--out`` at a time: an OS lock on a hidden sibling file (released when the
    process ends, however it ends)."""
    path = out.parent / f".{out.name}.collect-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another process is collecting into {out} (it holds {path}); wait for it to "
                            "finish or stop it") from None
        yield
    finally:
        os.close(fd)


class CollectionRun:
    """The run side of a collection for :func:`coworld.run.loop.run_loop`: its checkpoint lives in the
    dataset's working directory (``.collect/checkpoint.pt``), progress is a tqdm bar, and at the end
    the checkpoint is kept (a larger ``--max-steps`` continues) or removed (level reached)."""

    def __init__(self, out: Path, checkpoint_every: int, progress_bar):
        self.dir, self.ckpt_path = out, out / CHECKPOINT_DIR / "checkpoint.pt"
        self.cfg = SimpleNamespace(train=SimpleNamespace(log_every=0, checkpoint_every=checkpoint_every))
        self.resuming = self.ckpt_path.exists()
        self.total, self.stopping, self.complete = float("inf"), False, False
        self.bar = progress_bar

    def restore(self, components: dict) -> dict:
        if not self.resuming:
            return {}
        ck = load_checkpoint(self.ckpt_path)
        components["replay"].load_state_dict(ck["replay"])
        components["learner"].load_state_dict(ck["learner"], self.dir)
        components["collector"].load_state_dict(ck["collector"])
        set_rng_state(ck["rng"])
        return {"evaluations": [list(e) for e in ck["evaluations"]], "last_eval": int(ck["last_eval"])}

    def start(self, position: int):
        return self

    def progress(self, position: int) -> None:
        if self.bar is not None:
            self.bar.update(position - self.bar.n)

    def check_updates(self) -> None:
        pass

    def save(self, components: dict, counters: dict, metrics=None, finished: bool = False) -> None:
        if self.complete:
            return  # the level is reached: nothing left to resume
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.ckpt_path, {
            "replay": components["replay"].state_dict(), "learner": components["learner"].state_dict(),
            "collector": components["collector"].state_dict(), "rng": rng_state(),
            "evaluations": counters["evaluations"], "last_eval": counters["last_eval"],
        })

    def finish(self, components: dict, counters: dict) -> int:
        if self.bar is not None:
            self.bar.close()
        if self.complete:
            shutil.rmtree(self.dir / CHECKPOINT_DIR, ignore_errors=True)
        else:
            self.save(components, counters)  # a larger --max-steps continues from here
        return 0


class CollectionTrainer(BaseTrainer):
    """One agent step of the collector and the learner's due updates; an evaluation at the end of an
    episode once ``eval_every`` steps have passed; done at the level (complete) or at ``max_steps``."""

    def __init__(self, run: CollectionRun, env, eval_env, replay, learner, seed, *, target, eval_every,
                 eval_episodes, max_steps, on_eval):
        self.run, self.eval_env, self.learner, self.seed = run, eval_env, learner, seed
        self.target, self.eval_every, self.eval_episodes, self.max_steps = target, eval_every, eval_episodes, max_steps
        self.on_eval = on_eval
        self.driver = Collector(env, _Sink(replay, learner), seed=seed, action_dim=env.action_space.shape[0])
        self.components = {"replay": replay, "learner": learner, "collector": self.driver}
        self.counters = {"evaluations": [], "last_eval": 0}
        self.status = "running"

    def position(self) -> int:
        return self.driver.steps

    def done(self) -> bool:
        return self.status != "running"

    def step(self) -> None:
        driver, c = self.driver, self.counters
        episode = driver.step(self.learner.agent if driver.steps >= self.learner.prefill else None)
        self.learner.train(driver.steps)
        if episode and driver.steps - c["last_eval"] >= self.eval_every:
            result = evaluate(self.learner.agent, self.eval_env, episodes=self.eval_episodes,
                              seed=self.seed + 10_000 + driver.steps)
            mean = float(np.mean(result["returns"]))
            c["evaluations"].append([driver.steps, mean])
            c["last_eval"] = driver.steps
            if mean >= self.target:
                self.status, self.run.complete = "complete", True
            self.on_eval(mean)
        if self.status == "running" and episode and self.max_steps and driver.steps >= self.max_steps:
            self.status = "max-steps"
        return None


def _collect(env_id, level, out: Path, settings: dict, made: dict, *, collector, reference_score, seed, max_steps,
             eval_every, eval_episodes, checkpoint_every, progress, preset, device, overrides, learner_options,
             env_options) -> dict:
    """The collection, in the working directory ``out``, through the one training loop."""
    import coworld.envs as envs

    spec = envs.spec(env_id)
    if made.get("method") == "online-replay":
        ref, ref_source = made["reference_score"], made["reference_source"]
    else:
        ref, ref_source = resolve_reference_score(env_id, env_options, reference_score)
    target = LEVEL_FRACTION[level] * ref
    env = envs.make(env_id, **env_options)
    eval_env = _eval_env(env_id, collector, env_options)
    steps_per_episode = env_options.get("time_limit") or spec.time_limit
    eval_every = eval_every or 10 * steps_per_episode
    torch.manual_seed(seed)
    np.random.seed(seed)

    out.mkdir(parents=True, exist_ok=True)
    replay = Replay(out, readonly=False, seed=seed)
    options = dict(learner_options or {})
    if collector == "sac-state":
        learner = SACLearner(env, replay, seed, **options)
        eval_episodes = eval_episodes or 5
    else:
        learner = DreamerLearner(env, replay, seed, preset=preset, device=device, overrides=overrides)
        eval_episodes = eval_episodes or learner.cfg.train.eval_episodes
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_steps, unit="step", desc=f"{env_id} {level} ({collector})")
    run = CollectionRun(out, checkpoint_every, bar)

    def collection(status: str) -> dict:
        record = trainer.counters
        best = max((r for _, r in record["evaluations"]), default=None)
        reached = next((s for s, r in record["evaluations"] if r >= target), None)
        return {
            "method": "online-replay", **settings, "status": status, "steps": trainer.driver.steps,
            "reference_score": ref, "reference_source": ref_source, "target_fraction": LEVEL_FRACTION[level],
            "target_return": target, "reached_at_step": reached, "best_eval_return": best,
            "evaluations": record["evaluations"], "eval_every": eval_every, "eval_episodes": eval_episodes,
            "max_steps": max_steps, "learner": learner.settings,
        }

    def on_eval(mean: float) -> None:
        if bar is not None:
            bar.set_postfix(eval_return=f"{mean:.1f}", target=f"{target:.1f}")
        update_sidecar(out, collection=collection("running"))

    trainer = CollectionTrainer(run, env, eval_env, replay, learner, seed, target=target, eval_every=eval_every,
                                eval_episodes=eval_episodes, max_steps=max_steps, on_eval=on_eval)
    update_sidecar(out, collection=collection("running"), env=env_id, env_options=env_options,
                   observation_space=space_info(env.observation_space), action_space=space_info(env.action_space),
                   action_repeat=env_options.get("action_repeat") or spec.action_repeat)
    try:
        run_loop(run, trainer)
    finally:
        env.close()
        eval_env.close()
    return update_sidecar(out, collection=collection(trainer.status))


def _eval_env(env_id: str, collector: str, env_options: dict):
    """Evaluation env; without rendering (obs="state") for sac-state where the suite supports it."""
    import coworld.envs as envs

    if collector == "sac-state":
        try:
            return envs.make(env_id, obs="state", **env_options)
        except UserError:
            pass  # the suite renders cheaply or has no state-only mode
    return envs.make(env_id, **env_options)
